use anyhow::Context;
use chat_presence::Presence;
use chat_shared::config::Settings;
use chat_shared::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load().context("loading configuration")?;
    telemetry::init(&settings.log, &settings.telemetry, "chat-presence");
    let result = Presence::build(settings)
        .await?
        .run_until(shutdown::signal())
        .await;
    telemetry::flush();
    result
}
