//! The gateway's reads and writes of Postgres: conversations and history.
//! (Messages are written only by the persister.) Plain SQL through
//! sea-orm's sqlx pool.

use chat_shared::ids::{ConversationId, UserId};
use chat_shared::protocol::{Conversation, ConversationKind, Message, NewConversation};
use chat_shared::schema::{RowError, message_from_row};
use chat_shared::time::Timestamp;
use sea_orm::sqlx::{self, PgPool, Row, postgres::PgRow};

pub type StoreError = RowError;

pub enum Membership {
    Member,
    NotMember,
    NoSuchConversation,
}

/// Which page of history.
#[derive(Debug, Clone, Copy)]
pub enum Page {
    /// The newest `limit` messages before `seq` (exclusive).
    Before(i64),
    /// The oldest `limit` messages after `seq` (exclusive).
    After(i64),
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Creates the conversation (a direct one only if the pair has none yet)
    /// and returns its id, its members, and whether it is new.
    pub async fn create(
        &self,
        caller: UserId,
        new: &NewConversation,
    ) -> Result<(ConversationId, Vec<UserId>, bool), StoreError> {
        let mut tx = self.pool.begin().await?;
        let (id, members, created) = match new {
            NewConversation::Direct { peer } => {
                let (low, high) = if caller < *peer {
                    (caller, *peer)
                } else {
                    (*peer, caller)
                };
                let key = format!("{low}:{high}");
                let inserted: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO conversations (kind, direct_key) VALUES ('direct', $1)
                     ON CONFLICT (direct_key) DO NOTHING RETURNING id",
                )
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?;
                match inserted {
                    Some(id) => (id, vec![low, high], true),
                    None => {
                        let id: i64 = sqlx::query_scalar(
                            "SELECT id FROM conversations WHERE direct_key = $1",
                        )
                        .bind(&key)
                        .fetch_one(&mut *tx)
                        .await?;
                        (id, vec![low, high], false)
                    }
                }
            }
            NewConversation::Group { title, members } => {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO conversations (kind, title) VALUES ('group', $1) RETURNING id",
                )
                .bind(title)
                .fetch_one(&mut *tx)
                .await?;
                (id, members.clone(), true)
            }
        };
        if created {
            let ids: Vec<i64> = members.iter().map(|u| u.get()).collect();
            sqlx::query(
                "INSERT INTO members (conversation_id, user_id) SELECT $1, unnest($2::bigint[])",
            )
            .bind(id)
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((ConversationId::new(id)?, members, created))
    }

    pub async fn membership(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Membership, StoreError> {
        let row: Option<(bool,)> = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2)
             FROM conversations WHERE id = $1",
        )
        .bind(conversation.get())
        .bind(user.get())
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => Membership::NoSuchConversation,
            Some((true,)) => Membership::Member,
            Some((false,)) => Membership::NotMember,
        })
    }

    /// Those of `users` who share at least one conversation with `caller`
    /// (the caller counts as sharing with themself).
    pub async fn co_members(
        &self,
        caller: UserId,
        users: &[UserId],
    ) -> Result<Vec<UserId>, StoreError> {
        let ids: Vec<i64> = users.iter().map(|u| u.get()).collect();
        let rows: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT other.user_id
               FROM members mine
               JOIN members other ON other.conversation_id = mine.conversation_id
              WHERE mine.user_id = $1 AND other.user_id = ANY($2)",
        )
        .bind(caller.get())
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let mut shared: Vec<UserId> = rows
            .into_iter()
            .filter_map(|id| UserId::new(id).ok())
            .collect();
        if users.contains(&caller) {
            shared.push(caller);
        }
        Ok(shared)
    }

    /// The caller's conversations, most recent activity first.
    pub async fn conversations(
        &self,
        user: UserId,
        only: Option<ConversationId>,
        before: Option<Timestamp>,
        limit: i64,
    ) -> Result<Vec<Conversation>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.id, c.kind, c.title, c.last_seq, c.created_at,
                    (SELECT array_agg(user_id ORDER BY user_id) FROM members WHERE conversation_id = c.id),
                    (SELECT count(*) FROM messages x
                      WHERE x.conversation_id = c.id AND x.seq > m.last_read_seq AND x.sender_id <> $1),
                    lm.id, lm.conversation_id, lm.seq, lm.sender_id, lm.client_msg_id, lm.body, lm.created_at
               FROM members m
               JOIN conversations c ON c.id = m.conversation_id
               LEFT JOIN messages lm ON lm.conversation_id = c.id AND lm.seq = c.last_seq
              WHERE m.user_id = $1
                AND ($2::bigint IS NULL OR c.id = $2)
                AND ($3::timestamptz IS NULL OR c.last_activity_at < $3)
              ORDER BY c.last_activity_at DESC, c.id DESC
              LIMIT $4",
        )
        .bind(user.get())
        .bind(only.map(ConversationId::get))
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(conversation_from_row).collect()
    }

    pub async fn history(
        &self,
        conversation: ConversationId,
        page: Page,
        limit: i64,
    ) -> Result<Vec<Message>, StoreError> {
        let sql = match page {
            Page::Before(_) => {
                "SELECT * FROM (SELECT id, conversation_id, seq, sender_id, client_msg_id, body, created_at
                   FROM messages WHERE conversation_id = $1 AND seq < $2
                  ORDER BY seq DESC LIMIT $3) newest ORDER BY seq ASC"
            }
            Page::After(_) => {
                "SELECT id, conversation_id, seq, sender_id, client_msg_id, body, created_at
                   FROM messages WHERE conversation_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3"
            }
        };
        let (Page::Before(seq) | Page::After(seq)) = page;
        let rows = sqlx::query(sql)
            .bind(conversation.get())
            .bind(seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| message_from_row(r, 0)).collect()
    }
}

fn conversation_from_row(row: &PgRow) -> Result<Conversation, StoreError> {
    let id: i64 = row.try_get(0)?;
    let kind = match row.try_get::<String, _>(1)?.as_str() {
        "direct" => ConversationKind::Direct,
        "group" => ConversationKind::Group,
        other => return Err(RowError::Corrupt(format!("conversation kind {other:?}"))),
    };
    let members: Vec<i64> = row.try_get::<Option<Vec<i64>>, _>(5)?.unwrap_or_default();
    let last_message = match row.try_get::<Option<i64>, _>(7)? {
        Some(_) => Some(message_from_row(row, 7)?),
        None => None,
    };
    Ok(Conversation {
        id: ConversationId::new(id)?,
        kind,
        title: row.try_get(2)?,
        member_ids: members
            .into_iter()
            .map(UserId::new)
            .collect::<Result<_, _>>()?,
        last_message,
        last_seq: row.try_get(3)?,
        unread_count: row.try_get(6)?,
        created_at: row.try_get(4)?,
    })
}
