//! The unread webhook (version 2): tells the host site when a message stays
//! unread by a recipient who is offline, so it can send a push, an e-mail
//! or a Zalo message. It runs in the presence service, which knows who is
//! online (Redis) and is off the message path; docs/architecture.md says
//! why not elsewhere.
//!
//! 1. [`schedule`]: the persister publishes a `StoredNotice` per commit to
//!    the durable notify queue (only while a webhook is configured). For each
//!    recipient offline at that moment, one `pending` row per (recipient,
//!    conversation) is written to `notifications`, due `notify.delay_ms`
//!    after the message was stored; the delivery is acked after the commit.
//! 2. [`deliver`]: every `notify.sweep_ms`, due rows are claimed (`FOR
//!    UPDATE SKIP LOCKED`, so any number of presence services share the
//!    work). At the first attempt the event is built, or suppressed when the
//!    recipient read the message, came online, left the conversation or
//!    blocked its sender meanwhile; the body is stored, so every retry sends
//!    the same event. A 2xx within `notify.timeout_ms` delivers it;
//!    anything else is retried with exponential back-off for
//!    `notify.retry_for_ms`, then dead-lettered. A notifier that dies while
//!    sending leaves a claim that runs out, and another sends it again: at
//!    least once, the same event id.

mod deliver;
mod event;
mod schedule;
pub mod sign;

pub use deliver::run as deliver;
pub use schedule::run as schedule;

use chat_shared::config::NotifySettings;
use chat_shared::presence_state::Keys;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use redis::aio::ConnectionManager;
use sea_orm::sqlx::PgPool;

/// Why an event was not sent.
pub const SUPPRESSIONS: [&str; 4] = ["read", "online", "left", "blocked"];

pub struct Notifier {
    pub db: PgPool,
    pub redis: ConnectionManager,
    pub keys: Keys,
    pub settings: NotifySettings,
    pub http: reqwest::Client,
    pub metrics: NotifyMetrics,
}

impl Notifier {
    pub fn new(
        db: PgPool,
        redis: ConnectionManager,
        keys: Keys,
        settings: NotifySettings,
        metrics: NotifyMetrics,
    ) -> anyhow::Result<Self> {
        // reqwest is built with rustls and no crypto provider of its own:
        // this process uses ring's (a second install is a no-op error).
        // Deprecated for lacking post-quantum key exchange; aws-lc-rs has it
        // but needs a C toolchain and minutes of build on 2 cores. Issue 23
        // (TLS to every backend) chooses for the whole workspace.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .user_agent("mapmo-chat-webhook")
            .build()?;
        Ok(Self {
            db,
            redis,
            keys,
            settings,
            http,
            metrics,
        })
    }
}

/// The notifier's metrics (`notify_*` on the presence service's endpoint).
#[derive(Clone)]
pub struct NotifyMetrics {
    pub scheduled: Counter,
    pub sent: Counter,
    /// Attempts that failed and will be tried again.
    pub retried: Counter,
    /// Attempts that failed (non-2xx, timeout, connection refused).
    pub failed: Counter,
    pub dead_lettered: Counter,
    pub suppressed: Family<[(&'static str, &'static str); 1], Counter>,
    /// From an event's due time to its 2xx.
    pub delivery_seconds: Histogram,
}

impl NotifyMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            scheduled: Counter::default(),
            sent: Counter::default(),
            retried: Counter::default(),
            failed: Counter::default(),
            dead_lettered: Counter::default(),
            suppressed: Family::default(),
            delivery_seconds: Histogram::new(chat_shared::metrics::seconds_buckets()),
        };
        let counters = [
            (
                "notify_scheduled",
                "unread notifications scheduled (a recipient offline when a message was stored)",
                &m.scheduled,
            ),
            (
                "notify_sent",
                "webhook events delivered (a 2xx answer)",
                &m.sent,
            ),
            (
                "notify_retried",
                "webhook attempts that failed and will be tried again",
                &m.retried,
            ),
            (
                "notify_failed",
                "webhook attempts that failed (non-2xx, timeout, unreachable)",
                &m.failed,
            ),
            (
                "notify_dead_lettered",
                "webhook events given up after notify.retry_for_ms",
                &m.dead_lettered,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "notify_suppressed",
            "unread notifications not sent, by reason (read, online, left, blocked)",
            m.suppressed.clone(),
        );
        registry.register(
            "notify_delivery_seconds",
            "from an unread event's due time to its delivery",
            m.delivery_seconds.clone(),
        );
        for reason in SUPPRESSIONS {
            let _ = m.suppressed.get_or_create(&[("reason", reason)]);
        }
        m
    }
}
