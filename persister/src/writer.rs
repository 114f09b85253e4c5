//! One group commit: a batch of sends becomes one transaction that
//! 1. finds sends already stored (the database's unique (sender,
//!    client_msg_id) is the idempotency key),
//! 2. loads the members of every conversation involved (who may send, and
//!    whom to deliver to),
//! 3. reserves a run of `seq` per conversation with one UPDATE of
//!    `conversations.last_seq` (the row lock orders writers; seq is gapless
//!    because nothing is reserved that is not inserted in the same commit),
//! 4. inserts every new message with one `INSERT ... SELECT FROM unnest(...)`,
//! 5. moves read markers forward (never back, never past `last_seq`) with one
//!    `UPDATE members ... FROM unnest(...)`, after the messages of the batch.
//!
//! Nothing is acknowledged or fanned out before this returns Ok.

use chat_shared::bus::{PersistCommand, ReadCommand, SendCommand, SendOutcome};
use chat_shared::ids::{ClientMsgId, MessageId, UserId};
use chat_shared::protocol::{ErrorCode, Message};
use chat_shared::schema::{RowError, message_from_row};
use chat_shared::time;
use sea_orm::sqlx::{self, PgPool, Row};
use std::collections::{BTreeMap, HashMap};

/// One command to apply, and whether the broker delivered it before.
pub struct Request<'a> {
    /// Borrowed from the delivery: the hot path copies no bodies.
    pub command: &'a PersistCommand,
    pub redelivered: bool,
}

/// A send of the batch, with whether it is a redelivery.
struct Send<'a> {
    command: &'a SendCommand,
    redelivered: bool,
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

