use chat_gateway::Gateway;
use chat_shared::{service, shutdown};

fn main() -> anyhow::Result<()> {
    service::main("chat-gateway", |settings| {
        service::restarting(
            shutdown::signal(),
            || {},
            move |stop| {
                let settings = settings.clone();
                async move { Gateway::build(settings).await?.run_until(stop).await }
            },
        )
    })
}
