//! The gateway's own queue: declared exclusive (it dies with the gateway),
//! bounded, and consumed here. Everything the gateway must deliver arrives on
//! it: stored messages (fan-out exchange, by shard key), replies meant for one
//! session (default exchange, by queue name), conversations that appeared.

use crate::hub::Hub;
use crate::metrics::Metrics;
use chat_shared::amqp;
use chat_shared::bus::{self, GatewayEvent};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Consumer};
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
pub async fn count_dropped(mut consumer: Consumer, queue: String, metrics: Arc<Metrics>) {
    let mut unlogged: u64 = 0;
    let mut next_log = tokio::time::Instant::now();
    loop {
        let delivery = if unlogged == 0 {
            consumer.next().await
        } else {
            tokio::select! {
                delivery = consumer.next() => delivery,
                () = tokio::time::sleep_until(next_log) => {
                    log_drops(&queue, &mut unlogged);
                    next_log = tokio::time::Instant::now() + DROP_LOG_EVERY;
                    continue;
                }
            }
        };
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => {
                tracing::error!(error = %e, "dropped-events consumer failed");
                continue;
            }
            None => break,
        };
        // Counted, not decoded: the queue overflowed because this gateway
        // is behind, so the count costs no more than it must.
        let events = serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&delivery.data)
            .map_or(1, |events| events.len() as u64);
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

pub async fn consume(channel: &Channel, queue: &str) -> Result<Consumer, lapin::Error> {
    // No acks: these are live deliveries of already-stored messages; a lost
    // one is recovered by the client from history.
    let options = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    channel
        .basic_consume(queue.into(), "".into(), options, FieldTable::default())
        .await
}

/// Runs until the consumer ends (connection closed at shutdown).
pub async fn run(mut consumer: Consumer, hub: Arc<Hub>, metrics: Arc<Metrics>) {
    while let Some(delivery) = consumer.next().await {
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "gateway queue consumer failed");
                continue;
            }
        };
        match bus::decode_each::<GatewayEvent>(&delivery.data) {
            Ok(decoded) => {
                for bad in decoded.undecodable {
                    metrics.dropped("undecodable_event");
                    tracing::error!(error = %bad.error, event = %bad.raw, "undecodable event on the gateway queue, dropped");
                }
                for event in decoded.events {
                    metrics.bus_events_received.inc();
                    hub.dispatch(event);
                }
            }
            Err(e) => {
                metrics.dropped("undecodable_message");
                tracing::error!(error = %e, "undecodable message on the gateway queue, dropped")
            }
        }
    }
    tracing::info!("gateway queue consumer stopped");
}
