//! Who should hear about whom, from Postgres, for every service: the
//! members of a conversation (typing), the people who share a conversation
//! with a user (presence changes, profile changes), and which of some users
//! share one with a caller (what the caller may look up).

use crate::ids::{ConversationId, UserId};
use sea_orm::sqlx::{self, PgPool};

/// At most this many people hear of one user's change (presence, profile).
pub const MAX_SHARING: i64 = 10_000;

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

    /// Everyone who shares a conversation with `user`, `user` excluded (at
    /// most [`MAX_SHARING`]).
    pub async fn sharing_with(&self, user: UserId) -> Result<Vec<UserId>, sqlx::Error> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT other.user_id
               FROM members mine
               JOIN members other ON other.conversation_id = mine.conversation_id
              WHERE mine.user_id = $1 AND other.user_id <> $1
              LIMIT $2",
        )
        .bind(user.get())
        .bind(MAX_SHARING)
        .fetch_all(&self.pool)
        .await?;
        Ok(user_ids(ids))
    }

    /// Those of `users` who share at least one conversation with `caller`
    /// (the caller counts as sharing with themself).
    pub async fn co_members(
        &self,
        caller: UserId,
        users: &[UserId],
    ) -> Result<Vec<UserId>, sqlx::Error> {
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
        let mut shared = user_ids(rows);
        if users.contains(&caller) {
            shared.push(caller);
        }
        Ok(shared)
    }
}

/// The valid user ids of a column (a corrupt one is skipped).
fn user_ids(ids: Vec<i64>) -> Vec<UserId> {
    ids.into_iter()
        .filter_map(|id| UserId::new(id).ok())
        .collect()
}
