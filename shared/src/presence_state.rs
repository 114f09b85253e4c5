//! Redis: connecting, and the key layout that the presence service writes and
//! the gateways read (`GET /api/presence`). Every key starts with
//! `redis.prefix`. The layout, with each key's lifetime, is also in
//! docs/architecture.md.

use crate::config::RedisSettings;
use crate::ids::{ConversationId, UserId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

pub use redis::RedisError;

/// A connection that is made on first use and re-made after failures, so a
/// service starts, and chat goes on, while Redis is down.
pub fn connect(settings: &RedisSettings) -> Result<ConnectionManager, RedisError> {
    let client = crate::tls::redis_client(settings)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(1000)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}

/// The key layout.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(settings: &RedisSettings) -> Self {
        Self {
            prefix: settings.prefix.clone(),
        }
    }

    /// ZSET gateway id -> deadline (unix ms); refreshed by each heartbeat.
    pub fn gateways_alive(&self) -> String {
        format!("{}:gw:alive", self.prefix)
    }

    /// SET of user ids with a session on `gateway`. Deleted when the gateway
    /// is found dead.
    pub fn gateway_users(&self, gateway: &str) -> String {
        format!("{}:gw:{gateway}:users", self.prefix)
    }

    /// SET of gateway ids where `user` has a session.
    pub fn user_gateways(&self, user: UserId) -> String {
        format!("{}:user:{user}:gws", self.prefix)
    }

    /// SET of the users shown online (changed only by the presence service).
    pub fn online(&self) -> String {
        format!("{}:online", self.prefix)
    }

    /// STRING unix ms when `user` was last seen (went online or offline);
    /// kept 30 days.
    pub fn last_seen(&self, user: UserId) -> String {
        format!("{}:user:{user}:last_seen", self.prefix)
    }

    /// ZSET user id -> when to check whether they went offline (the grace
    /// that hides a quick reload).
    pub fn offline_due(&self) -> String {
        format!("{}:offline:due", self.prefix)
    }

    /// STRING unix ms of the last broadcast `start`; expires after the lapse.
    pub fn typing(&self, conversation: ConversationId, user: UserId) -> String {
        format!("{}:typing:{conversation}:{user}", self.prefix)
    }

    /// ZSET "<conversation>:<user>" -> lapse deadline (unix ms).
    /// Groups `user` created in the hour `hour` (unix time / 3600); expires.
    pub fn groups_created(&self, user: UserId, hour: i64) -> String {
        format!("{}:user:{user}:groups:{hour}", self.prefix)
    }

    pub fn typing_due(&self) -> String {
        format!("{}:typing:due", self.prefix)
    }
}

/// How long `last_seen` is kept.
pub const LAST_SEEN_TTL_SECS: u64 = 30 * 24 * 3600;

/// Whether `user` is online, and their `last_seen` (unix ms), in one round
/// trip.
pub async fn status_of(
    conn: &mut ConnectionManager,
    keys: &Keys,
    user: UserId,
) -> Result<(bool, Option<i64>), RedisError> {
    redis::pipe()
        .cmd("SISMEMBER")
        .arg(keys.online())
        .arg(user.get())
        .cmd("GET")
        .arg(keys.last_seen(user))
        .query_async(conn)
        .await
}

pub fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
