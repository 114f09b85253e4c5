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
    /// Commands sent to the dead-letter exchange (undecodable).
    pub dead_lettered: Counter,
    /// Sends refused because they could not be stored (poison), and
    /// batches retried after a conflict.
    pub poisoned: Counter,
    /// Bytes of deliveries held between consuming and acking (at each batch).
    pub bytes_in_memory: prometheus_client::metrics::gauge::Gauge,
    /// Deliveries the broker gave again (a persister died holding them).
    pub redeliveries: Counter,
    /// Messages in each persist partition and the dead-letter queue.
    pub queue_messages: crate::queues::QueueGauges,
    /// Failed group commits, by failure and SQLSTATE.
    pub database_errors: crate::writer::DatabaseErrors,
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
            dead_lettered: Counter::default(),
            poisoned: Counter::default(),
            queue_messages: Default::default(),
            redeliveries: Counter::default(),
            bytes_in_memory: Default::default(),
            database_errors: Default::default(),
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
        r.register(
            "persister_dead_lettered",
            "persist commands sent to the dead-letter exchange (undecodable)",
            m.dead_lettered.clone(),
        );
        r.register(
            "persister_commands_refused",
            "commands that could not be stored even alone (refused to their sender or dropped)",
            m.poisoned.clone(),
        );
        r.register(
            "persister_bytes_in_memory",
            "bytes of deliveries held between consuming and acking (persister.max_inflight_bytes bounds it)",
            m.bytes_in_memory.clone(),
        );
        r.register(
            "persister_redeliveries",
            "AMQP deliveries received again after a persister died holding them",
            m.redeliveries.clone(),
        );
        r.register(
            "persister_queue_messages",
            "messages in each persist partition queue and in the dead-letter queue",
            m.queue_messages.clone(),
        );
        r.register(
            "persister_database_errors",
            "failed group commits by failure (outage, conflict, slow, broken) and SQLSTATE",
            m.database_errors.clone(),
        );
        (m, r)
    }
}
