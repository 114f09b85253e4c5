//! Who should hear about whom, from Postgres: the members of a conversation
//! (typing), and the people who share a conversation with a user (presence).

use chat_shared::ids::{ConversationId, UserId};
use sea_orm::sqlx::{self, PgPool};

/// At most this many contacts hear of one user's presence change.
pub const MAX_CONTACTS: i64 = 10_000;

#[derive(Clone)]
pub struct Directory {
    pool: PgPool,
}

impl Directory {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub async fn members(&self, conversation: ConversationId) -> Result<Vec<UserId>, sqlx::Error> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT user_id FROM members WHERE conversation_id = $1 ORDER BY user_id",
        )
        .bind(conversation.get())
        .fetch_all(&self.pool)
        .await?;
        Ok(user_ids(ids))
    }

    /// Everyone who shares a conversation with `user`, `user` excluded.
    pub async fn contacts(&self, user: UserId) -> Result<Vec<UserId>, sqlx::Error> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT other.user_id
               FROM members mine
               JOIN members other ON other.conversation_id = mine.conversation_id
              WHERE mine.user_id = $1 AND other.user_id <> $1
              LIMIT $2",
        )
        .bind(user.get())
        .bind(MAX_CONTACTS)
        .fetch_all(&self.pool)
        .await?;
        Ok(user_ids(ids))
    }
}

/// The valid user ids of a column (a corrupt one is skipped).
fn user_ids(ids: Vec<i64>) -> Vec<UserId> {
    ids.into_iter().filter_map(|id| UserId::new(id).ok()).collect()
}
