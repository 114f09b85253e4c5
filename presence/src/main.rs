use anyhow::Context;
use chat_presence::Presence;
use chat_shared::config::Settings;
use chat_shared::{runtime, shutdown, telemetry};

fn main() -> anyhow::Result<()> {
    let settings = Settings::load().context("loading configuration")?;
    runtime::build(&settings.runtime)
        .context("starting the Tokio runtime")?
        .block_on(run(settings))
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    telemetry::init(&settings.log, &settings.telemetry, "chat-presence");
    let result = Presence::build(settings)
        .await?
        .run_until(shutdown::signal())
        .await;
    telemetry::flush();
    result
}
