//! The gateway's reads and writes of Postgres: conversations and history.
//! (Messages are written only by the persister.) Plain SQL through
//! sea-orm's sqlx pool.

use chat_shared::card::HttpsUrl;
use chat_shared::ids::{ConversationId, UserId};
use chat_shared::profile::DisplayName;
use chat_shared::protocol::{
    Conversation, ConversationKind, Message, NewConversation, ReadMarker, User,
};
use chat_shared::schema::{RowError, message_from_row};
use chat_shared::time::Timestamp;
use sea_orm::sqlx::{self, PgPool, Row, postgres::PgRow};

mod consent;

pub use consent::Refusal;

pub type StoreError = RowError;

pub enum Membership {
    Member,
    NotMember,
    NoSuchConversation,
}

/// A conversation's members, ascending, and whether it is direct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    pub direct: bool,
    pub ids: Vec<UserId>,
}

/// What a change of a group's members came to.
pub enum MembersChange {
    /// Done: the members now, ascending.
    Changed(Vec<UserId>),
    NoSuchConversation,
    /// The caller is not a member (so may neither add nor leave).
    NotMember,
    /// A direct conversation's members never change.
    Direct,
    /// The group would grow past `Conversation::MAX_MEMBERS`.
    TooMany,
    /// Consent refuses it (version 2: blocks, `groups` settings).
    Refused(Refusal),
}

/// What creating a conversation came to.
pub enum Creation {
    /// Its id and members, and whether it is new.
    Done(ConversationId, Vec<UserId>, bool),
    /// Consent refuses it (version 2: blocks, `groups` settings).
    Refused(Refusal),
}

static READS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT m.user_id, m.last_read_seq FROM members m
          WHERE m.conversation_id = $1 AND m.user_id <> $2 AND m.last_read_seq > 0
            AND COALESCE((SELECT r.privacy_read_receipts FROM users r WHERE r.id = m.user_id), true)
            AND {}
          ORDER BY m.user_id",
        chat_shared::directory::not_blocked("m.user_id", "$2")
    )
});

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

