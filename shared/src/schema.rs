//! The Postgres schema, as sea-orm migrations, and the database connection.
//!
//! Migrations run only through an explicit command (`chat-persister migrate`,
//! also what `deploy/up.sh` and the Kubernetes migrate Job run), never at
//! service start: replicas must not race to migrate.

use crate::config::DatabaseSettings;
use crate::ids::{ClientMsgId, ConversationId, MessageId, SenderId};
use crate::protocol::{Message, MessageKind};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr};
use sea_orm_migration::{MigrationName, MigrationTrait, MigratorTrait, SchemaManager, async_trait};

/// Opens a pool, lazily: a service starts while Postgres is down and its
/// `/ready` says so until it is back. Statements are plain SQL through
/// sea-orm's sqlx pool (`db.get_postgres_connection_pool()`), which is what
/// group commit needs.
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(postgres_scheme(&settings.url));
    options
        .max_connections(settings.max_connections)
        .connect_lazy(true)
        .connect_timeout(settings.connect_timeout)
        .acquire_timeout(settings.connect_timeout)
        .sqlx_logging(false);
    if let Some(ca) = settings.ca_file.clone() {
        options.map_sqlx_postgres_opts(move |o| o.ssl_root_cert(ca.clone()));
    }
    Database::connect(options).await
}

/// `postgresql://` (what CloudNativePG and libpq write) as `postgres://`,
/// the only scheme sea-orm knows.
pub(crate) fn postgres_scheme(url: &str) -> String {
    match url.strip_prefix("postgresql://") {
        Some(rest) => format!("postgres://{rest}"),
        None => url.to_owned(),
    }
}

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(InitialSchema),
            Box::new(BusSettingsTable),
            Box::new(UsersTable),
            Box::new(ConsentTables),
            Box::new(MessageCards),
            Box::new(Notifications),
        ]
    }
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}

struct InitialSchema;

impl MigrationName for InitialSchema {
    fn name(&self) -> &str {
        "m0001_initial_schema"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for InitialSchema {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(INITIAL_SCHEMA)
            .await
            .map(|_| ())
    }
}

const INITIAL_SCHEMA: &str = r#"
CREATE TABLE conversations (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    title            TEXT,
    -- "<low user id>:<high user id>" for a direct conversation: one per pair.
    direct_key       TEXT UNIQUE,
    -- The seq of the newest message; the persister bumps it in the same
    -- transaction that inserts the messages, so seq is gapless.
    last_seq         BIGINT NOT NULL DEFAULT 0,
    last_activity_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((kind = 'direct') = (direct_key IS NOT NULL)),
    CHECK (kind = 'direct' OR (title IS NOT NULL AND title <> ''))
);

CREATE TABLE members (
    conversation_id BIGINT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         BIGINT NOT NULL CHECK (user_id > 0),
    -- Read marker (the protocol's `read`): never moves backwards.
    last_read_seq   BIGINT NOT NULL DEFAULT 0,
    joined_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, user_id)
);
-- The conversation list: a user's memberships.
CREATE INDEX members_by_user ON members (user_id, conversation_id);

CREATE TABLE messages (
    conversation_id BIGINT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL CHECK (seq > 0),
    id              BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    sender_id       BIGINT NOT NULL,
    client_msg_id   TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    -- History pages (before_seq / after_seq) walk this key.
    PRIMARY KEY (conversation_id, seq),
    -- Idempotent sending: a resend finds the original.
    UNIQUE (sender_id, client_msg_id)
);
"#;

struct BusSettingsTable;

impl MigrationName for BusSettingsTable {
    fn name(&self) -> &str {
        "m0002_bus_settings"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for BusSettingsTable {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "-- The bus layout every service of one amqp.prefix must share
                 -- (check_bus_settings).
                 CREATE TABLE bus_settings (
                     prefix       TEXT PRIMARY KEY,
                     partitions   INTEGER NOT NULL,
                     route_shards INTEGER NOT NULL
                 )",
            )
            .await
            .map(|_| ())
    }
}

struct UsersTable;

impl MigrationName for UsersTable {
    fn name(&self) -> &str {
        "m0003_users"
    }
}

/// People's profiles (version 2). A new table: nothing else is locked or
/// rewritten. A user with no row here is a user nobody ever named.
#[async_trait::async_trait]
impl MigrationTrait for UsersTable {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE users (
                     id         BIGINT PRIMARY KEY CHECK (id > 0),
                     name       TEXT CHECK (char_length(name) BETWEEN 1 AND 100),
                     avatar_url TEXT CHECK (char_length(avatar_url) <= 500),
                     updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 )",
            )
            .await
            .map(|_| ())
    }
}

