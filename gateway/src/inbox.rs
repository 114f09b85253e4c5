//! The gateway's own queue: declared exclusive (it dies with the gateway),
//! bounded, and consumed here. Everything the gateway must deliver arrives on
//! it: stored messages (fan-out exchange, by shard key), replies meant for one
//! session (default exchange, by queue name), conversations that appeared.

use crate::hub::Hub;
use crate::metrics::Metrics;
use chat_shared::amqp::{self, Inbound};
use chat_shared::bus::GatewayEvent;
use lapin::Channel;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde::de::IgnoredAny;
use std::sync::Arc;
use std::time::Duration;

/// Most dropped messages waiting to be counted (see [`declare_queue`]).
const DROPPED_MAX: u32 = 10_000;

/// How often a summary of the drops is logged, at most.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// The queue that receives what the gateway queue drops.
pub fn dropped_queue(queue: &str) -> String {
    format!("{queue}.dropped")
}

/// Declares the gateway queue; `max_length` bounds it (oldest dropped first:
/// a client that misses a frame fills the gap from history). What it drops
/// is dead-lettered into a small queue of its own, [`dropped_queue`], which
/// [`count_dropped`] reads, so that every dropped event is counted and
/// logged (RabbitMQ counts none).
pub async fn declare_queue(
    channel: &Channel,
    name: &str,
    max_length: u32,
) -> Result<(), lapin::Error> {
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let dropped = dropped_queue(name);
    let args = amqp::bounded_drop_head(FieldTable::default(), DROPPED_MAX);
    channel
        .queue_declare(dropped.as_str().into(), options, args)
        .await?;
    let mut args = amqp::bounded_drop_head(FieldTable::default(), max_length);
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

/// Counts what the gateway queue `queue` dropped, event by event, in
/// `gateway_events_dropped_total{reason="queue_full"}`, and logs it: the
/// first drop at once, then a summary at most every ten seconds.
pub async fn count_dropped(mut dropped: Inbound, queue: String, metrics: Arc<Metrics>) {
    let mut unlogged: u64 = 0;
    let mut next_log = tokio::time::Instant::now();
    loop {
        // Counted, not decoded: the queue overflowed because this gateway
        // is behind, so the count costs no more than it must.
        let delivery = if unlogged == 0 {
            dropped.next::<IgnoredAny>().await
        } else {
            tokio::select! {
                delivery = dropped.next::<IgnoredAny>() => delivery,
                () = tokio::time::sleep_until(next_log) => {
                    log_drops(&queue, &mut unlogged);
                    next_log = tokio::time::Instant::now() + DROP_LOG_EVERY;
                    continue;
                }
            }
        };
        let Some(delivery) = delivery else { break };
        let events = delivery.map_or(1, |d| (d.events.len() + d.undecodable.len()) as u64);
        metrics.dropped_many("queue_full", events);
        unlogged += events;
        if tokio::time::Instant::now() >= next_log {
            log_drops(&queue, &mut unlogged);
            next_log = tokio::time::Instant::now() + DROP_LOG_EVERY;
        }
    }
    log_drops(&queue, &mut unlogged);
}

fn log_drops(queue: &str, unlogged: &mut u64) {
    if *unlogged > 0 {
        tracing::warn!(
            queue,
            events = *unlogged,
            max_length_key = "gateway.queue_max_length",
            "the gateway queue was full: events dropped (their recipients fill the gap from history)"
        );
        *unlogged = 0;
    }
}

pub async fn consume(channel: &Channel, queue: &str) -> Result<Inbound, lapin::Error> {
    // No acks: these are live deliveries of already-stored messages; a lost
    // one is recovered by the client from history.
    let options = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let consumer = channel
        .basic_consume(queue.into(), "".into(), options, FieldTable::default())
        .await?;
    Ok(Inbound::new(consumer, queue))
}

/// Runs until the consumer ends (connection closed at shutdown).
pub async fn run(mut inbound: Inbound, hub: Arc<Hub>, metrics: Arc<Metrics>) {
    while let Some(delivery) = inbound.next::<GatewayEvent>().await {
        match delivery {
            Ok(received) => {
                for bad in received.undecodable {
                    metrics.dropped("undecodable_event");
                    tracing::error!(error = %bad.error, event = %bad.raw, "undecodable event on the gateway queue, dropped");
                }
                for event in received.events {
                    metrics.bus_events_received.inc();
                    hub.dispatch(event, received.via.as_ref());
                }
            }
            Err(bad) => {
                metrics.dropped("undecodable_message");
                tracing::error!(error = %bad.error, "undecodable message on the gateway queue, dropped")
            }
        }
    }
    tracing::info!("gateway queue consumer stopped");
}
