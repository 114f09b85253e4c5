//! One group commit: a batch of sends and read markers becomes one SQL
//! statement (store_batch.sql), one round trip to Postgres and one
//! transaction, that
//! 1. finds sends already stored (the database's unique (sender,
//!    client_msg_id) is the idempotency key),
//! 2. loads the members of every conversation involved (who may send, and
//!    whom to deliver to),
//! 3. reserves a run of `seq` per conversation with one UPDATE of
//!    `conversations.last_seq` (the row lock orders writers; seq is gapless
//!    because nothing is reserved that is not inserted in the same commit),
//! 4. inserts every new message,
//! 5. moves read markers forward (never back, never past `last_seq`, this
//!    batch's messages included).
//!
//! [`plan`] prepares the statement's arguments and turns its answer into
//! outcomes, without a database. Nothing is acknowledged or fanned out
//! before [`Writer::write`] returns Ok.

mod plan;

use chat_shared::bus::{PersistCommand, ReadCommand, SendCommand, SendOutcome};
use chat_shared::ids::{MessageId, UserId};
use chat_shared::protocol::{ErrorCode, Message};
use chat_shared::schema::RowError;
use chat_shared::time;
use plan::{Plan, Stored};
use sea_orm::sqlx::{self, PgPool, Row};

/// One command to apply, and whether the broker delivered it before.
pub struct Request<'a> {
    /// Borrowed from the delivery: the hot path copies no bodies.
    pub command: &'a PersistCommand,
    pub redelivered: bool,
}

/// What to tell the gateways about one request, once committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (now, or before and this is a redelivery after a crash):
    /// every member's sessions get it, the origin session gets the ack.
    Deliver {
        message: Message,
        members: Vec<UserId>,
        origin_session: String,
        /// The send's trace, for the deliveries.
        origin_trace: Option<chat_shared::telemetry::propagation::TraceHeaders>,
    },
    /// Concerns only the sending session: a resend answered with the
    /// original, or a refusal.
    Reply {
        user_id: UserId,
        session_id: String,
        reply_to: String,
        outcome: SendOutcome,
    },
    /// A read marker moved forward: the other members get a `read` frame.
    ReadMoved {
        read: ReadCommand,
        recipients: Vec<UserId>,
    },
}

impl Outcome {
    fn reply(command: &SendCommand, outcome: SendOutcome) -> Self {
        Outcome::Reply {
            user_id: command.sender_id,
            session_id: command.session_id.clone(),
            reply_to: command.reply_to.clone(),
            outcome,
        }
    }

    fn refused(command: &SendCommand, code: ErrorCode, message: &str) -> Self {
        let outcome = SendOutcome::Refused {
            code,
            message: message.to_owned(),
            client_msg_id: command.client_msg_id.clone(),
        };
        Self::reply(command, outcome)
    }
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
        }
    }

    /// Applies a batch in one statement (one transaction). One outcome per
    /// send, in order, then one per read marker that moved.
    pub async fn write(&self, requests: &[Request<'_>]) -> Result<Vec<Outcome>, WriteError> {
        let now = time::now_millis();
        let plan = Plan::new(requests);
        let sends = &plan.unique;
        let senders: Vec<i64> = sends.iter().map(|s| s.sender_id.get()).collect();
        let keys: Vec<&str> = sends.iter().map(|s| s.client_msg_id.as_str()).collect();
        let conversations: Vec<i64> = sends.iter().map(|s| s.conversation_id.get()).collect();
        let bodies: Vec<&str> = sends.iter().map(|s| s.body.as_str()).collect();
        let read_conversations: Vec<i64> = plan.reads.keys().map(|(c, _)| *c).collect();
        let read_users: Vec<i64> = plan.reads.keys().map(|(_, u)| *u).collect();
        let read_seqs: Vec<i64> = plan.reads.values().copied().collect();
        self.statements.inc();
        let rows = sqlx::query(STORE_BATCH)
            .bind(&senders)
            .bind(&keys)
            .bind(&conversations)
            .bind(&bodies)
            .bind(now)
            .bind(&read_conversations)
            .bind(&read_users)
            .bind(&read_seqs)
            .fetch_all(&self.pool)
            .await?;

        let mut stored: Vec<Option<Stored>> = vec![None; sends.len()];
        let mut moved = Vec::new();
        for row in &rows {
            let outcome: &str = row.try_get(1)?;
            let members: Vec<i64> = row.try_get::<Option<Vec<i64>>, _>(8)?.unwrap_or_default();
            let members = members.into_iter().map(user_id).collect::<Result<_, _>>()?;
            if outcome == "read" {
                let read = ReadCommand {
                    conversation_id: conversation_id(row.try_get(3)?)?,
                    user_id: user_id(row.try_get(5)?)?,
                    seq: row.try_get(4)?,
                };
                moved.push((read, members));
                continue;
            }
            let i: i64 = row.try_get(0)?;
            let at = usize::try_from(i - 1)
                .ok()
                .filter(|at| *at < sends.len())
                .ok_or_else(|| WriteError::Corrupt(format!("answer for send {i}")))?;
            let send = sends[at];
            stored[at] = Some(match outcome {
                "new" => Stored::New {
                    id: MessageId(row.try_get(2)?),
                    seq: row.try_get(4)?,
                    members,
                },
                "existing" => Stored::Existing {
                    message: Message {
                        id: MessageId(row.try_get(2)?),
                        conversation_id: conversation_id(row.try_get(3)?)?,
                        seq: row.try_get(4)?,
                        sender_id: send.sender_id,
                        client_msg_id: send.client_msg_id.clone(),
                        body: row.try_get(6)?,
                        created_at: row.try_get(7)?,
                    },
                    members,
                },
                "not_found" => Stored::NotFound,
                "forbidden" => Stored::Forbidden,
                other => return Err(WriteError::Corrupt(format!("outcome {other:?}"))),
            });
        }
        let stored: Vec<Stored> = stored
            .into_iter()
            .collect::<Option<_>>()
            .ok_or_else(|| WriteError::Corrupt("a send got no answer".to_owned()))?;
        plan.outcomes(&stored, moved, now)
            .map_err(WriteError::Corrupt)
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
        for request in batch {
            match self.write(std::slice::from_ref(request)).await {
                Ok(mut one) => outcomes.append(&mut one),
                Err(e) if e.is_outage() || (e.is_transient() && !give_up_on_conflicts) => {
                    return Err(e);
                }
                Err(e) => match request.command {
                    PersistCommand::Send(c) => {
                        self.refused.inc();
                        tracing::error!(conversation.id = %c.conversation_id, user.id = %c.sender_id, error = %e, "send cannot be stored, refused");
                        outcomes.push(Outcome::refused(
                            c,
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

/// The statement of a group commit.
const STORE_BATCH: &str = include_str!("store_batch.sql");

fn user_id(raw: i64) -> Result<UserId, WriteError> {
    UserId::new(raw).map_err(|e| WriteError::Corrupt(e.to_string()))
}

fn conversation_id(raw: i64) -> Result<chat_shared::ids::ConversationId, WriteError> {
    chat_shared::ids::ConversationId::new(raw).map_err(|e| WriteError::Corrupt(e.to_string()))
}
