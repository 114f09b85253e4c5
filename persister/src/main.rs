//! `chat-persister` runs the persister; `chat-persister migrate` applies the
//! schema migrations and exits (run it once per deploy, before the services).

use anyhow::Context;
use chat_persister::Persister;
use chat_shared::config::Settings;
use chat_shared::{runtime, schema, shutdown, telemetry};

fn main() -> anyhow::Result<()> {
    let settings = Settings::load().context("loading configuration")?;
    let runtime_settings = settings.runtime.clone();
    runtime::run(&runtime_settings, run(settings)).context("starting the Tokio runtime")?
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    telemetry::init(&settings.log, &settings.telemetry, "chat-persister");
    let command = std::env::args().nth(1);
    match command.as_deref() {
        Some("migrate") => {
            let db = schema::connect(&settings.database)
                .await
                .context("connecting to Postgres")?;
            schema::migrate(&db).await.context("migrating")?;
            tracing::info!("schema is up to date");
            Ok(())
        }
        None => {
            let result = Persister::build(settings)
                .await?
                .run_until(shutdown::signal())
                .await;
            telemetry::flush();
            result
        }
        Some(other) => {
            anyhow::bail!("unknown command {other:?} (expected no argument, or `migrate`)")
        }
    }
}
