//! Declaring the topology (idempotent, so any service can start first):
//! the persist path, the presence queue, the fan-out exchange, and each
//! gateway's own queue.

use super::topology::Topology;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

/// Declares the durable exchange `name` of `kind` (idempotent).
async fn durable_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(name.into(), kind, durable(), FieldTable::default())
        .await
}

fn durable() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// `args` with a bound of `max_length` messages, past which a queue drops
/// its oldest (`x-overflow: drop-head`).
pub fn bounded_drop_head(mut args: FieldTable, max_length: u32) -> FieldTable {
    args.insert("x-max-length".into(), AMQPValue::LongUInt(max_length));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("drop-head".into()),
    );
    args
}

/// Most messages the dead-letter queue keeps.
pub const DEAD_LETTERS_MAX: u32 = 100_000;

/// Declares the persist path (idempotent; gateways and persisters both call it).
pub async fn declare_persist_path(channel: &Channel, topo: &Topology) -> Result<(), lapin::Error> {
    durable_exchange(channel, &topo.persist_exchange(), ExchangeKind::Direct).await?;
    durable_exchange(channel, &topo.dead_letters(), ExchangeKind::Fanout).await?;
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    // Bounded: past DEAD_LETTERS_MAX the oldest are dropped (each was
    // logged with its cause when it was dead-lettered, and
    // persister_queue_messages shows the queue growing).
    let dead_args = bounded_drop_head(topo.shared_queue_args(), DEAD_LETTERS_MAX);
    channel
        .queue_declare(topo.dead_letter_queue().into(), durable_queue, dead_args)
        .await?;
    channel
        .queue_bind(
            topo.dead_letter_queue().into(),
            topo.dead_letters().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for partition in 0..topo.partitions {
        let mut args = topo.shared_queue_args();
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(topo.dead_letters().into()),
        );
        let queue = topo.persist_queue(partition);
        channel
            .queue_declare(queue.clone().into(), durable_queue, args)
            .await?;
        channel
            .queue_bind(
                queue.into(),
                topo.persist_exchange().into(),
                partition.to_string().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Declares the presence queue (idempotent): gateways publish session and
/// typing events to it; one presence service at a time consumes it (single
/// active consumer keeps the events of a user in order). Bounded: if no
/// presence service runs, the oldest events are dropped, and the next
/// heartbeats rebuild the state.
pub async fn declare_presence_path(channel: &Channel, topo: &Topology) -> Result<(), lapin::Error> {
    let mut args = bounded_drop_head(topo.shared_queue_args(), 100_000);
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(topo.presence_queue().into(), options, args)
        .await
        .map(|_| ())
}

/// Declares the notify queue (idempotent): the persister publishes a
/// `StoredNotice` per commit to it while a webhook is configured; every
/// presence service consumes it. Durable, and bounded like the presence
/// queue: with no notifier for long, the oldest notices go (those users are
/// not notified; nothing else is lost).
pub async fn declare_notify_queue(channel: &Channel, topo: &Topology) -> Result<(), lapin::Error> {
    let args = bounded_drop_head(topo.shared_queue_args(), 1_000_000);
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(topo.notify_queue().into(), options, args)
        .await
        .map(|_| ())
}

/// Declares the fan-out exchange, routed by shard, and the broadcast
/// exchange that reaches every gateway (idempotent).
pub async fn declare_fanout(channel: &Channel, topo: &Topology) -> Result<(), lapin::Error> {
    durable_exchange(channel, &topo.fanout_exchange(), ExchangeKind::Direct).await?;
    durable_exchange(channel, &topo.broadcast_exchange(), ExchangeKind::Fanout).await
}

/// Most dropped messages waiting to be counted (see [`declare_gateway_queue`]).
const GATEWAY_DROPPED_MAX: u32 = 10_000;

/// The queue that receives what the gateway queue `queue` drops.
pub fn gateway_dropped_queue(queue: &str) -> String {
    format!("{queue}.dropped")
}

/// Declares a gateway's own queue, exclusive (it dies with the gateway);
/// `max_length` bounds it (oldest dropped first: a client that misses a
/// frame fills the gap from history). What it drops is dead-lettered into a
/// small queue of its own, [`gateway_dropped_queue`], which the gateway
/// reads to count and log every dropped event (RabbitMQ counts none).
pub async fn declare_gateway_queue(
    channel: &Channel,
    name: &str,
    max_length: u32,
) -> Result<(), lapin::Error> {
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let dropped = gateway_dropped_queue(name);
    let args = bounded_drop_head(FieldTable::default(), GATEWAY_DROPPED_MAX);
    channel
        .queue_declare(dropped.as_str().into(), options, args)
        .await?;
    let mut args = bounded_drop_head(FieldTable::default(), max_length);
    // The default exchange routes by queue name.
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dropped.into()),
    );
    channel
        .queue_declare(name.into(), options, args)
        .await
        .map(|_| ())
}
