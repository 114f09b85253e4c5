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
mod failure;
mod outcome;
mod plan;
mod sql;

pub use failure::Failure;
pub use outcome::Outcome;

use chat_shared::bus::PersistCommand;
use chat_shared::protocol::ErrorCode;
use chat_shared::schema::RowError;
use chat_shared::time;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sea_orm::sqlx::{self, Connection as _, PgConnection, PgPool};

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
    /// What the failure means for the batch and its senders.
    pub fn failure(&self) -> Failure {
        match self {
            WriteError::Db(sqlx::Error::Database(db)) => Failure::of_sqlstate(db.code().as_deref()),
            WriteError::Db(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Protocol(_),
            ) => Failure::Outage,
            WriteError::Db(_) | WriteError::Corrupt(_) => Failure::Broken,
        }
    }

    /// The SQLSTATE Postgres answered, if it answered.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            WriteError::Db(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
            _ => None,
        }
    }
}

/// Database errors met by group commits, by failure and SQLSTATE
/// (`none`: no answer from Postgres).
pub type DatabaseErrors = Family<Vec<(&'static str, String)>, Counter>;

#[derive(Clone)]
pub struct Writer {
    pool: PgPool,
    /// Counts every statement sent (BEGIN and COMMIT included).
    statements: Counter,
    /// Commands refused or dropped because they could not be stored alone.
    refused: Counter,
    errors: DatabaseErrors,
    contacts: contacts::KnownContacts,
}

impl Writer {
    pub fn new(
        pool: PgPool,
        statements: Counter,
        refused: Counter,
        errors: DatabaseErrors,
    ) -> Self {
        Self {
            pool,
            statements,
            refused,
            errors,
            contacts: Default::default(),
        }
    }

    /// Applies a batch in one transaction (see [`Self::write_on`]), on a
    /// connection of the pool; a connection that turned out read-only is
    /// closed, so the next try opens another.
    pub async fn write(&self, requests: &[Request<'_>]) -> Result<Vec<Outcome>, WriteError> {
        let mut connection = self.pool.acquire().await?;
        let result = self.write_on(&mut connection, requests).await;
        if let Err(e) = &result {
            let sqlstate = e.sqlstate();
            self.errors
                .get_or_create(&vec![
                    ("failure", e.failure().as_str().to_owned()),
                    (
                        "sqlstate",
                        sqlstate.clone().unwrap_or_else(|| "none".into()),
                    ),
                ])
                .inc();
            if Failure::needs_new_connection(sqlstate.as_deref()) {
                tracing::warn!(error = %e, "a read-only database connection: closing it");
                if let Err(e) = connection.close().await {
                    tracing::debug!(error = %e, "closing a read-only connection");
                }
            }
        }
        result
    }

    /// Applies a batch in one transaction. One outcome per send, in order,
    /// then one per read marker that moved, then one per contact made.
    async fn write_on(
        &self,
        connection: &mut PgConnection,
        requests: &[Request<'_>],
    ) -> Result<Vec<Outcome>, WriteError> {
        let now = time::now_millis();
        let batch = plan::Batch::of(requests);
        self.statements.inc_by(4); // BEGIN, existing, members, COMMIT
        let mut tx = connection.begin().await?;
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
    /// retrying it whole cannot fix: the bad one is refused, the others are
    /// stored. An outage is an `Err` (the batch waits, whole); so is a
    /// bounded failure (a conflict, a timeout) unless `gave_up`, when the
    /// command that still fails alone is refused: `unavailable` after a
    /// timeout, so that its client sends it again, `internal` after a
    /// conflict ([`Failure::refusal`]).
    pub async fn write_each(
        &self,
        batch: &[Request<'_>],
        gave_up: bool,
    ) -> Result<Vec<Outcome>, WriteError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for (position, request) in batch.iter().enumerate() {
            match self.write(std::slice::from_ref(request)).await {
                Ok(one) => outcomes.extend(one.into_iter().map(|o| o.for_request(position))),
                Err(e)
                    if e.failure() == Failure::Outage || (e.failure().is_bounded() && !gave_up) =>
                {
                    return Err(e);
                }
                Err(e) => match request.command {
                    PersistCommand::Send(c) => {
                        self.refused.inc();
                        let code = e.failure().refusal();
                        tracing::error!(conversation.id = %c.conversation_id, user.id = %c.sender_id, error = %e, code = ?code, "send cannot be stored, refused");
                        let why = match code {
                            ErrorCode::Unavailable => "message not stored in time; send it again",
                            _ => "message could not be stored",
                        };
                        outcomes.push(Outcome::refused(position, &c.client_msg_id, code, why));
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
