//! The presence service: consumes the presence queue and sweeps on a timer,
//! turning both into changes for the people concerned.

use crate::online::{Change, Online};
use crate::typing::Typing;
use chat_shared::amqp::Announcer;
use chat_shared::bus::{GatewayEvent, PresenceEvent};
use chat_shared::directory::Directory;
use chat_shared::ids::{ConversationId, UserId};
use chat_shared::presence_state::{Keys, unix_ms};
use chat_shared::protocol::TypingState;
use redis::aio::ConnectionManager;
use tracing::Instrument as _;

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("database: {0}")]
    Db(#[from] sea_orm::sqlx::Error),
    #[error("publish: {0}")]
    Publish(#[from] chat_shared::amqp::PublishError),
}

/// The presence service's metrics (`presence.metrics_listen`).
#[derive(Clone)]
pub struct Metrics {
    pub events: prometheus_client::metrics::counter::Counter,
    pub changes: prometheus_client::metrics::counter::Counter,
    pub typing_relayed: prometheus_client::metrics::counter::Counter,
    pub sweep_seconds: prometheus_client::metrics::histogram::Histogram,
    /// 1 while the last sweep reached Redis.
    pub redis_up: prometheus_client::metrics::gauge::Gauge,
}

impl Metrics {
    pub fn new() -> (Self, prometheus_client::registry::Registry) {
        let m = Self {
            events: Default::default(),
            changes: Default::default(),
            typing_relayed: Default::default(),
            sweep_seconds: prometheus_client::metrics::histogram::Histogram::new(
                chat_shared::metrics::seconds_buckets(),
            ),
            redis_up: Default::default(),
        };
        let mut r = prometheus_client::registry::Registry::default();
        r.register(
            "presence_events",
            "events consumed from the gateways",
            m.events.clone(),
        );
        r.register(
            "presence_changes",
            "online/offline changes announced",
            m.changes.clone(),
        );
        r.register(
            "presence_typing_relayed",
            "typing starts and stops relayed",
            m.typing_relayed.clone(),
        );
        r.register(
            "presence_sweep_seconds",
            "one sweep (expired gateways, due offlines, lapsed typing)",
            m.sweep_seconds.clone(),
        );
        r.register(
            "presence_redis_up",
            "1 while the last sweep reached Redis",
            m.redis_up.clone(),
        );
        (m, r)
    }
}

pub struct Service {
    pub metrics: Metrics,
    pub redis: ConnectionManager,
    pub keys: Keys,
    pub online: Online,
    pub typing: Typing,
    pub directory: Directory,
    pub announcer: Announcer,
}

impl Service {
    /// Handles one event; `via` is the trace context of the publish that
    /// brought it (AMQP headers).
    pub async fn handle(
        &mut self,
        event: PresenceEvent,
        via: Option<&chat_shared::telemetry::propagation::TraceHeaders>,
    ) -> Result<(), PresenceError> {
        self.metrics.events.inc();
        let now = unix_ms();
        match event {
            PresenceEvent::SessionOpened { gateway, user_id } => {
                let change = self
                    .online
                    .opened(&mut self.redis, &gateway, user_id, now)
                    .await?;
                self.announce_changes(change.into_iter().collect()).await
            }
            PresenceEvent::SessionClosed { gateway, user_id } => Ok(self
                .online
                .closed(&mut self.redis, &gateway, user_id, now)
                .await?),
            PresenceEvent::Heartbeat { gateway, user_ids } => {
                let changes = self
                    .online
                    .heartbeat(&mut self.redis, &gateway, &user_ids, now)
                    .await?;
                self.announce_changes(changes).await
            }
            PresenceEvent::Typing {
                conversation_id,
                user_id,
                state,
                trace,
            } => {
                // In the typing frame's trace, when it is traced: the relay
                // carries this span's context to the recipients' gateways.
                let span = chat_shared::telemetry::spans::process(
                    "process chat.presence",
                    "presence",
                    trace.as_ref(),
                    via,
                );
                span.record("conversation.id", conversation_id.get());
                self.on_typing(conversation_id, user_id, state, now)
                    .instrument(span)
                    .await
            }
            PresenceEvent::ContactMade { user_id, peer_id } => {
                self.on_contact(user_id, peer_id).await
            }
        }
    }

    /// `peer` became a contact of `user`: if `user`'s settings now let
    /// `peer` see their presence, `peer`'s sessions are told what it is (so
    /// someone who shows presence to contacts appears online to a person
    /// the moment they write to them).
    async fn on_contact(&mut self, user: UserId, peer: UserId) -> Result<(), PresenceError> {
        let visible = self.directory.presence_visible(peer, &[user]).await?;
        if !visible.contains(&user) {
            return Ok(());
        }
        let (online, seen) =
            chat_shared::presence_state::status_of(&mut self.redis, &self.keys, user).await?;
        let status = if online {
            chat_shared::protocol::PresenceStatus::Online
        } else {
            chat_shared::protocol::PresenceStatus::Offline
        };
        let event = GatewayEvent::Presence {
            user_id: user,
            status,
            last_seen: seen.and_then(chrono_ms),
            recipients: vec![peer],
        };
        Ok(self.announcer.send(&[peer], event).await?)
    }

    async fn on_typing(
        &mut self,
        c: ConversationId,
        u: UserId,
        state: TypingState,
        now: i64,
    ) -> Result<(), PresenceError> {
        let broadcast = match state {
            TypingState::Start => {
                if self
                    .typing
                    .refresh_if_recent(&mut self.redis, c, u, now)
                    .await?
                {
                    false
                } else {
                    let members = self.directory.typing_circle(c, u).await?;
                    if !members.contains(&u) {
                        return Ok(()); // not a member: nothing to relay
                    }
                    self.typing.started(&mut self.redis, c, u, now).await?;
                    return self.relay_typing(c, u, state, members).await;
                }
            }
            TypingState::Stop => self.typing.stopped(&mut self.redis, c, u).await?,
        };
        if broadcast {
            let members = self.directory.typing_circle(c, u).await?;
            self.relay_typing(c, u, state, members).await?;
        }
        Ok(())
    }

    async fn relay_typing(
        &self,
        c: ConversationId,
        u: UserId,
        state: TypingState,
        members: Vec<UserId>,
    ) -> Result<(), PresenceError> {
        self.metrics.typing_relayed.inc();
        let recipients: Vec<UserId> = members.into_iter().filter(|m| *m != u).collect();
        let event = GatewayEvent::Typing {
            conversation_id: c,
            user_id: u,
            state,
            recipients: recipients.clone(),
            trace: chat_shared::telemetry::propagation::current(),
        };
        Ok(self.announcer.send(&recipients, event).await?)
    }

    pub async fn sweep(&mut self) -> Result<(), PresenceError> {
        let started = std::time::Instant::now();
        let result = self.sweep_once().await;
        self.metrics
            .sweep_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn sweep_once(&mut self) -> Result<(), PresenceError> {
        let now = unix_ms();
        let changes = self.online.sweep(&mut self.redis, now).await?;
        self.announce_changes(changes).await?;
        for (c, u, state) in self.typing.sweep(&mut self.redis, now).await? {
            let members = self.directory.typing_circle(c, u).await?;
            self.relay_typing(c, u, state, members).await?;
        }
        Ok(())
    }

    /// Tells each user whose status changed to those online who may see it
    /// (their privacy setting and blocks decide: `Directory::presence_audience`).
    async fn announce_changes(&mut self, changes: Vec<Change>) -> Result<(), PresenceError> {
        for change in changes {
            self.metrics.changes.inc();
            tracing::debug!(user.id = %change.user, status = ?change.status, "presence changed");
            let audience = self.directory.presence_audience(change.user).await?;
            let recipients = self.online_among(&audience).await?;
            let event = GatewayEvent::Presence {
                user_id: change.user,
                status: change.status,
                last_seen: chrono_ms(change.at),
                recipients: recipients.clone(),
            };
            self.announcer.send(&recipients, event).await?;
        }
        Ok(())
    }

    async fn online_among(&mut self, users: &[UserId]) -> Result<Vec<UserId>, PresenceError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("SMISMEMBER");
        cmd.arg(self.keys.online());
        for u in users {
            cmd.arg(u.get());
        }
        let online: Vec<bool> = cmd.query_async(&mut self.redis).await?;
        Ok(users
            .iter()
            .zip(online)
            .filter(|(_, on)| *on)
            .map(|(u, _)| *u)
            .collect())
    }
}

fn chrono_ms(ms: i64) -> Option<chat_shared::time::Timestamp> {
    chat_shared::time::Timestamp::from_timestamp_millis(ms)
}