/// Services that disagree on the bus layout would misroute silently.
struct ConsentTables;

impl MigrationName for ConsentTables {
    fn name(&self) -> &str {
        "m0004_consent"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for ConsentTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(CONSENT_SCHEMA)
            .await
            .map(|_| ())
    }
}

struct Notifications;

impl MigrationName for Notifications {
    fn name(&self) -> &str {
        "m0006_notifications"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Notifications {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(NOTIFICATIONS_SCHEMA)
            .await
            .map(|_| ())
    }
}

/// Version 2's unread webhook: one row per event, from scheduled to sent,
/// suppressed or dead-lettered (presence/src/notify/).
const NOTIFICATIONS_SCHEMA: &str = r#"
CREATE TABLE notifications (
    -- The event's id is "evt_<id>": the same on every attempt.
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         BIGINT NOT NULL,
    conversation_id BIGINT NOT NULL,
    -- The message that started the clock, and when it was stored.
    seq             BIGINT NOT NULL,
    stored_at       TIMESTAMPTZ NOT NULL,
    due_at          TIMESTAMPTZ NOT NULL,
    -- pending: waiting for due_at (one per recipient and conversation);
    -- delivering: its event is built and being sent or retried.
    state           TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'delivering', 'sent', 'suppressed', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    -- A notifier working on it until then (another takes over after).
    claimed_until   TIMESTAMPTZ,
    -- The event as built at the first attempt: every retry sends it again.
    body            TEXT,
    outcome         TEXT,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX notifications_one_pending
    ON notifications (user_id, conversation_id) WHERE state = 'pending';
CREATE INDEX notifications_due
    ON notifications (next_attempt_at) WHERE state IN ('pending', 'delivering');
CREATE INDEX notifications_done
    ON notifications (updated_at) WHERE state IN ('sent', 'suppressed', 'dead');
"#;

struct MessageCards;

impl MigrationName for MessageCards {
    fn name(&self) -> &str {
        "m0005_message_cards"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for MessageCards {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "-- Version 2: a message's card (chat_shared::card::Card), checked
                 -- before it is stored. sender_id 0 is a system message.
                 ALTER TABLE messages ADD COLUMN card JSONB",
            )
            .await
            .map(|_| ())
    }
}

/// Version 2 consent: privacy settings, blocks, and contacts.
const CONSENT_SCHEMA: &str = r#"
-- Privacy settings (chat_shared::privacy); a user without a row has the
-- defaults, which keep version 1's behaviour.
ALTER TABLE users
    ADD COLUMN privacy_presence TEXT NOT NULL DEFAULT 'everyone'
        CHECK (privacy_presence IN ('everyone', 'contacts', 'nobody')),
    ADD COLUMN privacy_read_receipts BOOLEAN NOT NULL DEFAULT true,
    ADD COLUMN privacy_groups TEXT NOT NULL DEFAULT 'everyone'
        CHECK (privacy_groups IN ('everyone', 'contacts'));

-- blocker_id blocks blocked_id. Checked both ways: by the primary key one
-- way, by blocks_by_blocked the other.
CREATE TABLE blocks (
    blocker_id BIGINT NOT NULL CHECK (blocker_id > 0),
    blocked_id BIGINT NOT NULL CHECK (blocked_id > 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (blocker_id, blocked_id),
    CHECK (blocker_id <> blocked_id)
);
CREATE INDEX blocks_by_blocked ON blocks (blocked_id, blocker_id);

-- peer_id is a contact of user_id: user_id has sent a message in their
-- direct conversation. Kept by the persister as it stores messages, so the
-- "contacts" settings cost one index probe, never a scan of messages.
CREATE TABLE contacts (
    user_id BIGINT NOT NULL,
    peer_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, peer_id)
);
INSERT INTO contacts (user_id, peer_id)
SELECT DISTINCT m.sender_id, other.user_id
  FROM messages m
  JOIN conversations c ON c.id = m.conversation_id AND c.kind = 'direct'
  JOIN members other ON other.conversation_id = m.conversation_id
                    AND other.user_id <> m.sender_id
ON CONFLICT DO NOTHING;
"#;

#[derive(Debug, thiserror::Error)]
#[error(
    "amqp.{key} is {here} here but {agreed} for every other service of amqp.prefix {prefix:?} \
     (table bus_settings). All gateways, persisters and presence must agree: to change it, \
     stop them all, let the persist queues drain, then run \
     UPDATE bus_settings SET partitions = .., route_shards = .. WHERE prefix = '{prefix}'"
)]
pub struct BusMismatch {
    key: &'static str,
    here: u16,
    agreed: i32,
    prefix: String,
}

