use anyhow::Context;
use chat_gateway::Gateway;
use chat_shared::config::Settings;
use chat_shared::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load().context("loading configuration")?;
    telemetry::init(&settings.log, &settings.telemetry, "chat-gateway");
    let gateway = Gateway::build(settings).await?;
    let result = gateway.run_until(shutdown::signal()).await;
    telemetry::flush();
    result
}
