//! `chat-persister` runs the persister; `chat-persister migrate` applies the
//! schema migrations and exits (run it once per deploy, before the services).

use anyhow::Context;
use chat_persister::Persister;
use chat_shared::config::Settings;
use chat_shared::{schema, service};

fn main() -> anyhow::Result<()> {
    let command = std::env::args().nth(1);
    service::main("chat-persister", |settings| async move {
        match command.as_deref() {
            None => {
                service::run_until_signal(settings, |settings, stop| async move {
                    Persister::build(settings).await?.run_until(stop).await
                })
                .await
            }
            Some("migrate") => migrate(settings).await,
            Some(other) => {
                anyhow::bail!("unknown command {other:?} (expected no argument, or `migrate`)")
            }
        }
    })
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let db = schema::connect(&settings.database)
        .await
        .context("connecting to Postgres")?;
    schema::migrate(&db).await.context("migrating")?;
    tracing::info!("schema is up to date");
    Ok(())
}