/// The history statement (`Store::history`) for a page before (`<`, the
/// newest first) or after (`>`) a seq. One row per message; at least one
/// row, its message columns NULL, when the conversation exists but the page
/// is empty or hidden.
macro_rules! history_sql {
    ($cmp:literal, $order:literal) => {
        concat!(
            "SELECT c.member, m.* FROM
               (SELECT EXISTS (SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $4) AS member
                  FROM conversations WHERE id = $1) c
               LEFT JOIN LATERAL
               (SELECT id, conversation_id, seq, sender_id, client_msg_id, body, created_at, card::text
                  FROM messages WHERE c.member AND conversation_id = $1 AND seq ",
            $cmp,
            " $2
                 ORDER BY seq ",
            $order,
            " LIMIT $3) m ON true
             ORDER BY m.seq ASC"
        )
    };
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Creates the conversation (a direct one only if the pair has none yet
    /// and no block stands between them; a group only with members whose
    /// blocks and settings let the caller add them).
    /// `vouched` (the host site's server API): a group is created whatever
    /// its members' `groups` settings.
    pub async fn create(
        &self,
        caller: UserId,
        new: &NewConversation,
        vouched: bool,
    ) -> Result<Creation, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (id, members, created) = match new {
            NewConversation::Direct { peer } => {
                let (low, high) = if caller < *peer {
                    (caller, *peer)
                } else {
                    (*peer, caller)
                };
                let key = format!("{low}:{high}");
                let exists: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM conversations WHERE direct_key = $1")
                        .bind(&key)
                        .fetch_optional(&mut *tx)
                        .await?;
                if exists.is_none() && consent::blocked_between(&mut tx, low, high).await? {
                    return Ok(Creation::Refused(Refusal::Blocked));
                }
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
                if !vouched
                    && let Some(refused) =
                        consent::refusal_to_add(&mut tx, caller, members, None).await?
                {
                    return Ok(Creation::Refused(refused));
                }
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
        Ok(Creation::Done(ConversationId::new(id)?, members, created))
    }

    /// A conversation's members, ascending; `None` when there is no such
    /// conversation.
    pub async fn members(
        &self,
        conversation: ConversationId,
    ) -> Result<Option<Members>, StoreError> {
        let row: Option<(Option<Vec<i64>>, bool)> = sqlx::query_as(
            "SELECT (SELECT array_agg(user_id ORDER BY user_id) FROM members WHERE conversation_id = c.id),
                    c.kind = 'direct'
               FROM conversations c WHERE c.id = $1",
        )
        .bind(conversation.get())
        .fetch_optional(&self.pool)
        .await?;
        let Some((ids, direct)) = row else {
            return Ok(None);
        };
        let ids = ids.unwrap_or_default().into_iter().map(UserId::new);
        Ok(Some(Members {
            direct,
            ids: ids.collect::<Result<_, _>>()?,
        }))
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

    /// Adds `users` to the group `conversation` on behalf of `caller`, a
    /// member. Changes of one conversation's members are serialised (the
    /// conversation's row is locked).
    pub async fn add_members(
        &self,
        conversation: ConversationId,
        caller: UserId,
        users: &[UserId],
    ) -> Result<MembersChange, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(refused) = lock_group(&mut tx, conversation, caller).await? {
            return Ok(refused);
        }
        if let Some(refused) =
            consent::refusal_to_add(&mut tx, caller, users, Some(conversation)).await?
        {
            return Ok(MembersChange::Refused(refused));
        }
        let ids: Vec<i64> = users.iter().map(|u| u.get()).collect();
        sqlx::query(
            "INSERT INTO members (conversation_id, user_id) SELECT $1, unnest($2::bigint[])
             ON CONFLICT DO NOTHING",
        )
        .bind(conversation.get())
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        let members = members_of(&mut tx, conversation).await?;
        if members.len() > Conversation::MAX_MEMBERS {
            return Ok(MembersChange::TooMany); // rolled back on drop
        }
        tx.commit().await?;
        Ok(MembersChange::Changed(members))
    }

    /// Takes `caller` out of the group `conversation`.
    pub async fn leave(
        &self,
        conversation: ConversationId,
        caller: UserId,
    ) -> Result<MembersChange, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(refused) = lock_group(&mut tx, conversation, caller).await? {
            return Ok(refused);
        }
        sqlx::query("DELETE FROM members WHERE conversation_id = $1 AND user_id = $2")
            .bind(conversation.get())
            .bind(caller.get())
            .execute(&mut *tx)
            .await?;
        let members = members_of(&mut tx, conversation).await?;
        tx.commit().await?;
        Ok(MembersChange::Changed(members))
    }

    /// The read markers of `conversation`'s members other than `caller`
    /// who have read something, by user id (not of those who turned read
    /// receipts off, nor across a block).
    pub async fn reads(
        &self,
        conversation: ConversationId,
        caller: UserId,
    ) -> Result<Vec<ReadMarker>, StoreError> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(READS.as_str())
            .bind(conversation.get())
            .bind(caller.get())
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|(user_id, seq)| {
                Ok(ReadMarker {
                    user_id: UserId::new(user_id)?,
                    seq,
                })
            })
            .collect()
    }

    /// The profiles of `users` (a user never named has `name` null).
    pub async fn users(&self, users: &[UserId]) -> Result<Vec<User>, StoreError> {
        let ids: Vec<i64> = users.iter().map(|u| u.get()).collect();
        let rows: Vec<(i64, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT i.id, u.name, u.avatar_url
               FROM unnest($1::bigint[]) WITH ORDINALITY AS i(id, n)
               LEFT JOIN users u ON u.id = i.id
              ORDER BY i.n",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, name, avatar_url)| {
                Ok(User {
                    id: UserId::new(id)?,
                    name,
                    avatar_url,
                })
            })
            .collect()
    }

    /// Stores `name` as `user`'s unless it is already theirs; the profile
    /// when it changed (a first name counts as a change).
    pub async fn set_name(&self, user: UserId, name: &str) -> Result<Option<User>, StoreError> {
        let changed: Option<(Option<String>,)> = sqlx::query_as(
            "INSERT INTO users (id, name) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, updated_at = now()
              WHERE users.name IS DISTINCT FROM EXCLUDED.name
             RETURNING avatar_url",
        )
        .bind(user.get())
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(changed.map(|(avatar_url,)| User {
            id: user,
            name: Some(name.to_owned()),
            avatar_url,
        }))
    }

    /// Sets `user`'s name and avatar (the server API): `None` keeps what is
    /// stored, `Some(None)` removes the avatar. The profile, and whether it
    /// changed.
    pub async fn set_profile(
        &self,
        user: UserId,
        name: Option<DisplayName>,
        avatar: Option<Option<HttpsUrl>>,
    ) -> Result<(User, bool), StoreError> {
        let row: (Option<String>, Option<String>, bool) = sqlx::query_as(
            "WITH before AS (SELECT name, avatar_url FROM users WHERE id = $1)
             INSERT INTO users (id, name, avatar_url) VALUES ($1, $2, $4)
             ON CONFLICT (id) DO UPDATE SET
                 name = CASE WHEN $3 THEN EXCLUDED.name ELSE users.name END,
                 avatar_url = CASE WHEN $5 THEN EXCLUDED.avatar_url ELSE users.avatar_url END,
                 updated_at = now()
             RETURNING name, avatar_url,
                       (name, avatar_url) IS DISTINCT FROM
                       COALESCE((SELECT (b.name, b.avatar_url) FROM before b), (NULL::text, NULL::text))",
        )
        .bind(user.get())
        .bind(name.as_ref().map(DisplayName::as_str))
        .bind(name.is_some())
        .bind(avatar.as_ref().and_then(|a| a.as_ref().map(HttpsUrl::as_str)))
        .bind(avatar.is_some())
        .fetch_one(&self.pool)
        .await?;
        let (name, avatar_url, changed) = row;
        Ok((
            User {
                id: user,
                name,
                avatar_url,
            },
            changed,
        ))
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
                    mem.ids,
                    (SELECT count(*) FROM messages x
                      WHERE x.conversation_id = c.id AND x.seq > m.last_read_seq AND x.sender_id <> $1),
                    lm.id, lm.conversation_id, lm.seq, lm.sender_id, lm.client_msg_id, lm.body, lm.created_at, lm.card::text,
                    mem.names, mem.avatars
               FROM members m
               JOIN conversations c ON c.id = m.conversation_id
               LEFT JOIN messages lm ON lm.conversation_id = c.id AND lm.seq = c.last_seq
               LEFT JOIN LATERAL (
                   SELECT array_agg(mm.user_id ORDER BY mm.user_id) AS ids,
                          array_agg(u.name ORDER BY mm.user_id) AS names,
                          array_agg(u.avatar_url ORDER BY mm.user_id) AS avatars
                     FROM members mm LEFT JOIN users u ON u.id = mm.user_id
                    WHERE mm.conversation_id = c.id) mem ON true
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

    /// A page of `conversation`'s history as `user` may read it: the
    /// membership check and the page in one statement (one round trip and
    /// one pooled connection: after a gateway goes, each of its thousands
    /// of clients reads history at once). The page is empty unless `user`
    /// is a member.
    pub async fn history(
        &self,
        conversation: ConversationId,
        user: UserId,
        page: Page,
        limit: i64,
    ) -> Result<(Membership, Vec<Message>), StoreError> {
        let sql = match page {
            Page::Before(_) => history_sql!("<", "DESC"),
            Page::After(_) => history_sql!(">", "ASC"),
        };
        let (Page::Before(seq) | Page::After(seq)) = page;
        let rows = sqlx::query(sql)
            .bind(conversation.get())
            .bind(seq)
            .bind(limit)
            .bind(user.get())
            .fetch_all(&self.pool)
            .await?;
        let Some(first) = rows.first() else {
            return Ok((Membership::NoSuchConversation, Vec::new()));
        };
        if !first.try_get::<bool, _>(0)? {
            return Ok((Membership::NotMember, Vec::new()));
        }
        let messages = rows
            .iter()
            .filter(|r| r.try_get::<Option<i64>, _>(1).is_ok_and(|id| id.is_some()))
            .map(|r| message_from_row(r, 1))
            .collect::<Result<_, _>>()?;
        Ok((Membership::Member, messages))
    }
}

