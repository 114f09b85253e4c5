//! What every handler and session can reach.

use crate::auth::JwtKeys;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::sender::Sender;
use crate::store::Store;
use chat_shared::amqp::{ConfirmedPublisher, Topology};
use chat_shared::config::Settings;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub keys: JwtKeys,
    pub store: Store,
    pub sender: Sender,
    /// Publishes gateway events (a conversation appeared) to other gateways.
    pub events: ConfirmedPublisher,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub amqp: Arc<lapin::Connection>,
    pub topo: Topology,
    /// This gateway's queue: where replies for its sessions are sent.
    pub queue: Arc<str>,
    /// Flips to true when the gateway shuts down.
    pub shutdown: watch::Receiver<bool>,
}
