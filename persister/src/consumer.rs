//! Consuming the persist partitions. Each partition queue has a single active
//! consumer across all persisters (RabbitMQ's `x-single-active-consumer`), so
//! one process sees one conversation's messages, in publish order. Each
//! partition has its own channel, so delivery tags on a channel arrive here
//! in order and "ack everything up to tag N" is exact.

use chat_shared::amqp::Topology;
use chat_shared::bus::{self, PersistCommand};
use futures_util::StreamExt;
use lapin::Acker;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
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
        })
    }

    /// Feeds every partition into `tx` (bounded: when the writer falls behind,
    /// consumption pauses and the broker holds the rest).
    pub fn spawn(self, tx: mpsc::Sender<Incoming>) -> Vec<tokio::task::JoinHandle<()>> {
        self.consumers
            .into_iter()
            .map(|(partition, consumer)| tokio::spawn(feed(partition, consumer, tx.clone())))
            .collect()
    }
}

async fn feed(partition: u16, mut consumer: Consumer, tx: mpsc::Sender<Incoming>) {
    while let Some(delivery) = consumer.next().await {
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(partition, error = %e, "persist consumer failed");
                continue;
            }
        };
        match bus::decode::<PersistCommand>(&delivery.data) {
            Ok(commands) => {
                let incoming = Incoming {
                    channel: partition,
                    delivery_tag: delivery.delivery_tag,
                    acker: delivery.acker,
                    redelivered: delivery.redelivered,
                    commands,
                };
                if tx.send(incoming).await.is_err() {
                    return; // the writer stopped: shutting down
                }
            }
            Err(e) => {
                // A poison message: retrying cannot help. Dead-letter it.
                tracing::error!(partition, error = %e, "undecodable persist message, dead-lettered");
                let _ = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await;
            }
        }
    }
}
