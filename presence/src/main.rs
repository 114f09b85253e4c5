use chat_presence::Presence;
use chat_shared::service;

fn main() -> anyhow::Result<()> {
    service::main("chat-presence", |settings| {
        service::run_until_signal(settings, |settings, stop| async move {
            Presence::build(settings).await?.run_until(stop).await
        })
    })
}