/// How each request will be answered.
enum Plan {
    Existing(Message),
    SameAsEarlier(usize),
    New { ordinal: i64 },
    Refused(ErrorCode, &'static str),
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

    /// Applies a batch in one transaction. One outcome per send, in order,
    /// then one per read marker that moved.
    pub async fn write(&self, requests: &[Request<'_>]) -> Result<Vec<Outcome>, WriteError> {
        let now = time::now_millis();
        let mut batch = Vec::with_capacity(requests.len());
        let mut reads: HashMap<(i64, i64), i64> = HashMap::new();
        for r in requests {
            match r.command {
                PersistCommand::Send(command) => batch.push(Send {
                    command,
                    redelivered: r.redelivered,
                }),
                PersistCommand::Read(read) => {
                    let seq = reads
                        .entry((read.conversation_id.get(), read.user_id.get()))
                        .or_insert(0);
                    *seq = (*seq).max(read.seq);
                }
            }
        }
        self.statements.inc_by(4); // BEGIN, existing, members, COMMIT
        let mut tx = self.pool.begin().await?;

        // 1. Already stored?
        let senders: Vec<i64> = batch.iter().map(|r| r.command.sender_id.get()).collect();
        let keys: Vec<&str> = batch
            .iter()
            .map(|r| r.command.client_msg_id.as_str())
            .collect();
        let rows = sqlx::query(
            "SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.client_msg_id, m.body, m.created_at
               FROM messages m
               JOIN unnest($1::bigint[], $2::text[]) AS k (sender_id, client_msg_id)
                 ON m.sender_id = k.sender_id AND m.client_msg_id = k.client_msg_id",
        )
        .bind(&senders)
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?;
        let mut existing = HashMap::new();
        for row in &rows {
            let message = message_from_row(row, 0)?;
            existing.insert((message.sender_id, message.client_msg_id.clone()), message);
        }

        // 2. Members of every conversation involved.
        let mut conversations: Vec<i64> = batch
            .iter()
            .map(|r| r.command.conversation_id.get())
            .collect();
        conversations.extend(existing.values().map(|m| m.conversation_id.get()));
        conversations.sort_unstable();
        conversations.dedup();
        let rows = sqlx::query(
            "SELECT conversation_id, array_agg(user_id ORDER BY user_id)
               FROM members WHERE conversation_id = ANY($1) GROUP BY conversation_id",
        )
        .bind(&conversations)
        .fetch_all(&mut *tx)
        .await?;
        let mut members: HashMap<i64, Vec<UserId>> = HashMap::new();
        for row in &rows {
            let ids: Vec<i64> = row.try_get(1)?;
            let ids = ids.into_iter().map(user_id).collect::<Result<_, _>>()?;
            members.insert(row.try_get(0)?, ids);
        }

        // 3. Plan every request; count new messages per conversation.
        let mut first_of: HashMap<(UserId, &ClientMsgId), usize> = HashMap::new();
        let mut counts: BTreeMap<i64, i64> = BTreeMap::new();
        let mut plans = Vec::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            let c = r.command;
            let key = (c.sender_id, &c.client_msg_id);
            // Resends are rare: look (and copy the key) only when there are any.
            let resent = (!existing.is_empty())
                .then(|| existing.get(&(c.sender_id, c.client_msg_id.clone())))
                .flatten();
            let plan = if let Some(m) = resent {
                Plan::Existing(m.clone())
            } else if let Some(&earlier) = first_of.get(&key) {
                Plan::SameAsEarlier(earlier)
            } else {
                match members.get(&c.conversation_id.get()) {
                    None => Plan::Refused(ErrorCode::NotFound, "no such conversation"),
                    Some(m) if !m.contains(&c.sender_id) => {
                        Plan::Refused(ErrorCode::Forbidden, "not a member of this conversation")
                    }
                    Some(_) => {
                        first_of.insert(key, i);
                        let n = counts.entry(c.conversation_id.get()).or_insert(0);
                        *n += 1;
                        Plan::New { ordinal: *n }
                    }
                }
            };
            plans.push(plan);
        }

        // 4. Reserve seq runs (rows locked in id order: no deadlocks).
        let mut base: HashMap<i64, i64> = HashMap::new();
        if !counts.is_empty() {
            let ids: Vec<i64> = counts.keys().copied().collect();
            let ns: Vec<i64> = counts.values().copied().collect();
            let rows = sqlx::query(
                "UPDATE conversations c
                    SET last_seq = c.last_seq + d.n, last_activity_at = $3
                   FROM unnest($1::bigint[], $2::bigint[]) AS d (id, n)
                  WHERE c.id = d.id
                 RETURNING c.id, c.last_seq",
            )
            .bind(&ids)
            .bind(&ns)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            for row in &rows {
                let id: i64 = row.try_get(0)?;
                let last: i64 = row.try_get(1)?;
                base.insert(id, last - counts.get(&id).copied().unwrap_or(0));
            }
        }

        // 5. Insert the new messages in one statement.
        let mut new_rows = NewRows::default();
        for (r, plan) in batch.iter().zip(&plans) {
            if let Plan::New { ordinal } = plan {
                let c = r.command;
                let conversation = c.conversation_id.get();
                let first = base.get(&conversation).ok_or_else(|| {
                    WriteError::Corrupt(format!("conversation {conversation} vanished"))
                })?;
                new_rows.push(c, first + ordinal);
            }
        }
        let mut ids: HashMap<(i64, i64), i64> = HashMap::new();
        if !new_rows.seqs.is_empty() {
            let rows = sqlx::query(
                "INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, body, created_at)
                 SELECT c, s, u, k, b, $6
                   FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[]) AS t (c, s, u, k, b)
                 RETURNING conversation_id, seq, id",
            )
            .bind(&new_rows.conversations)
            .bind(&new_rows.seqs)
            .bind(&new_rows.senders)
            .bind(&new_rows.keys)
            .bind(&new_rows.bodies)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            for row in &rows {
                ids.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
            }
        }
        self.statements
            .inc_by(u64::from(!counts.is_empty()) * 2 + u64::from(!reads.is_empty()));
        let moved = move_read_markers(&mut tx, &reads).await?;
        tx.commit().await?;

        // 6. Outcomes, now that it is durable.
        let mut stored: Vec<Option<Message>> = vec![None; batch.len()];
        let mut outcomes = Vec::with_capacity(batch.len());
        for (i, (r, plan)) in batch.iter().zip(plans).enumerate() {
            let c = r.command;
            let outcome = match plan {
                Plan::New { ordinal } => {
                    let conversation = c.conversation_id.get();
                    let seq = base.get(&conversation).copied().unwrap_or_default() + ordinal;
                    let id = ids.get(&(conversation, seq)).copied().ok_or_else(|| {
                        WriteError::Corrupt(format!("no id returned for {conversation}/{seq}"))
                    })?;
                    let message = Message {
                        id: MessageId(id),
                        conversation_id: c.conversation_id,
                        seq,
                        sender_id: c.sender_id,
                        client_msg_id: c.client_msg_id.clone(),
                        body: c.body.clone(),
                        created_at: now,
                    };
                    stored[i] = Some(message.clone());
                    Outcome::Deliver {
                        members: members.get(&conversation).cloned().unwrap_or_default(),
                        message,
                        origin_session: c.session_id.clone(),
                        origin_trace: c.trace.clone(),
                    }
                }
                Plan::Existing(message) if r.redelivered => Outcome::Deliver {
                    members: members
                        .get(&message.conversation_id.get())
                        .cloned()
                        .unwrap_or_default(),
                    message,
                    origin_session: c.session_id.clone(),
                    origin_trace: c.trace.clone(),
                },
                Plan::Existing(message) => Outcome::reply(c, SendOutcome::Stored { message }),
                Plan::SameAsEarlier(earlier) => match stored[earlier].clone() {
                    Some(message) => Outcome::reply(c, SendOutcome::Stored { message }),
                    None => Outcome::refused(c, ErrorCode::Internal, "message could not be stored"),
                },
                Plan::Refused(code, why) => Outcome::refused(c, code, why),
            };
            outcomes.push(outcome);
        }
        for (read, conversation_members) in moved {
            let recipients = conversation_members
                .into_iter()
                .filter(|m| *m != read.user_id)
                .collect();
            outcomes.push(Outcome::ReadMoved { read, recipients });
        }
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

#[derive(Default)]
struct NewRows<'a> {
    conversations: Vec<i64>,
    seqs: Vec<i64>,
    senders: Vec<i64>,
    keys: Vec<&'a str>,
    bodies: Vec<&'a str>,
}

impl<'a> NewRows<'a> {
    fn push(&mut self, c: &'a SendCommand, seq: i64) {
        self.conversations.push(c.conversation_id.get());
        self.seqs.push(seq);
        self.senders.push(c.sender_id.get());
        self.keys.push(c.client_msg_id.as_str());
        self.bodies.push(&c.body);
    }
}

/// Moves read markers forward, clamped to the conversation's last seq, and
/// only for members. Returns the markers that moved, with the members of
/// their conversation.
async fn move_read_markers(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    reads: &HashMap<(i64, i64), i64>,
) -> Result<Vec<(ReadCommand, Vec<UserId>)>, WriteError> {
    if reads.is_empty() {
        return Ok(Vec::new());
    }
    let mut keys: Vec<(&(i64, i64), &i64)> = reads.iter().collect();
    keys.sort_unstable(); // lock member rows in one order
    let conversations: Vec<i64> = keys.iter().map(|((c, _), _)| *c).collect();
    let users: Vec<i64> = keys.iter().map(|((_, u), _)| *u).collect();
    let seqs: Vec<i64> = keys.iter().map(|(_, s)| **s).collect();
    let rows = sqlx::query(
        "UPDATE members m
            SET last_read_seq = LEAST(d.seq, c.last_seq)
           FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS d (conversation_id, user_id, seq),
                conversations c
          WHERE m.conversation_id = d.conversation_id AND m.user_id = d.user_id
            AND c.id = d.conversation_id
            AND LEAST(d.seq, c.last_seq) > m.last_read_seq
         RETURNING m.conversation_id, m.user_id, m.last_read_seq,
                   (SELECT array_agg(user_id ORDER BY user_id) FROM members WHERE conversation_id = m.conversation_id)",
    )
    .bind(&conversations)
    .bind(&users)
    .bind(&seqs)
    .fetch_all(&mut **tx)
    .await?;
    let mut moved = Vec::with_capacity(rows.len());
    for row in &rows {
        let members: Vec<i64> = row.try_get(3)?;
        let read = ReadCommand {
            conversation_id: chat_shared::ids::ConversationId::new(row.try_get(0)?)
                .map_err(|e| WriteError::Corrupt(e.to_string()))?,
            user_id: user_id(row.try_get(1)?)?,
            seq: row.try_get(2)?,
        };
        moved.push((
            read,
            members.into_iter().map(user_id).collect::<Result<_, _>>()?,
        ));
    }
    Ok(moved)
}

fn user_id(raw: i64) -> Result<UserId, WriteError> {
    UserId::new(raw).map_err(|e| WriteError::Corrupt(e.to_string()))
}