fn conversation_from_row(row: &PgRow) -> Result<Conversation, StoreError> {
    let id: i64 = row.try_get(0)?;
    let kind = match row.try_get::<String, _>(1)?.as_str() {
        "direct" => ConversationKind::Direct,
        "group" => ConversationKind::Group,
        other => return Err(RowError::Corrupt(format!("conversation kind {other:?}"))),
    };
    let member_ids: Vec<UserId> = row
        .try_get::<Option<Vec<i64>>, _>(5)?
        .unwrap_or_default()
        .into_iter()
        .map(UserId::new)
        .collect::<Result<_, _>>()?;
    let last_message = match row.try_get::<Option<i64>, _>(7)? {
        Some(_) => Some(message_from_row(row, 7)?),
        None => None,
    };
    let shown = kind == ConversationKind::Direct || member_ids.len() <= Conversation::MEMBERS_SHOWN;
    let members = if shown {
        let names: Vec<Option<String>> = row.try_get::<Option<_>, _>(15)?.unwrap_or_default();
        let avatars: Vec<Option<String>> = row.try_get::<Option<_>, _>(16)?.unwrap_or_default();
        let users = member_ids.iter().zip(names.into_iter().zip(avatars));
        Some(
            users
                .map(|(id, (name, avatar_url))| User {
                    id: *id,
                    name,
                    avatar_url,
                })
                .collect(),
        )
    } else {
        None
    };
    Ok(Conversation {
        id: ConversationId::new(id)?,
        kind,
        title: row.try_get(2)?,
        member_ids,
        members,
        last_message,
        last_seq: row.try_get(3)?,
        unread_count: row.try_get(6)?,
        created_at: row.try_get(4)?,
    })
}