/// Records this service's `partitions` and `route_shards` for its prefix if
/// none are recorded, and refuses to go on if others are. When Postgres
/// cannot be asked (down, or not migrated yet) it warns and lets the service
/// start: the check is a guard, not a dependency.
pub async fn check_bus_settings(
    db: &DatabaseConnection,
    amqp: &crate::config::AmqpSettings,
) -> Result<(), BusMismatch> {
    use sea_orm::sqlx;
    let pool = db.get_postgres_connection_pool();
    let agreed: Result<(i32, i32), sqlx::Error> = sqlx::query_as(
        "WITH mine AS (
             INSERT INTO bus_settings (prefix, partitions, route_shards)
             VALUES ($1, $2, $3)
             ON CONFLICT (prefix) DO NOTHING
             RETURNING partitions, route_shards)
         SELECT partitions, route_shards FROM mine
         UNION ALL
         SELECT partitions, route_shards FROM bus_settings WHERE prefix = $1
         LIMIT 1",
    )
    .bind(&amqp.prefix)
    .bind(i32::from(amqp.partitions.get()))
    .bind(i32::from(amqp.route_shards.get()))
    .fetch_one(pool)
    .await;
    let (partitions, route_shards) = match agreed {
        Ok(agreed) => agreed,
        Err(e) => {
            tracing::warn!(error = %e, "could not check the bus settings against the other services");
            return Ok(());
        }
    };
    let mismatch = |key, here, agreed| BusMismatch {
        key,
        here,
        agreed,
        prefix: amqp.prefix.clone(),
    };
    if partitions != i32::from(amqp.partitions.get()) {
        return Err(mismatch("partitions", amqp.partitions.get(), partitions));
    }
    if route_shards != i32::from(amqp.route_shards.get()) {
        return Err(mismatch(
            "route_shards",
            amqp.route_shards.get(),
            route_shards,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_postgres_schemes_are_accepted() {
        assert_eq!(
            super::postgres_scheme("postgresql://chat:pw@db:5432/chat"),
            "postgres://chat:pw@db:5432/chat"
        );
        assert_eq!(
            super::postgres_scheme("postgres://chat@db/chat"),
            "postgres://chat@db/chat"
        );
    }
}

/// A row that does not hold what the schema promises.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("database: {0}")]
    Db(#[from] sea_orm::sqlx::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl From<crate::ids::InvalidValue> for RowError {
    fn from(e: crate::ids::InvalidValue) -> Self {
        RowError::Corrupt(e.to_string())
    }
}

/// A message from eight columns starting at `at`, in this order: id,
/// conversation_id, seq, sender_id, client_msg_id, body, created_at,
/// `card::text`.
pub fn message_from_row(
    row: &sea_orm::sqlx::postgres::PgRow,
    at: usize,
) -> Result<Message, RowError> {
    use sea_orm::sqlx::Row;
    let sender_id = SenderId::new(row.try_get(at + 3)?)?;
    let card = match row.try_get::<Option<String>, _>(at + 7)? {
        Some(json) => {
            Some(serde_json::from_str(&json).map_err(|e| RowError::Corrupt(format!("card: {e}")))?)
        }
        None => None,
    };
    Ok(Message {
        id: MessageId(row.try_get(at)?),
        conversation_id: ConversationId::new(row.try_get(at + 1)?)?,
        seq: row.try_get(at + 2)?,
        sender_id,
        client_msg_id: ClientMsgId::try_from(row.try_get::<String, _>(at + 4)?)?,
        body: row.try_get(at + 5)?,
        created_at: row.try_get(at + 6)?,
        kind: MessageKind::of(sender_id),
        card,
    })
}
