use chat_presence::Presence;
use chat_shared::{service, shutdown};

fn main() -> anyhow::Result<()> {
    service::main("chat-presence", |settings| {
        service::restarting(
            shutdown::signal(),
            || {},
            move |stop| {
                let settings = settings.clone();
                async move { Presence::build(settings).await?.run_until(stop).await }
            },
        )
    })
}
