//! Building and running a persister: consumer -> batcher -> writer ->
//! announcer -> acker, one batch at a time.

use crate::acker;
use crate::announcer::Announcer;
use crate::batcher::{self, Weighed};
use crate::consumer::{Budget, Incoming, PartitionConsumers};
use crate::metrics::Metrics;
use crate::writer::{Outcome, Request, Writer};
use anyhow::Context;
use chat_shared::amqp::{self, ConfirmedPublisher};
use chat_shared::config::Settings;
use chat_shared::schema;
use chat_shared::telemetry::spans;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

impl Weighed for Incoming {
    fn weight(&self) -> usize {
        self.commands.len()
    }
}

pub struct Persister {
    settings: Settings,
    /// Consumes and acks; publishing has a connection of its own, so a
    /// broker that blocks publishers (memory alarm) cannot hold the acks.
    conn: Arc<lapin::Connection>,
    publish_conn: Arc<lapin::Connection>,
    topo: amqp::Topology,
    consumers: PartitionConsumers,
    writer: Writer,
    announcer: Announcer,
    metrics: Metrics,
    metrics_endpoint: chat_shared::metrics::Endpoint,
}

impl Persister {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = schema::connect(&settings.database)
            .await
            .context("connecting to Postgres")?;
        let (conn, topo) = amqp::connect_and_declare(&settings.amqp, "persister")
            .await
            .context("connecting to RabbitMQ and declaring the topology")?;
        let consumers = PartitionConsumers::start(&conn, &topo, settings.persister.prefetch)
            .await
            .context("consuming the persist partitions")?;
        schema::check_bus_settings(&db, &settings.amqp).await?;
        amqp::retire_old_dead_letter_queue(&conn, &topo).await;
        let publish_conn =
            amqp::connect(&settings.amqp, "persister publish", Duration::from_secs(30))
                .await
                .context("connecting to RabbitMQ to publish")?;
        let announcer = Announcer::new(
            ConfirmedPublisher::new(&publish_conn, settings.amqp.confirm_timeout()).await?,
            &topo,
        );
        let (metrics, registry) = Metrics::new();
        let writer = Writer::new(
            db.get_postgres_connection_pool().clone(),
            metrics.statements.clone(),
            metrics.poisoned.clone(),
        );
        let metrics_endpoint =
            chat_shared::metrics::Endpoint::bind(settings.persister.metrics_listen, registry)
                .await
                .with_context(|| format!("binding {}", settings.persister.metrics_listen))?;
        Ok(Self {
            settings,
            conn: Arc::new(conn),
            publish_conn: Arc::new(publish_conn),
            topo,
            consumers,
            writer,
            announcer,
            metrics,
            metrics_endpoint,
        })
    }

    /// Where `GET /metrics` is served.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_endpoint.local_addr()
    }

    /// Runs until `shutdown` resolves. The batch in hand is finished (stored,
    /// announced, acked) before it returns; whatever was not acked is
    /// redelivered by the broker to the next persister.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            settings,
            conn,
            publish_conn,
            topo,
            consumers,
            writer,
            announcer,
            metrics,
            metrics_endpoint,
        } = self;
        let (dead_tx, dead) = watch::channel(false);
        let broker_watch = tokio::spawn(amqp::watch_connections(
            vec![conn.clone(), publish_conn.clone()],
            consumers.channels.clone(),
            vec![(
                Duration::from_millis(settings.persister.broker_dead_ms),
                dead_tx,
            )],
            |_| {},
        ));
        let metrics_server = metrics_endpoint.spawn(dead);
        let queue_watch = tokio::spawn(crate::queues::watch(
            conn.clone(),
            topo,
            metrics.queue_messages.clone(),
        ));
        let p = &settings.persister;
        let limits = batcher::Limits {
            max: p.batch_max,
            linger_from: p.linger_from,
            linger_until: p.linger_until,
            linger: Duration::from_millis(p.linger_ms),
        };
        let (tx, mut rx) =
            mpsc::channel::<Incoming>(usize::from(settings.persister.prefetch).max(1));
        let budget = Budget::new(settings.persister.max_commands_in_memory);
        let feeders = consumers.spawn(tx, metrics.dead_lettered.clone(), budget.clone());
        let (stop_tx, mut stop) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        tracing::info!(?limits, "persister running");

        let mut spill = None;
        loop {
            let arrived = tokio::select! {
                _ = stop.changed() => break,
                first = batcher::first(&mut rx, &mut spill) => first,
            };
            let Some(first) = arrived else { break };
            // Bounded by the linger, and not cancelled: what it takes is
            // stored, announced and acked before shutdown is looked at again.
            let batch = batcher::fill(first, &mut rx, &limits, &mut spill).await;
            let again = batch.iter().filter(|i| i.redelivered).count();
            metrics.redeliveries.inc_by(again as u64);
            let requests: Vec<Request> = batch
                .iter()
                .flat_map(|i| {
                    i.commands.iter().map(|c| Request {
                        command: c,
                        redelivered: i.redelivered,
                    })
                })
                .collect();
            // One span per batch, linked to the send of each message in it
            // and to each AMQP publish that brought them (the messaging
            // conventions for batches); the commit and the fan-out are its
            // children.
            let batch_span = spans::batch(
                "process chat.persist",
                "persist",
                requests.len(),
                requests.iter().map(|request| request.command.trace()),
                batch.iter().map(|incoming| incoming.via.as_ref()),
            );
            let commit_span = tracing::info_span!(
                parent: &batch_span,
                "COMMIT",
                otel.kind = "client",
                db.system.name = "postgresql",
                db.operation.name = "COMMIT",
                db.operation.batch.size = requests.len(),
            );
            let started = Instant::now();
            let stored = store(&writer, &requests, &mut stop)
                .instrument(commit_span)
                .await;
            let Some(outcomes) = stored else {
                break;
            };
            metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.batch_size.observe(requests.len() as f64);
            metrics.commands_in_memory.set(budget.in_use() as i64);
            metrics.batches.inc();
            let stored = outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Deliver { .. }))
                .count();
            metrics.messages_stored.inc_by(stored as u64);
            log_outcomes(&outcomes);
            let started = Instant::now();
            let announce_span = tracing::info_span!(
                parent: &batch_span,
                "send chat.fanout",
                otel.kind = "producer",
                messaging.system = "rabbitmq",
                messaging.operation.type = "send",
                messaging.destination.name = "fanout",
            );
            if !announce(&announcer, &requests, &outcomes, &mut stop)
                .instrument(announce_span)
                .await
            {
                break;
            }
            metrics
                .announce_seconds
                .observe(started.elapsed().as_secs_f64());
            acker::ack(&batch).await;
        }
        metrics_server.abort();
        broker_watch.abort();
        queue_watch.abort();
        for feeder in feeders {
            feeder.abort();
        }
        let _ = conn.close(200, "persister shutdown".into()).await;
        let _ = publish_conn.close(200, "persister shutdown".into()).await;
        tracing::info!("persister stopped");
        Ok(())
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
    // Failures that are not an outage (a conflict that keeps coming back):
    // after a few, the batch is stored one by one and the command that still
    // fails is refused, so one poison command cannot stall every partition.
    let mut conflicts = 0;
    loop {
        let batch = retried.as_deref().unwrap_or(requests);
        let result = match writer.write(batch).await {
            Err(e) if !e.is_transient() || (!e.is_outage() && conflicts >= MAX_CONFLICTS) => {
                tracing::warn!(error = %e, batch.size = batch.len(), "batch failed, storing one by one");
                writer.write_each(batch, conflicts >= MAX_CONFLICTS).await
            }
            Err(e) => {
                if !e.is_outage() {
                    conflicts += 1;
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
) -> bool {
    let mut delay = FIRST_RETRY;
    loop {
        match announcer.announce(requests, outcomes).await {
            Ok(()) => return true,
            Err(e) => tracing::warn!(error = %e, "fan-out not confirmed, retrying"),
        }
        if back_off(&mut delay, stop).await {
            return false;
        }
    }
}

const FIRST_RETRY: Duration = Duration::from_millis(50);

/// Retries of a batch that fails with a conflict before it is split.
const MAX_CONFLICTS: u32 = 5;

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
