//! Who is online, kept in Redis (layout: `chat_shared::presence_state::Keys`).
//!
//! A user is online while at least one gateway that is alive hosts a session
//! of theirs. Gateways say when a user's first session opens and last one
//! closes, and send a heartbeat listing their users; a gateway not heard from
//! for `presence.gateway_ttl_ms` is dead, and a periodic sweep takes its
//! users offline. No keyspace notifications: expiry is found by the sweep.
//! A user whose last session closed goes offline only after
//! `presence.offline_grace_ms`, so a quick reload shows no flicker.

use chat_shared::config::PresenceSettings;
use chat_shared::ids::UserId;
use chat_shared::presence_state::{Keys, LAST_SEEN_TTL_SECS};
use chat_shared::protocol::PresenceStatus;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use std::collections::HashSet;

/// A user's status changed at `at` (unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub user: UserId,
    pub status: PresenceStatus,
    pub at: i64,
}

pub struct Online {
    keys: Keys,
    ttl_ms: i64,
    grace_ms: i64,
}

type Result<T> = redis::RedisResult<T>;

impl Online {
    pub fn new(keys: Keys, settings: &PresenceSettings) -> Self {
        Self {
            keys,
            ttl_ms: settings.gateway_ttl.as_millis() as i64,
            grace_ms: settings.offline_grace.as_millis() as i64,
        }
    }

    pub async fn opened(
        &self,
        conn: &mut ConnectionManager,
        gateway: &str,
        user: UserId,
        now: i64,
    ) -> Result<Option<Change>> {
        let k = &self.keys;
        let (_, _, _, _, added): (i64, i64, i64, i64, i64) = redis::pipe()
            .sadd(k.gateway_users(gateway), user.get())
            .sadd(k.user_gateways(user), gateway)
            .zadd(k.gateways_alive(), gateway, now + self.ttl_ms)
            .zrem(k.offline_due(), user.get())
            .sadd(k.online(), user.get())
            .query_async(conn)
            .await?;
        self.came_online(conn, user, added, now).await
    }

    pub async fn closed(
        &self,
        conn: &mut ConnectionManager,
        gateway: &str,
        user: UserId,
        now: i64,
    ) -> Result<()> {
        let k = &self.keys;
        let _: (i64, i64) = redis::pipe()
            .srem(k.gateway_users(gateway), user.get())
            .srem(k.user_gateways(user), gateway)
            .query_async(conn)
            .await?;
        if !self.is_hosted(conn, user, now).await? {
            let _: i64 = conn
                .zadd(k.offline_due(), user.get(), now + self.grace_ms)
                .await?;
        }
        Ok(())
    }

    /// The gateway lives and hosts exactly `users`: refresh its deadline and
    /// repair whatever open/close events were lost (or Redis forgot).
    pub async fn heartbeat(
        &self,
        conn: &mut ConnectionManager,
        gateway: &str,
        users: &[UserId],
        now: i64,
    ) -> Result<Vec<Change>> {
        let k = &self.keys;
        let _: i64 = conn
            .zadd(k.gateways_alive(), gateway, now + self.ttl_ms)
            .await?;
        let before: HashSet<i64> = conn.smembers(k.gateway_users(gateway)).await?;
        let current: HashSet<i64> = users.iter().map(|u| u.get()).collect();
        for gone in before.difference(&current) {
            let Ok(user) = UserId::new(*gone) else {
                continue;
            };
            self.closed(conn, gateway, user, now).await?;
        }
        let mut changes = Vec::new();
        for user in users {
            if before.contains(&user.get()) {
                continue;
            }
            if let Some(change) = self.opened(conn, gateway, *user, now).await? {
                changes.push(change);
            }
        }
        // Users already known here: make sure they are still shown online.
        if !users.is_empty() {
            let mut pipe = redis::pipe();
            for user in users.iter().filter(|u| before.contains(&u.get())) {
                pipe.sadd(k.online(), user.get());
            }
            let added: Vec<i64> = pipe.query_async(conn).await?;
            let known = users.iter().filter(|u| before.contains(&u.get()));
            for (user, added) in known.zip(added) {
                if let Some(change) = self.came_online(conn, *user, added, now).await? {
                    changes.push(change);
                }
            }
        }
        Ok(changes)
    }

