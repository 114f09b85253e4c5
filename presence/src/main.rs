use anyhow::Context;
use chat_presence::Presence;
use chat_shared::config::Settings;
use chat_shared::{runtime, shutdown, telemetry};

fn main() -> anyhow::Result<()> {
    let settings = Settings::load().context("loading configuration")?;
    let runtime_settings = settings.runtime.clone();
    runtime::run(&runtime_settings, run(settings)).context("starting the Tokio runtime")?
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
