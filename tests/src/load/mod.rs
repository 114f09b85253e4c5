//! The load generator behind `chat-load`: simulated users that speak only the
//! public contract (dev login, conversations, WebSocket frames, history),
//! sending at an open-loop rate, measuring ack and delivery latency, and
//! checking at the end that nothing was lost or duplicated.
//!
//! - [`setup`]: tokens, conversations, connections;
//! - [`run`]: the open-loop sender and the per-connection readers;
//! - [`verify`]: exactly-once delivery and gapless history;
//! - [`report`]: histograms, the table and the JSON line;
//! - [`idle`]: hold N idle connections and measure the gateway's memory.

pub mod idle;
pub mod report;
pub mod run;
pub mod setup;
pub mod verify;

/// What one run does.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Base HTTP URL(s): the load balancer, or a list of gateways (users are
    /// spread over them round-robin).
    pub urls: Vec<String>,
    pub users: usize,
    /// 2 for direct conversations, more for groups.
    pub group_size: usize,
    /// Messages per second offered, whatever the server does.
    pub rate: f64,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    /// How long to wait for stragglers after the last send.
    pub drain_secs: f64,
    /// Skip the history check (it reads every message back).
    pub skip_history: bool,
}