    /// Dead gateways' users, and users whose grace ran out, go offline.
    pub async fn sweep(&self, conn: &mut ConnectionManager, now: i64) -> Result<Vec<Change>> {
        let k = &self.keys;
        let mut changes = Vec::new();
        let dead: Vec<String> = conn.zrangebyscore(k.gateways_alive(), "-inf", now).await?;
        for gateway in dead {
            // Only the sweeper that removes it handles it.
            let removed: i64 = conn.zrem(k.gateways_alive(), &gateway).await?;
            if removed == 0 {
                continue;
            }
            let users: Vec<i64> = conn.smembers(k.gateway_users(&gateway)).await?;
            let _: i64 = conn.del(k.gateway_users(&gateway)).await?;
            tracing::info!(gateway = %gateway, users = users.len(), "gateway expired, its users go offline");
            for user in users.into_iter().filter_map(|u| UserId::new(u).ok()) {
                let _: i64 = conn.srem(k.user_gateways(user), &gateway).await?;
                if let Some(change) = self.go_offline_unless_hosted(conn, user, now).await? {
                    changes.push(change);
                }
            }
        }
        let due: Vec<i64> = conn.zrangebyscore(k.offline_due(), "-inf", now).await?;
        for user in due.into_iter().filter_map(|u| UserId::new(u).ok()) {
            let removed: i64 = conn.zrem(k.offline_due(), user.get()).await?;
            if removed == 1
                && let Some(change) = self.go_offline_unless_hosted(conn, user, now).await?
            {
                changes.push(change);
            }
        }
        Ok(changes)
    }

    /// Whether a live gateway hosts a session of `user`.
    async fn is_hosted(
        &self,
        conn: &mut ConnectionManager,
        user: UserId,
        now: i64,
    ) -> Result<bool> {
        let gateways: Vec<String> = conn.smembers(self.keys.user_gateways(user)).await?;
        if gateways.is_empty() {
            return Ok(false);
        }
        let mut cmd = redis::cmd("ZMSCORE");
        cmd.arg(self.keys.gateways_alive()).arg(&gateways);
        let deadlines: Vec<Option<f64>> = cmd.query_async(conn).await?;
        Ok(deadlines
            .into_iter()
            .flatten()
            .any(|deadline| deadline > now as f64))
    }

    async fn go_offline_unless_hosted(
        &self,
        conn: &mut ConnectionManager,
        user: UserId,
        now: i64,
    ) -> Result<Option<Change>> {
        if self.is_hosted(conn, user, now).await? {
            return Ok(None);
        }
        let removed: i64 = conn.srem(self.keys.online(), user.get()).await?;
        self.changed(conn, user, removed, PresenceStatus::Offline, now)
            .await
    }

    async fn came_online(
        &self,
        conn: &mut ConnectionManager,
        user: UserId,
        added: i64,
        now: i64,
    ) -> Result<Option<Change>> {
        self.changed(conn, user, added, PresenceStatus::Online, now)
            .await
    }

    /// When the `online` set really changed (`count` is SADD's or SREM's
    /// answer), records `last_seen` and returns the change.
    async fn changed(
        &self,
        conn: &mut ConnectionManager,
        user: UserId,
        count: i64,
        status: PresenceStatus,
        now: i64,
    ) -> Result<Option<Change>> {
        if count == 0 {
            return Ok(None);
        }
        let _: () = conn
            .set_ex(self.keys.last_seen(user), now, LAST_SEEN_TTL_SECS)
            .await?;
        Ok(Some(Change {
            user,
            status,
            at: now,
        }))
    }
}
