//! What every handler and session can reach.

use crate::auth::JwtKeys;
use crate::hub::Hub;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::presence_feed::PresenceFeed;
use crate::profiles::Profiles;
use crate::store::Store;
use crate::ws::context::SessionContext;
use chat_shared::amqp::Announcer;
use chat_shared::config::Settings;
use chat_shared::directory::Directory;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub keys: JwtKeys,
    /// The host site's server API keys (version 2).
    pub server_keys: Arc<crate::http::server::keys::ServerKeys>,
    pub store: Store,
    /// Who shares a conversation with whom.
    pub directory: Directory,
    /// What every WebSocket session is given (a narrow part of this).
    pub sessions: Arc<SessionContext>,
    /// Publishes gateway events (a conversation appeared) to other gateways.
    pub events: Announcer,
    /// People's names, from the tokens used here.
    pub profiles: Arc<Profiles>,
    pub hub: Arc<Hub>,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    pub amqp: Arc<lapin::Connection>,
    /// The channels the gateway cannot work without (its queue's, its
    /// publishers'): one the broker closed is as bad as no connection.
    pub amqp_channels: Arc<[lapin::Channel]>,
    /// Session and typing events to the presence service.
    pub presence: PresenceFeed,
    /// Where presence is read from (`GET /api/presence`).
    pub redis: redis::aio::ConnectionManager,
    pub presence_keys: chat_shared::presence_state::Keys,
    /// This gateway's queue: where replies for its sessions are sent.
    pub queue: Arc<str>,
    /// Flips to true when the gateway shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// True while the broker has been unreachable for `gateway.broker_lost_ms`.
    pub broker_lost: watch::Receiver<bool>,
    /// True while it has been unreachable for `gateway.broker_dead_ms`.
    pub broker_dead: watch::Receiver<bool>,
}
