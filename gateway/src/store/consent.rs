//! Version 2 consent in Postgres: privacy settings (the `users` table's
//! `privacy_*` columns), blocks, and what they refuse. Who may see whose
//! presence is decided in SQL shared by every service
//! (`chat_shared::directory`).

use super::{Store, StoreError};
use chat_shared::directory::not_blocked;
use chat_shared::ids::{ConversationId, UserId};
use chat_shared::privacy::{GroupsAudience, PresenceAudience, Privacy, PrivacyChange};
use chat_shared::protocol::User;
use sea_orm::sqlx::{self, PgConnection};
use std::sync::LazyLock;

/// Why consent refuses to put someone in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A block, either way, between the two users (403 `blocked`).
    Blocked,
    /// The added user's `groups` setting does not allow the adder (403
    /// `forbidden`).
    NotAllowed,
}

/// Per user to be added by `$1` (those of `$2` who are not `$1` and not
/// already members of `$3`): whether a block stands between them, and
/// whether their `groups` setting allows `$1`.
static ADD_CONSENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT NOT ({}),
                COALESCE((SELECT privacy_groups FROM users p WHERE p.id = u.id), 'everyone') = 'everyone'
                OR EXISTS (SELECT 1 FROM contacts k WHERE k.user_id = u.id AND k.peer_id = $1)
           FROM unnest($2::bigint[]) AS u (id)
          WHERE u.id <> $1
            AND NOT EXISTS (SELECT 1 FROM members m WHERE m.conversation_id = $3 AND m.user_id = u.id)",
        not_blocked("u.id", "$1")
    )
});

static BLOCKED_BETWEEN: LazyLock<String> =
    LazyLock::new(|| format!("SELECT NOT ({})", not_blocked("$1", "$2")));

impl Store {
    /// `user`'s settings (the defaults for a user without a row).
    pub async fn privacy(&self, user: UserId) -> Result<Privacy, StoreError> {
        let row: Option<(String, bool, String)> = sqlx::query_as(
            "SELECT privacy_presence, privacy_read_receipts, privacy_groups FROM users WHERE id = $1",
        )
        .bind(user.get())
        .fetch_optional(&self.pool)
        .await?;
        row.map_or(Ok(Privacy::default()), privacy_from_row)
    }

    /// Applies `change` to `user`'s settings; the settings before and after.
    pub async fn set_privacy(
        &self,
        user: UserId,
        change: PrivacyChange,
    ) -> Result<(Privacy, Privacy), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO users (id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(user.get())
            .execute(&mut *tx)
            .await?;
        let before: (String, bool, String) = sqlx::query_as(
            "SELECT privacy_presence, privacy_read_receipts, privacy_groups
               FROM users WHERE id = $1 FOR UPDATE",
        )
        .bind(user.get())
        .fetch_one(&mut *tx)
        .await?;
        let before = privacy_from_row(before)?;
        let after = change.applied_to(before);
        sqlx::query(
            "UPDATE users SET privacy_presence = $2, privacy_read_receipts = $3,
                              privacy_groups = $4, updated_at = now()
              WHERE id = $1",
        )
        .bind(user.get())
        .bind(after.presence.as_str())
        .bind(after.read_receipts)
        .bind(after.groups.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((before, after))
    }

    /// `blocker` blocks `blocked`; whether that is new.
    pub async fn block(&self, blocker: UserId, blocked: UserId) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO blocks (blocker_id, blocked_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(blocker.get())
        .bind(blocked.get())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// `blocker` no longer blocks `blocked`; whether there was a block.
    pub async fn unblock(&self, blocker: UserId, blocked: UserId) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM blocks WHERE blocker_id = $1 AND blocked_id = $2")
            .bind(blocker.get())
            .bind(blocked.get())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The users `user` blocks, most recent block first.
    pub async fn blocks_made(&self, user: UserId) -> Result<Vec<User>, StoreError> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT blocked_id FROM blocks WHERE blocker_id = $1 ORDER BY created_at DESC, blocked_id",
        )
        .bind(user.get())
        .fetch_all(&self.pool)
        .await?;
        let ids: Vec<UserId> = ids.into_iter().map(UserId::new).collect::<Result<_, _>>()?;
        self.users(&ids).await
    }

    /// The users `user` blocks or is blocked by, ascending.
    pub async fn blocked_with(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT blocked_id FROM blocks WHERE blocker_id = $1
             UNION
             SELECT blocker_id FROM blocks WHERE blocked_id = $1
             ORDER BY 1",
        )
        .bind(user.get())
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(UserId::new).collect::<Result<_, _>>()?)
    }
}

/// Whether a block stands, either way, between `a` and `b`.
pub(super) async fn blocked_between(
    tx: &mut PgConnection,
    a: UserId,
    b: UserId,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(BLOCKED_BETWEEN.as_str())
        .bind(a.get())
        .bind(b.get())
        .fetch_one(&mut *tx)
        .await?)
}

/// Whether consent refuses that `adder` puts `users` in `conversation`
/// (`None`: a new one); a block is named before a setting.
pub(super) async fn refusal_to_add(
    tx: &mut PgConnection,
    adder: UserId,
    users: &[UserId],
    conversation: Option<ConversationId>,
) -> Result<Option<Refusal>, StoreError> {
    let ids: Vec<i64> = users.iter().map(|u| u.get()).collect();
    let rows: Vec<(bool, bool)> = sqlx::query_as(ADD_CONSENT.as_str())
        .bind(adder.get())
        .bind(&ids)
        .bind(conversation.map(|c| c.get()))
        .fetch_all(&mut *tx)
        .await?;
    Ok(if rows.iter().any(|(blocked, _)| *blocked) {
        Some(Refusal::Blocked)
    } else if rows.iter().any(|(_, allowed)| !*allowed) {
        Some(Refusal::NotAllowed)
    } else {
        None
    })
}

fn privacy_from_row(
    (presence, read_receipts, groups): (String, bool, String),
) -> Result<Privacy, StoreError> {
    let corrupt =
        |what: &str, value: &str| StoreError::Corrupt(format!("users.{what} = {value:?}"));
    Ok(Privacy {
        presence: PresenceAudience::parse(&presence)
            .ok_or_else(|| corrupt("privacy_presence", &presence))?,
        read_receipts,
        groups: GroupsAudience::parse(&groups).ok_or_else(|| corrupt("privacy_groups", &groups))?,
    })
}
