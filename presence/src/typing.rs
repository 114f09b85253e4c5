//! Typing, relayed and throttled. A `start` is broadcast unless the same user
//! in the same conversation had one broadcast within
//! `presence.typing_throttle_ms`; either way it pushes the lapse back to
//! `presence.typing_lapse_ms` from now. A start that lapses, found by the
//! sweep, becomes a `stop`. Nothing of it is stored in Postgres.

use chat_shared::config::PresenceSettings;
use chat_shared::ids::{ConversationId, UserId};
use chat_shared::presence_state::Keys;
use chat_shared::protocol::TypingState;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

type Result<T> = redis::RedisResult<T>;

pub struct Typing {
    keys: Keys,
    lapse_ms: i64,
    throttle_ms: i64,
}

/// Whether a `start` should be broadcast.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    Broadcast,
    Throttled,
}

impl Typing {
    pub fn new(keys: Keys, settings: &PresenceSettings) -> Self {
        Self {
            keys,
            lapse_ms: settings.typing_lapse.as_millis() as i64,
            throttle_ms: settings.typing_throttle.as_millis() as i64,
        }
    }

    fn due_member(conversation: ConversationId, user: UserId) -> String {
        format!("{conversation}:{user}")
    }

    /// `pipe`, then: the start of `u` in `c` lapses `typing_lapse_ms`
    /// from `now` (the sweep's schedule).
    fn lapses(
        &self,
        mut pipe: redis::Pipeline,
        c: ConversationId,
        u: UserId,
        now: i64,
    ) -> redis::Pipeline {
        let due = now + self.lapse_ms;
        pipe.zadd(self.keys.typing_due(), Self::due_member(c, u), due);
        pipe
    }

    /// Whether a start would be throttled (then its lapse is pushed back).
    pub async fn refresh_if_recent(
        &self,
        conn: &mut ConnectionManager,
        c: ConversationId,
        u: UserId,
        now: i64,
    ) -> Result<bool> {
        let key = self.keys.typing(c, u);
        let last: Option<i64> = conn.get(&key).await?;
        match last {
            Some(last) if now - last < self.throttle_ms => {
                let mut pipe = redis::pipe();
                pipe.pexpire(&key, self.lapse_ms);
                let _: (bool, i64) = self.lapses(pipe, c, u, now).query_async(conn).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Records a broadcast start.
    pub async fn started(
        &self,
        conn: &mut ConnectionManager,
        c: ConversationId,
        u: UserId,
        now: i64,
    ) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.pset_ex(self.keys.typing(c, u), now, self.lapse_ms as u64);
        let _: ((), i64) = self.lapses(pipe, c, u, now).query_async(conn).await?;
        Ok(())
    }

    /// An explicit stop: broadcast only if a start was in force.
    pub async fn stopped(
        &self,
        conn: &mut ConnectionManager,
        c: ConversationId,
        u: UserId,
    ) -> Result<bool> {
        let (deleted, _): (i64, i64) = redis::pipe()
            .del(self.keys.typing(c, u))
            .zrem(self.keys.typing_due(), Self::due_member(c, u))
            .query_async(conn)
            .await?;
        Ok(deleted == 1)
    }

    /// Starts that lapsed: each becomes a stop.
    pub async fn sweep(
        &self,
        conn: &mut ConnectionManager,
        now: i64,
    ) -> Result<Vec<(ConversationId, UserId, TypingState)>> {
        let due: Vec<String> = conn
            .zrangebyscore(self.keys.typing_due(), "-inf", now)
            .await?;
        let mut lapsed = Vec::new();
        for member in due {
            let removed: i64 = conn.zrem(self.keys.typing_due(), &member).await?;
            let parsed = member.split_once(':').and_then(|(c, u)| {
                let c = ConversationId::new(c.parse().ok()?).ok()?;
                let u = UserId::new(u.parse().ok()?).ok()?;
                Some((c, u))
            });
            if removed == 1
                && let Some((c, u)) = parsed
            {
                let _: i64 = conn.del(self.keys.typing(c, u)).await?;
                lapsed.push((c, u, TypingState::Stop));
            }
        }
        Ok(lapsed)
    }
}
