use chat_gateway::Gateway;
use chat_shared::{service, shutdown};

fn main() -> anyhow::Result<()> {
    service::main("chat-gateway", |settings| async move {
        Gateway::build(settings)
            .await?
            .run_until(shutdown::signal())
            .await
    })
}
