//! What a session needs of its gateway, and nothing more: the publisher,
//! the membership and block gates, the presence feed, the shared limits, the
//! settings, and the two signals that end every session (shutdown, a lost
//! broker). Unit tests build one from channels and fakes.

use super::blocks::Blocks;
use super::frames::Rules;
use super::members::Memberships;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::presence_feed::PresenceFeed;
use crate::sender::Sender;
use chat_shared::config::GatewaySettings;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub struct SessionContext {
    pub rules: Rules,
    pub timing: Timing,
    pub sender: Sender,
    /// The membership gate every session of the gateway shares.
    pub members: Arc<Memberships>,
    /// The block gate of sends every session of the gateway shares.
    pub blocks: Arc<Blocks>,
    pub presence: PresenceFeed,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    /// This gateway's queue: where the persister answers its sessions.
    pub reply_to: Arc<str>,
    /// Flips to true when the gateway ends its sessions still open (once
    /// it has stopped accepting, and after the drain).
    pub shutdown: watch::Receiver<bool>,
    /// True while the broker has been unreachable for `gateway.broker_lost_ms`.
    pub broker_lost: watch::Receiver<bool>,
}

/// The session's clocks (`[gateway]`).
#[derive(Debug, Clone)]
pub struct Timing {
    pub heartbeat: Duration,
    pub heartbeat_timeout: Duration,
    pub write_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl Timing {
    pub fn from_settings(gateway: &GatewaySettings) -> Self {
        Self {
            heartbeat: gateway.heartbeat,
            heartbeat_timeout: gateway.heartbeat_timeout,
            write_timeout: gateway.write_timeout,
            shutdown_grace: gateway.shutdown_grace,
        }
    }
}
