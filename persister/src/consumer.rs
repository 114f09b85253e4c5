//! Consuming the persist partitions. Each partition queue has a single active
//! consumer across all persisters (RabbitMQ's `x-single-active-consumer`), so
//! one process sees one conversation's messages, in publish order. Each
//! partition has its own channel, so delivery tags on a channel arrive here
//! in order and "ack everything up to tag N" is exact.

use chat_shared::amqp::Topology;
use chat_shared::bus::{self, PersistCommand, Undecodable};
use futures_util::StreamExt;
use lapin::Acker;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

/// One AMQP delivery, decoded.
pub struct Incoming {
    /// Which partition channel it came on (acks are per channel).
    pub channel: u16,
    pub delivery_tag: u64,
    pub acker: Acker,
    /// Set when the broker delivers it again (a persister died holding it).
    pub redelivered: bool,
    pub commands: Vec<PersistCommand>,
}

pub struct PartitionConsumers {
    pub channels: Vec<Channel>,
    consumers: Vec<(u16, Consumer)>,
    dead_letters: String,
}

impl PartitionConsumers {
    pub async fn start(
        conn: &Connection,
        topo: &Topology,
        prefetch: u16,
    ) -> Result<Self, lapin::Error> {
        let per_channel = (prefetch / topo.partitions.max(1)).max(1);
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
            consumers.push((partition, consumer));
        }
        Ok(Self {
            channels,
            consumers,
            dead_letters: topo.dead_letters(),
        })
    }

    /// Feeds every partition into `tx` (bounded: when the writer falls behind,
    /// consumption pauses and the broker holds the rest).
    /// Undecodable commands are counted in `dead_lettered`.
    pub fn spawn(
        self,
        tx: mpsc::Sender<Incoming>,
        dead_lettered: Counter,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let Self {
            channels,
            consumers,
            dead_letters,
        } = self;
        consumers
            .into_iter()
            .zip(channels)
            .map(|((partition, consumer), channel)| {
                tokio::spawn(feed(
                    partition,
                    channel,
                    dead_letters.clone(),
                    dead_lettered.clone(),
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
    let mut headers = FieldTable::default();
    headers.insert(
        "x-chat-reason".into(),
        AMQPValue::LongString(format!("undecodable: {}", bad.error).into()),
    );
    let properties = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2);
    let published = channel
        .basic_publish(
            exchange.into(),
            "".into(),
            BasicPublishOptions::default(),
            bad.raw.as_bytes(),
            properties,
        )
        .await;
    if let Err(e) = published {
        tracing::error!(partition, error = %e, "could not dead-letter the command");
    }
}

async fn feed(
    partition: u16,
    channel: Channel,
    dead_letters: String,
    dead_lettered: Counter,
    mut consumer: Consumer,
    tx: mpsc::Sender<Incoming>,
) {
    while let Some(delivery) = consumer.next().await {
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(partition, error = %e, "persist consumer failed");
                continue;
            }
        };
        match bus::decode_each::<PersistCommand>(&delivery.data) {
            Ok(decoded) => {
                for bad in &decoded.undecodable {
                    dead_letter(&channel, &dead_letters, partition, bad).await;
                    dead_lettered.inc();
                }
                let incoming = Incoming {
                    channel: partition,
                    delivery_tag: delivery.delivery_tag,
                    acker: delivery.acker,
                    redelivered: delivery.redelivered,
                    commands: decoded.events,
                };
                if tx.send(incoming).await.is_err() {
                    return; // the writer stopped: shutting down
                }
            }
            Err(e) => {
                // A poison message: retrying cannot help. Dead-letter it.
                dead_lettered.inc();
                tracing::error!(partition, error = %e, "undecodable persist message, dead-lettered");
                let _ = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await;
            }
        }
    }
}
