//! Consuming the persist partitions. Each partition queue has a single active
//! consumer across all persisters (RabbitMQ's `x-single-active-consumer`), so
//! one process sees one conversation's messages, in publish order. Each
//! partition has its own channel, so delivery tags on a channel arrive here
//! in order and "ack everything up to tag N" is exact.

use chat_shared::amqp::{self, Inbound, Outgoing, Topology};
use chat_shared::bus::{PersistCommand, Undecodable};
use chat_shared::telemetry::propagation::TraceHeaders;
use lapin::Acker;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// One AMQP delivery, decoded.
pub struct Incoming {
    /// Which partition channel it came on (acks are per channel).
    pub channel: u16,
    pub delivery_tag: u64,
    pub acker: Acker,
    /// Set when the broker delivers it again (a persister died holding it).
    pub redelivered: bool,
    pub commands: Vec<PersistCommand>,
    /// The trace context of the publish that brought it (AMQP headers).
    pub via: Option<TraceHeaders>,
    /// Its share of `persister.max_inflight_bytes` (its body's length),
    /// given back when it is dropped (after its ack).
    pub _budget: OwnedSemaphorePermit,
}

pub struct PartitionConsumers {
    pub channels: Vec<Channel>,
    consumers: Vec<(u16, Inbound)>,
    dead_letters: String,
}

impl PartitionConsumers {
    /// Consumes every partition, each on a channel of its own with a
    /// prefetch of `per_channel` deliveries
    /// ([`chat_shared::config::PersisterSettings::prefetch_per_channel`]).
    pub async fn start(
        conn: &Connection,
        topo: &Topology,
        per_channel: u16,
    ) -> Result<Self, lapin::Error> {
        let mut channels = Vec::new();
        let mut consumers = Vec::new();
        for partition in 0..topo.partitions {
            let channel = conn.create_channel().await?;
            channel
                .basic_qos(per_channel, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    topo.persist_queue(partition).into(),
                    format!("persister-{partition}").into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            channels.push(channel);
            let name = topo.persist_queue(partition);
            consumers.push((partition, Inbound::new(consumer, name)));
        }
        Ok(Self {
            channels,
            consumers,
            dead_letters: topo.dead_letters(),
        })
    }

    /// Feeds every partition into `tx` (bounded: when the writer falls behind,
    /// consumption pauses and the broker holds the rest).
    /// Undecodable commands are published to the dead-letter exchange on
    /// `dead_letter_channel` (of a connection that consumes nothing, so that
    /// a broker alarm blocking it cannot hold the acks) and counted in
    /// `dead_lettered`; `budget` holds a permit per byte in memory.
    pub fn spawn(
        self,
        tx: mpsc::Sender<Incoming>,
        dead_letter_channel: Channel,
        dead_lettered: Counter,
        budget: Budget,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        // The consuming channels stay with the broker watch (`channels`).
        let Self {
            channels: _,
            consumers,
            dead_letters,
        } = self;
        consumers
            .into_iter()
            .map(|(partition, consumer)| {
                tokio::spawn(feed(
                    partition,
                    dead_letter_channel.clone(),
                    dead_letters.clone(),
                    dead_lettered.clone(),
                    budget.clone(),
                    consumer,
                    tx.clone(),
                ))
            })
            .collect()
    }
}

/// Where a command no persister can read goes: the dead-letter exchange,
/// with why. Best effort (unconfirmed); the error log names it either way.
async fn dead_letter(channel: &Channel, exchange: &str, partition: u16, bad: &Undecodable) {
    tracing::error!(partition, error = %bad.error, command = %bad.raw, "undecodable persist command, dead-lettered");
    let reason = format!("undecodable: {}", bad.error);
    let dead = Outgoing {
        exchange,
        routing_key: "",
        cc: &[],
        payload: bad.raw.as_bytes(),
        persistent: true,
        mandatory: false,
        reason: Some(&reason),
    };
    let published = amqp::publish_unconfirmed(channel, dead).await;
    if let Err(e) = published {
        tracing::error!(partition, error = %e, "could not dead-letter the command");
    }
}

/// `persister.max_inflight_bytes`: a permit per byte of the deliveries held
/// between consuming and acking.
#[derive(Clone)]
pub struct Budget {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Budget {
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Bytes held now.
    pub fn in_use(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// Waits for room for `bytes` (a message larger than the whole budget
    /// waits for all of it); `None` once closed.
    async fn take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let wanted = u32::try_from(bytes.clamp(1, self.max)).unwrap_or(u32::MAX);
        self.permits.clone().acquire_many_owned(wanted).await.ok()
    }
}

async fn feed(
    partition: u16,
    dead_letter_channel: Channel,
    dead_letters: String,
    dead_lettered: Counter,
    budget: Budget,
    mut inbound: Inbound,
    tx: mpsc::Sender<Incoming>,
) {
    while let Some(delivery) = inbound.next::<PersistCommand>().await {
        match delivery {
            Ok(decoded) => {
                for bad in &decoded.undecodable {
                    dead_letter(&dead_letter_channel, &dead_letters, partition, bad).await;
                    dead_lettered.inc();
                }
                // Waits while the bytes in memory are at the bound.
                let Some(permit) = budget.take(decoded.bytes).await else {
                    return; // closed: shutting down
                };
                let incoming = Incoming {
                    channel: partition,
                    delivery_tag: decoded.delivery_tag,
                    acker: decoded.acker,
                    redelivered: decoded.redelivered,
                    commands: decoded.events,
                    via: decoded.via,
                    _budget: permit,
                };
                if tx.send(incoming).await.is_err() {
                    return; // the writer stopped: shutting down
                }
            }
            Err(bad) => {
                // A poison message: retrying cannot help. Dead-letter it.
                dead_lettered.inc();
                tracing::error!(partition, error = %bad.error, "undecodable persist message, dead-lettered");
                let _ = bad
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await;
            }
        }
    }
}
