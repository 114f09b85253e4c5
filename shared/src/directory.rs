//! Who should hear about whom, from Postgres, for every service: the
//! members of a conversation (typing), the people who share a conversation
//! with a user (presence changes, profile changes), and which of some users
//! share one with a caller (what the caller may look up).
//!
//! Version 2 consent is applied here, in SQL, so every service applies it
//! alike: presence follows the subject's `privacy_presence` and blocks
//! ([`SEES_PRESENCE`]), typing follows blocks.

use crate::ids::{ConversationId, UserId};
use sea_orm::sqlx::{self, PgPool};
use std::sync::LazyLock;

/// SQL condition: no block, either way, between `{a}` and `{b}`.
const NOT_BLOCKED: &str = "NOT EXISTS (SELECT 1 FROM blocks b
     WHERE (b.blocker_id = {a} AND b.blocked_id = {b})
        OR (b.blocker_id = {b} AND b.blocked_id = {a}))";

/// SQL condition: `{viewer}` may see `{subject}`'s presence, given that they
/// share a conversation: no block either way, and the subject's
/// `privacy_presence` lets the viewer (for `contacts`: the subject has sent
/// a message in their direct conversation, table `contacts`).
const SEES_PRESENCE: &str = "{not_blocked}
 AND CASE COALESCE((SELECT privacy_presence FROM users p WHERE p.id = {subject}), 'everyone')
       WHEN 'everyone' THEN true
       WHEN 'contacts' THEN EXISTS (SELECT 1 FROM contacts k
                                     WHERE k.user_id = {subject} AND k.peer_id = {viewer})
       ELSE false
     END";

/// `NOT_BLOCKED` between two SQL expressions.
pub fn not_blocked(a: &str, b: &str) -> String {
    NOT_BLOCKED.replace("{a}", a).replace("{b}", b)
}

/// `SEES_PRESENCE` for two SQL expressions.
pub fn sees_presence(viewer: &str, subject: &str) -> String {
    SEES_PRESENCE
        .replace("{not_blocked}", &not_blocked(subject, viewer))
        .replace("{subject}", subject)
        .replace("{viewer}", viewer)
}

static MEMBERS_APART_FROM_BLOCKS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT m.user_id FROM members m
          WHERE m.conversation_id = $1 AND (m.user_id = $2 OR {})
          ORDER BY m.user_id",
        not_blocked("m.user_id", "$2")
    )
});

static PRESENCE_AUDIENCE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT DISTINCT other.user_id
           FROM members mine
           JOIN members other ON other.conversation_id = mine.conversation_id
          WHERE mine.user_id = $1 AND other.user_id <> $1 AND {}
          LIMIT $2",
        sees_presence("other.user_id", "$1")
    )
});

static PRESENCE_VISIBLE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT DISTINCT other.user_id
           FROM members mine
           JOIN members other ON other.conversation_id = mine.conversation_id
          WHERE mine.user_id = $1 AND other.user_id = ANY($2) AND other.user_id <> $1 AND {}",
        sees_presence("$1", "other.user_id")
    )
});

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

    /// The members of `conversation` but those with a block, either way,
    /// with `user` (`user` is among them when a member): who sees `user`
    /// typing there.
    pub async fn typing_circle(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Vec<UserId>, sqlx::Error> {
        let ids: Vec<i64> = sqlx::query_scalar(MEMBERS_APART_FROM_BLOCKS.as_str())
            .bind(conversation.get())
            .bind(user.get())
            .fetch_all(&self.pool)
            .await?;
        Ok(user_ids(ids))
    }

    /// Who may see `user`'s presence: those who share a conversation with
    /// them, as their settings and blocks allow (at most [`MAX_SHARING`]).
    pub async fn presence_audience(&self, user: UserId) -> Result<Vec<UserId>, sqlx::Error> {
        let ids: Vec<i64> = sqlx::query_scalar(PRESENCE_AUDIENCE.as_str())
            .bind(user.get())
            .bind(MAX_SHARING)
            .fetch_all(&self.pool)
            .await?;
        Ok(user_ids(ids))
    }

    /// Those of `users` whose presence `caller` may see (the caller sees
    /// their own).
    pub async fn presence_visible(
        &self,
        caller: UserId,
        users: &[UserId],
    ) -> Result<Vec<UserId>, sqlx::Error> {
        let ids: Vec<i64> = users.iter().map(|u| u.get()).collect();
        let rows: Vec<i64> = sqlx::query_scalar(PRESENCE_VISIBLE.as_str())
            .bind(caller.get())
            .bind(&ids)
            .fetch_all(&self.pool)
            .await?;
        let mut visible = user_ids(rows);
        if users.contains(&caller) {
            visible.push(caller);
        }
        Ok(visible)
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