/// Locks the group `conversation` for a change of members by `caller`;
/// the refusal, if the change may not happen.
async fn lock_group(
    tx: &mut sqlx::PgConnection,
    conversation: ConversationId,
    caller: UserId,
) -> Result<Option<MembersChange>, StoreError> {
    let row: Option<(String, bool)> = sqlx::query_as(
        "SELECT c.kind, EXISTS (SELECT 1 FROM members WHERE conversation_id = c.id AND user_id = $2)
           FROM conversations c WHERE c.id = $1 FOR UPDATE",
    )
    .bind(conversation.get())
    .bind(caller.get())
    .fetch_optional(&mut *tx)
    .await?;
    Ok(match row {
        None => Some(MembersChange::NoSuchConversation),
        Some((_, false)) => Some(MembersChange::NotMember),
        Some((kind, true)) if kind == "direct" => Some(MembersChange::Direct),
        Some(_) => None,
    })
}

async fn members_of(
    tx: &mut sqlx::PgConnection,
    conversation: ConversationId,
) -> Result<Vec<UserId>, StoreError> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT user_id FROM members WHERE conversation_id = $1 ORDER BY user_id",
    )
    .bind(conversation.get())
    .fetch_all(&mut *tx)
    .await?;
    Ok(ids.into_iter().map(UserId::new).collect::<Result<_, _>>()?)
}
