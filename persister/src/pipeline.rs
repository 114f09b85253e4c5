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
        metrics.bytes_in_memory.set(self.budget.in_use() as i64);
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
    // fails alone is refused (writer::Failure::refusal), so one command
    // cannot stall every partition. An outage is waited out, however long (writer::Failure).
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
/// bounded by `persister.max_inflight_bytes` anyway.
const ACKS_WAITING: usize = 1024;

const FIRST_RETRY: Duration = Duration::from_millis(50);

/// The longest wait between two tries of a batch (to store or to announce
/// it): once Postgres or RabbitMQ is back, the batch goes through within
/// this. It was 5 s: the tries of a 10 s broker restart then fell at 0.05,
/// 0.15, 0.35, 0.75, 1.55, 3.15, 6.35 and 11.35 s after the first failure,
/// so acks resumed 11.4 s after the stop however early the broker was back
/// (docs/reliability.md, "The 11.4 s of a broker restart"). A try while
/// the broker or the database is away fails at once and costs nothing.
const LAST_RETRY: Duration = Duration::from_millis(500);

/// Tries of a batch that fails with a conflict or a timeout before it is
/// split (with the back-off, some 1.5 s).
const MAX_BOUNDED_TRIES: u32 = 5;

/// The wait after `delay`: doubled, up to [`LAST_RETRY`].
fn next_delay(delay: Duration) -> Duration {
    (delay * 2).min(LAST_RETRY)
}

/// Waits `delay` (then moves it on, [`next_delay`]); `true` if shutdown
/// came first.
async fn back_off(delay: &mut Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(*delay) => *stop.borrow(),
        _ = stop.changed() => true,
    };
    *delay = next_delay(*delay);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Tries from the first failure, for as long as an outage lasts.
    fn tries_within(outage: Duration) -> Vec<Duration> {
        let (mut at, mut delay, mut tries) = (Duration::ZERO, FIRST_RETRY, Vec::new());
        while at <= outage {
            at += delay;
            delay = next_delay(delay);
            tries.push(at);
        }
        tries
    }

    #[test]
    fn a_batch_goes_through_within_half_a_second_of_the_outage_ending() {
        for outage_ms in [100, 1_000, 7_800, 10_000, 30_000, 120_000] {
            let outage = Duration::from_millis(outage_ms);
            let first_after = tries_within(outage).last().copied().unwrap_or_default();
            assert!(
                first_after - outage <= LAST_RETRY,
                "an outage of {outage:?}: the first try after it at {first_after:?}"
            );
        }
    }

    #[test]
    fn the_first_tries_are_quick_and_the_rest_are_at_most_half_a_second_apart() {
        let tries = tries_within(Duration::from_secs(3));
        let gaps: Vec<u64> = std::iter::once(tries[0])
            .chain(tries.windows(2).map(|w| w[1] - w[0]))
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(gaps[..6], [50, 100, 200, 400, 500, 500]);
    }
}
