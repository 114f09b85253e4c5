//! The persister's pipeline, one batch at a time: the batcher takes what
//! the consumers delivered, the writer stores it (retried until it
//! passes), the announcer tells the gateways (retried until confirmed);
//! only then comes the next batch. The acker acks each batch's deliveries,
//! in order, once its persistent publishes (contacts made, stored notices
//! for the unread webhook) are confirmed too: those are written to disk by
//! the broker, and the next batch does not wait for them.

use crate::acker;
use crate::announcer::Announcer;
use crate::consumer::{Budget, Incoming};
use crate::metrics::Metrics;
use crate::writer::{Outcome, Request, Writer};
use chat_shared::batch::{self, Weighed};
use chat_shared::telemetry::spans;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

impl Weighed for Incoming {
    fn weight(&self) -> usize {
        self.commands.len()
    }
}

pub struct Pipeline {
    pub writer: Writer,
    pub announcer: Announcer,
    pub metrics: Metrics,
    pub budget: Budget,
    pub limits: batch::Limits,
}

impl Pipeline {
    /// Handles batches until `stop` turns true or the consumers end. The
    /// batch in hand is finished (stored, announced, acked) first.
    pub async fn run(&self, mut rx: mpsc::Receiver<Incoming>, mut stop: watch::Receiver<bool>) {
        tracing::info!(limits = ?self.limits, "persister running");
        let (acks, announced) = mpsc::channel(ACKS_WAITING);
        let acker = tokio::spawn(acker::run(announced));
        let mut spill = None;
        loop {
            let arrived = tokio::select! {
                _ = stop.changed() => break,
                first = batch::first(&mut rx, &mut spill) => first,
            };
            let Some(first) = arrived else { break };
            // Bounded by the linger, and not cancelled: what it takes is
            // stored, announced and acked before shutdown is looked at again.
            let batch = batch::fill(first, &mut rx, &self.limits, &mut spill).await;
            let Some(durable) = self.handle(&batch, &mut stop).await else {
                break;
            };
            if acks
                .send(acker::Announced { batch, durable })
                .await
                .is_err()
            {
                break;
            }
        }
        // The batches announced are acked before the persister stops.
        drop(acks);
        let _ = acker.await;
    }

    /// Stores and announces one batch; what its ack still waits for,
    /// or `None` if shutdown came first.
    async fn handle(
        &self,
        batch: &[Incoming],
        stop: &mut watch::Receiver<bool>,
    ) -> Option<crate::announcer::Durable> {
        let again = batch.iter().filter(|i| i.redelivered).count();
        self.metrics.redeliveries.inc_by(again as u64);
        let requests: Vec<Request> = batch
            .iter()
            .flat_map(|i| {
                i.commands.iter().map(|c| Request {
                    command: c,
                    redelivered: i.redelivered,
                })
            })
            .collect();
        // One span per batch, linked to the send of each message in it and
        // to each AMQP publish that brought them (the messaging conventions
        // for batches); the commit and the fan-out are its children.
        let batch_span = spans::batch(
            "process chat.persist",
            "persist",
            requests.len(),
            requests.iter().map(|request| request.command.trace()),
            batch.iter().map(|incoming| incoming.via.as_ref()),
        );
        let outcomes = self.commit(&requests, &batch_span, stop).await?;
        let started = Instant::now();
        let announce_span = tracing::info_span!(
            parent: &batch_span,
            "send chat.fanout",
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            messaging.operation.type = "send",
            messaging.destination.name = "fanout",
        );
        let durable = announce(&self.announcer, &requests, &outcomes, stop)
            .instrument(announce_span)
            .await?;
        self.metrics
            .announce_seconds
            .observe(started.elapsed().as_secs_f64());
        Some(durable)
    }

    /// Stores `requests` in one transaction (retried until it passes), and
    /// counts what was stored; `None` if shutdown came first.
    async fn commit(
        &self,
        requests: &[Request<'_>],
        batch_span: &tracing::Span,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Vec<Outcome>> {
        let commit_span = tracing::info_span!(
            parent: batch_span,
            "COMMIT",
            otel.kind = "client",
            db.system.name = "postgresql",
            db.operation.name = "COMMIT",
            db.operation.batch.size = requests.len(),
        );
        let started = Instant::now();
        let outcomes = store(&self.writer, requests, stop)
            .instrument(commit_span)
            .await?;
        let metrics = &self.metrics;
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.batch_size.observe(requests.len() as f64);
        metrics.commands_in_memory.set(self.budget.in_use() as i64);
        metrics.batches.inc();
        let stored = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Deliver { .. }))
            .count();
        metrics.messages_stored.inc_by(stored as u64);
        log_outcomes(&outcomes);
        Some(outcomes)
    }
}

