//! The persister's metrics, served on `persister.metrics_listen`: what a batch
//! looks like and what it costs.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone)]
pub struct Metrics {
    /// Commands (sends and read markers) per group commit.
    pub batch_size: Histogram,
    /// One group commit: from BEGIN to COMMIT.
    pub commit_seconds: Histogram,
    /// Publishing the batch's events and waiting for their confirms.
    pub announce_seconds: Histogram,
    pub batches: Counter,
    pub messages_stored: Counter,
    /// SQL statements sent, BEGIN and COMMIT included.
    pub statements: Counter,
}

impl Metrics {
    pub fn new() -> (Self, Registry) {
        let m = Self {
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            commit_seconds: Histogram::new(chat_shared::metrics::seconds_buckets()),
            announce_seconds: Histogram::new(chat_shared::metrics::seconds_buckets()),
            batches: Counter::default(),
            messages_stored: Counter::default(),
            statements: Counter::default(),
        };
        let mut r = Registry::default();
        r.register(
            "persister_batch_size",
            "commands per group commit",
            m.batch_size.clone(),
        );
        r.register(
            "persister_commit_seconds",
            "duration of one group commit",
            m.commit_seconds.clone(),
        );
        r.register(
            "persister_announce_seconds",
            "publishing a batch's events until confirmed",
            m.announce_seconds.clone(),
        );
        r.register("persister_batches", "group commits", m.batches.clone());
        r.register(
            "persister_messages_stored",
            "messages stored and announced",
            m.messages_stored.clone(),
        );
        r.register(
            "persister_statements",
            "SQL statements, BEGIN and COMMIT included",
            m.statements.clone(),
        );
        (m, r)
    }
}
