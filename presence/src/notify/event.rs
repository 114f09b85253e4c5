//! An event, as built when it is first due: or why none is sent.

use super::Notifier;
use chat_shared::ids::{ConversationId, UserId};
use chat_shared::protocol::{Message, User};
use chat_shared::schema::message_from_row;
use chat_shared::time::{self, Timestamp};
use sea_orm::sqlx::{self, Row};
use serde::Serialize;

/// A pending notification, as claimed.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: i64,
    pub user: UserId,
    pub conversation: ConversationId,
    /// The message that started the clock.
    pub seq: i64,
    pub stored_at: Timestamp,
    pub due_at: Timestamp,
    pub attempts: i32,
    /// The event, once built.
    pub body: Option<String>,
}

/// What a due notification comes to.
pub enum Built {
    Event(String),
    /// Not sent, for this reason (`super::SUPPRESSIONS`).
    Suppressed(&'static str),
}

#[derive(Serialize)]
struct UnreadEvent<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(with = "time::rfc3339")]
    created_at: Timestamp,
    user_id: UserId,
    conversation_id: ConversationId,
    unread_count: i64,
    message: &'a Message,
    /// Null for a system message.
    sender: Option<User>,
}

/// The recipient's membership and read marker, the newest message by
/// others with its card, how many are unread, whether the recipient blocks
/// its sender, and the sender's profile.
const FACTS: &str = "
SELECT m.last_read_seq,
       (SELECT count(*) FROM messages x
         WHERE x.conversation_id = m.conversation_id AND x.seq > m.last_read_seq AND x.sender_id <> m.user_id),
       lm.id, lm.conversation_id, lm.seq, lm.sender_id, lm.client_msg_id, lm.body, lm.created_at, lm.card::text,
       EXISTS (SELECT 1 FROM blocks b WHERE b.blocker_id = m.user_id AND b.blocked_id = lm.sender_id),
       u.name, u.avatar_url
  FROM members m
  LEFT JOIN LATERAL (SELECT * FROM messages x
                      WHERE x.conversation_id = m.conversation_id AND x.sender_id <> m.user_id
                      ORDER BY x.seq DESC LIMIT 1) lm ON true
  LEFT JOIN users u ON u.id = lm.sender_id
 WHERE m.conversation_id = $2 AND m.user_id = $1";

impl Notifier {
    /// The event of `due`, or why there is none: the recipient left the
    /// conversation, read the message that started the clock, came online
    /// since it was stored, or blocks the sender of the newest one.
    pub async fn build(&self, due: &Due) -> anyhow::Result<Built> {
        let row = sqlx::query(FACTS)
            .bind(due.user.get())
            .bind(due.conversation.get())
            .fetch_optional(&self.db)
            .await?;
        let Some(row) = row else {
            return Ok(Built::Suppressed("left"));
        };
        let last_read: i64 = row.try_get(0)?;
        let unread: i64 = row.try_get(1)?;
        if last_read >= due.seq || row.try_get::<Option<i64>, _>(2)?.is_none() {
            return Ok(Built::Suppressed("read"));
        }
        let message = message_from_row(&row, 2)?;
        if message.seq <= last_read {
            return Ok(Built::Suppressed("read"));
        }
        if row.try_get::<bool, _>(10)? {
            return Ok(Built::Suppressed("blocked"));
        }
        if self.came_online(due).await {
            return Ok(Built::Suppressed("online"));
        }
        let sender = message.sender_id.user().map(|id| User {
            id,
            name: row.try_get(11).unwrap_or_default(),
            avatar_url: row.try_get(12).unwrap_or_default(),
        });
        let event = UnreadEvent {
            id: format!("evt_{}", due.id),
            kind: "message.unread",
            created_at: time::now_millis(),
            user_id: due.user,
            conversation_id: due.conversation,
            unread_count: unread,
            message: &message,
            sender,
        };
        Ok(Built::Event(serde_json::to_string(&event)?))
    }

    /// Whether the recipient is online now, or was since the message was
    /// stored (their `last_seen`, the time of their last change, is later).
    /// With Redis unreachable: no (the event goes).
    async fn came_online(&self, due: &Due) -> bool {
        let mut redis = self.redis.clone();
        match chat_shared::presence_state::status_of(&mut redis, &self.keys, due.user).await {
            Ok((online, last_seen)) => {
                online || last_seen.is_some_and(|ms| ms > due.stored_at.timestamp_millis())
            }
            Err(e) => {
                tracing::warn!(user.id = %due.user, error = %e, "presence unknown (Redis); the unread event goes");
                false
            }
        }
    }
}