/// Stores a batch, retrying failures until they pass (the deliveries stay
/// unacked meanwhile, and the bounded prefetch stops more from coming). A
/// batch that fails for a reason retrying cannot fix is stored one by one.
/// `None` if shutdown came first.
async fn store(
    writer: &Writer,
    requests: &[Request<'_>],
    stop: &mut watch::Receiver<bool>,
) -> Option<Vec<Outcome>> {
    // After a failed attempt the commit may have happened all the same (the
    // connection broke before its answer): retries treat every command as
    // redelivered, so a message found stored is fanned out again, not only
    // acked.
    let mut retried: Option<Vec<Request<'_>>> = None;
    let mut delay = FIRST_RETRY;
    // Bounded failures (a conflict or a timeout that keeps coming back):
    // after a few, the batch is stored one by one and the command that still
    // fails is refused `unavailable`, so one command cannot stall every
    // partition. An outage is waited out, however long (writer::Failure).
    let mut bounded = 0;
    loop {
        let batch = retried.as_deref().unwrap_or(requests);
        let result = match writer.write(batch).await {
            Err(e)
                if !e.failure().is_retried()
                    || (e.failure().is_bounded() && bounded >= MAX_BOUNDED_TRIES) =>
            {
                tracing::warn!(error = %e, failure = e.failure().as_str(), batch.size = batch.len(), "batch failed, storing one by one");
                writer.write_each(batch, bounded >= MAX_BOUNDED_TRIES).await
            }
            Err(e) => {
                if e.failure().is_bounded() {
                    bounded += 1;
                }
                Err(e)
            }
            other => other,
        };
        match result {
            Ok(outcomes) => return Some(outcomes),
            Err(e) => {
                tracing::warn!(error = %e, batch.size = batch.len(), "batch not stored, retrying")
            }
        }
        retried.get_or_insert_with(|| {
            requests
                .iter()
                .map(|r| Request {
                    command: r.command,
                    redelivered: true,
                })
                .collect()
        });
        if back_off(&mut delay, stop).await {
            return None;
        }
    }
}

/// Announces a committed batch, retrying until the broker confirms.
async fn announce(
    announcer: &Announcer,
    requests: &[Request<'_>],
    outcomes: &[Outcome],
    stop: &mut watch::Receiver<bool>,
) -> Option<crate::announcer::Durable> {
    let mut delay = FIRST_RETRY;
    loop {
        match announcer.announce(requests, outcomes).await {
            Ok(durable) => return Some(durable),
            Err(e) => tracing::warn!(error = %e, "fan-out not confirmed, retrying"),
        }
        if back_off(&mut delay, stop).await {
            return None;
        }
    }
}

/// Announced batches whose acks may wait for their persistent publishes'
/// confirms at once (then the pipeline waits: bounded). Stored notices are
/// gathered for `notices::GATHER_FOR` (100 ms), during which a busy
/// persister announces some 15-30 batches: with room for only 16 the
/// pipeline stalled behind the acker, which added 4-8 ms to the 99th
/// percentile of delivery (docs/benchmarks.md). The deliveries held are
/// bounded by `persister.max_commands_in_memory` anyway.
const ACKS_WAITING: usize = 1024;

const FIRST_RETRY: Duration = Duration::from_millis(50);

/// Tries of a batch that fails with a conflict or a timeout before it is
/// split (with the back-off, some 1.5 s).
const MAX_BOUNDED_TRIES: u32 = 5;

/// Waits `delay` (then doubles it, up to 5 s); `true` if shutdown came first.
async fn back_off(delay: &mut Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(*delay) => *stop.borrow(),
        _ = stop.changed() => true,
    };
    *delay = (*delay * 2).min(Duration::from_secs(5));
    stopped
}

fn log_outcomes(outcomes: &[Outcome]) {
    for outcome in outcomes {
        if let Outcome::Deliver {
            message, members, ..
        } = outcome
        {
            tracing::debug!(
                message.id = message.id.0,
                conversation.id = %message.conversation_id,
                message.seq = message.seq,
                user.id = %message.sender_id,
                members = members.len(),
                "message stored"
            );
        }
    }
    tracing::debug!(batch.size = outcomes.len(), "batch committed");
}
