use chat_gateway::Gateway;
use chat_shared::service;

fn main() -> anyhow::Result<()> {
    service::main("chat-gateway", |settings| {
        service::run_until_signal(settings, |settings, stop| async move {
            Gateway::build(settings).await?.run_until(stop).await
        })
    })
}
