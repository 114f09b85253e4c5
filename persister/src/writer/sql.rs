//! The statements of a group commit, each one round trip in the batch's
//! transaction, each taking and returning plain values (see [`super::plan`]).

use super::WriteError;
use super::contacts::Pair;
use super::plan::{Existing, Members, NewRows, Send};
use chat_shared::bus::ReadCommand;
use chat_shared::ids::{ConversationId, UserId};
use chat_shared::schema::message_from_row;
use chat_shared::time::Timestamp;
use sea_orm::sqlx::{self, Row};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;

pub(super) type Tx<'c> = sqlx::Transaction<'c, sqlx::Postgres>;

/// 1. The sends already stored, by their idempotency key (sender,
///    client_msg_id).
pub(super) async fn existing(tx: &mut Tx<'_>, sends: &[Send<'_>]) -> Result<Existing, WriteError> {
    let senders: Vec<i64> = sends.iter().map(|s| s.command.sender_id.get()).collect();
    let keys: Vec<&str> = sends
        .iter()
        .map(|s| s.command.client_msg_id.as_str())
        .collect();
    let rows = sqlx::query(
        "SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.client_msg_id, m.body, m.created_at, m.card::text
           FROM messages m
           JOIN unnest($1::bigint[], $2::text[]) AS k (sender_id, client_msg_id)
             ON m.sender_id = k.sender_id AND m.client_msg_id = k.client_msg_id",
    )
    .bind(&senders)
    .bind(&keys)
    .fetch_all(&mut **tx)
    .await?;
    let mut existing = Existing::new();
    for row in &rows {
        let message = message_from_row(row, 0)?;
        existing.insert((message.sender_id, message.client_msg_id.clone()), message);
    }
    Ok(existing)
}

/// 2. The members of each of `conversations`, and which of them are
///    direct.
pub(super) async fn members(
    tx: &mut Tx<'_>,
    conversations: &[i64],
) -> Result<(Members, HashSet<i64>), WriteError> {
    let rows = sqlx::query(
        "SELECT m.conversation_id, array_agg(m.user_id ORDER BY m.user_id),
                bool_or(c.kind = 'direct')
           FROM members m JOIN conversations c ON c.id = m.conversation_id
          WHERE m.conversation_id = ANY($1) GROUP BY m.conversation_id",
    )
    .bind(conversations)
    .fetch_all(&mut **tx)
    .await?;
    let mut members = Members::new();
    let mut direct = HashSet::new();
    for row in &rows {
        let conversation: i64 = row.try_get(0)?;
        let ids: Vec<i64> = row.try_get(1)?;
        let ids = ids.into_iter().map(user_id).collect::<Result<_, _>>()?;
        members.insert(conversation, ids);
        if row.try_get::<bool, _>(2)? {
            direct.insert(conversation);
        }
    }
    Ok((members, direct))
}

/// 3. Reserves `counts[c]` seqs in each conversation `c` with one UPDATE
///    of `conversations.last_seq` (rows locked in id order: no deadlocks;
///    gapless, as nothing is reserved that is not inserted in the same
///    commit). Returns each conversation's seq before its run.
pub(super) async fn reserve_seqs(
    tx: &mut Tx<'_>,
    counts: &BTreeMap<i64, i64>,
    now: Timestamp,
) -> Result<HashMap<i64, i64>, WriteError> {
    let mut base = HashMap::with_capacity(counts.len());
    if counts.is_empty() {
        return Ok(base);
    }
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
    .fetch_all(&mut **tx)
    .await?;
    for row in &rows {
        let id: i64 = row.try_get(0)?;
        let last: i64 = row.try_get(1)?;
        base.insert(id, last - counts.get(&id).copied().unwrap_or(0));
    }
    Ok(base)
}

/// 4. Inserts the new messages with one `INSERT ... SELECT FROM unnest`.
///    Returns each row's id by (conversation, seq).
pub(super) async fn insert(
    tx: &mut Tx<'_>,
    rows: &NewRows<'_>,
    now: Timestamp,
) -> Result<HashMap<(i64, i64), i64>, WriteError> {
    let mut ids = HashMap::with_capacity(rows.seqs.len());
    if rows.seqs.is_empty() {
        return Ok(ids);
    }
    let inserted = sqlx::query(
        "INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, body, created_at, card)
         SELECT c, s, u, k, b, $6, j::jsonb
           FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $7::text[])
                AS t (c, s, u, k, b, j)
         RETURNING conversation_id, seq, id",
    )
    .bind(&rows.conversations)
    .bind(&rows.seqs)
    .bind(&rows.senders)
    .bind(&rows.keys)
    .bind(&rows.bodies)
    .bind(now)
    .bind(&rows.cards)
    .fetch_all(&mut **tx)
    .await?;
    for row in &inserted {
        ids.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
    }
    Ok(ids)
}

/// 4b. Records contacts (version 2): each `(user, peer)` pair, where `user`
///     sent a message in their direct conversation (only the pairs of this
///     batch not known to be recorded: usually none). Returns the pairs
///     that are new.
pub(super) async fn record_contacts(
    tx: &mut Tx<'_>,
    pairs: &[Pair],
) -> Result<Vec<(UserId, UserId)>, WriteError> {
    let users: Vec<i64> = pairs.iter().map(|(u, _)| *u).collect();
    let peers: Vec<i64> = pairs.iter().map(|(_, p)| *p).collect();
    let new: Vec<(i64, i64)> = sqlx::query_as(
        "INSERT INTO contacts (user_id, peer_id)
         SELECT * FROM unnest($1::bigint[], $2::bigint[])
         ON CONFLICT DO NOTHING
         RETURNING user_id, peer_id",
    )
    .bind(&users)
    .bind(&peers)
    .fetch_all(&mut **tx)
    .await?;
    new.into_iter()
        .map(|(u, p)| Ok((user_id(u)?, user_id(p)?)))
        .collect()
}

/// Step 5's statement. Who hears of a marker that moved: the other members
/// (the plan leaves the reader out), unless the reader turned read
/// receipts off, and apart from those with a block, either way, with the
/// reader (version 2 consent).
static MOVE_READ_MARKERS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE members m
            SET last_read_seq = LEAST(d.seq, c.last_seq)
           FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS d (conversation_id, user_id, seq),
                conversations c
          WHERE m.conversation_id = d.conversation_id AND m.user_id = d.user_id
            AND c.id = d.conversation_id
            AND LEAST(d.seq, c.last_seq) > m.last_read_seq
         RETURNING m.conversation_id, m.user_id, m.last_read_seq,
                   COALESCE((SELECT array_agg(o.user_id ORDER BY o.user_id) FROM members o
                              WHERE o.conversation_id = m.conversation_id
                                AND COALESCE((SELECT r.privacy_read_receipts FROM users r
                                               WHERE r.id = m.user_id), true)
                                AND {}), '{{}}')",
        chat_shared::directory::not_blocked("o.user_id", "m.user_id")
    )
});

/// 5. Moves read markers forward (never back, never past `last_seq`, only
///    for members), after the messages of the batch. Returns the markers
///    that moved, with the members who may hear of each.
pub(super) async fn move_read_markers(
    tx: &mut Tx<'_>,
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
    let rows = sqlx::query(MOVE_READ_MARKERS.as_str())
        .bind(&conversations)
        .bind(&users)
        .bind(&seqs)
        .fetch_all(&mut **tx)
        .await?;
    let mut moved = Vec::with_capacity(rows.len());
    for row in &rows {
        let members: Vec<i64> = row.try_get(3)?;
        let read = ReadCommand {
            conversation_id: ConversationId::new(row.try_get(0)?)
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
