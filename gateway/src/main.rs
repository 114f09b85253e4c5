use anyhow::Context;
use chat_gateway::Gateway;
use chat_shared::config::Settings;
use chat_shared::{runtime, shutdown, telemetry};

fn main() -> anyhow::Result<()> {
    let settings = Settings::load().context("loading configuration")?;
    runtime::build(&settings.runtime)
        .context("starting the Tokio runtime")?
        .block_on(run(settings))
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    telemetry::init(&settings.log, &settings.telemetry, "chat-gateway");
    let gateway = Gateway::build(settings).await?;
    let result = gateway.run_until(shutdown::signal()).await;
    telemetry::flush();
    result
}
