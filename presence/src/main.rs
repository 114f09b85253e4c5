use chat_presence::Presence;
use chat_shared::{service, shutdown};

fn main() -> anyhow::Result<()> {
    service::main("chat-presence", |settings| async move {
        Presence::build(settings)
            .await?
            .run_until(shutdown::signal())
            .await
    })
}
