//! One group commit: a batch of sends and read markers becomes one
//! transaction. Three parts, one file each:
//! - [`plan`]: the decisions, apart from Postgres (new, repeated, refused;
//!   the `seq` each conversation needs; what to tell whom afterwards);
//! - [`sql`]: the statements, in order: 1. the sends already stored (the
//!   unique (sender, client_msg_id) is the idempotency key), 2. the members
//!   of every conversation involved, 3. one UPDATE reserving a run of `seq`
//!   per conversation, 4. one `INSERT ... SELECT FROM unnest(...)` of the new
//!   messages, 4b. the contacts those messages make (version 2; only for
//!   pairs not known to be recorded), 5. one UPDATE moving read markers
//!   forward (and choosing who hears of them: read receipts, blocks);
//! - [`outcome`]: what each request's answer is, naming its request by
//!   position.
//!
//! Nothing is acknowledged or fanned out before [`Writer::write`] returns Ok.

mod contacts;
mod outcome;
mod plan;
mod sql;

pub use outcome::Outcome;

use chat_shared::bus::PersistCommand;
use chat_shared::protocol::ErrorCode;
use chat_shared::schema::RowError;
use chat_shared::time;
use sea_orm::sqlx::{self, PgPool};

/// One command to apply, and whether the broker delivered it before.
pub struct Request<'a> {
    /// Borrowed from the delivery: the hot path copies no bodies.
    pub command: &'a PersistCommand,
    pub redelivered: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl From<RowError> for WriteError {
    fn from(e: RowError) -> Self {
        match e {
            RowError::Db(e) => WriteError::Db(e),
            RowError::Corrupt(why) => WriteError::Corrupt(why),
        }
    }
}

impl WriteError {
    /// Worth retrying the same batch: the connection, or a conflict.
    pub fn is_transient(&self) -> bool {
        self.is_outage() || self.is_conflict()
    }

    /// A lost race on the idempotency key with another persister, a
    /// serialization failure or a deadlock: the same batch may pass next time.
    pub fn is_conflict(&self) -> bool {
        matches!(self, WriteError::Db(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("23505" | "40001" | "40P01")))
    }

    /// Postgres cannot be reached (or is shutting down): retry for as long
    /// as it takes; nothing is wrong with the batch.
    pub fn is_outage(&self) -> bool {
        match self {
            WriteError::Db(sqlx::Error::Database(db)) => {
                let code = db.code().unwrap_or_default();
                code.starts_with("08") || code.starts_with("57")
            }
            WriteError::Db(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Protocol(_),
            ) => true,
            _ => false,
        }
    }
}

#[derive(Clone)]
pub struct Writer {
    pool: PgPool,
    /// Counts every statement sent (BEGIN and COMMIT included).
    statements: prometheus_client::metrics::counter::Counter,
    /// Commands refused or dropped because they could not be stored alone.
    refused: prometheus_client::metrics::counter::Counter,
    contacts: contacts::KnownContacts,
}

impl Writer {
    pub fn new(
        pool: PgPool,
        statements: prometheus_client::metrics::counter::Counter,
        refused: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self {
            pool,
            statements,
            refused,
            contacts: Default::default(),
        }
    }

    /// Applies a batch in one transaction. One outcome per send, in order,
    /// then one per read marker that moved, then one per contact made.
    pub async fn write(&self, requests: &[Request<'_>]) -> Result<Vec<Outcome>, WriteError> {
        let now = time::now_millis();
        let batch = plan::Batch::of(requests);
        self.statements.inc_by(4); // BEGIN, existing, members, COMMIT
        let mut tx = self.pool.begin().await?;
        let existing = sql::existing(&mut tx, &batch.sends).await?;
        let (members, direct) = sql::members(&mut tx, &batch.conversations(&existing)).await?;
        let planned = plan::plan(&batch.sends, &existing, &members);
        let base = sql::reserve_seqs(&mut tx, &planned.counts, now).await?;
        let rows = planned.new_rows(&batch.sends, &base)?;
        let ids = sql::insert(&mut tx, &rows, now).await?;
        let contacts = self.contacts.unrecorded(&rows, &members, &direct);
        let mut new_contacts = Vec::new();
        if !contacts.is_empty() {
            self.statements.inc();
            new_contacts = sql::record_contacts(&mut tx, &contacts).await?;
        }
        self.statements
            .inc_by(u64::from(!planned.counts.is_empty()) * 2 + u64::from(!batch.reads.is_empty()));
        let moved = sql::move_read_markers(&mut tx, &batch.reads).await?;
        tx.commit().await?;
        self.contacts.recorded(&contacts);
        let mut outcomes = planned.outcomes(&batch.sends, &base, &ids, &members, moved, now)?;
        outcomes.extend(
            new_contacts
                .into_iter()
                .map(|(user, peer)| Outcome::ContactMade { user, peer }),
        );
        Ok(outcomes)
    }

    /// Stores requests one by one, after a batch failed for a reason that
    /// retrying cannot fix: the bad one is refused, the others are stored.
    /// With `give_up_on_conflicts`, only an outage is an `Err`: a command
    /// that keeps conflicting is refused like one that cannot be stored.
    pub async fn write_each(
        &self,
        batch: &[Request<'_>],
        give_up_on_conflicts: bool,
    ) -> Result<Vec<Outcome>, WriteError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for (position, request) in batch.iter().enumerate() {
            match self.write(std::slice::from_ref(request)).await {
                Ok(one) => outcomes.extend(one.into_iter().map(|o| o.for_request(position))),
                Err(e) if e.is_outage() || (e.is_transient() && !give_up_on_conflicts) => {
                    return Err(e);
                }
                Err(e) => match request.command {
                    PersistCommand::Send(c) => {
                        self.refused.inc();
                        tracing::error!(conversation.id = %c.conversation_id, user.id = %c.sender_id, error = %e, "send cannot be stored, refused");
                        outcomes.push(Outcome::refused(
                            position,
                            &c.client_msg_id,
                            ErrorCode::Internal,
                            "message could not be stored",
                        ));
                    }
                    PersistCommand::Read(r) => {
                        self.refused.inc();
                        tracing::error!(conversation.id = %r.conversation_id, user.id = %r.user_id, error = %e, "read marker cannot be stored, dropped");
                    }
                },
            }
        }
        Ok(outcomes)
    }
}
