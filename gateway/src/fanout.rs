//! The gateway's own queue: declared exclusive (it dies with the gateway),
//! bounded, and consumed here. Everything the gateway must deliver arrives on
//! it: stored messages (fan-out exchange, by shard key), replies meant for one
//! session (default exchange, by queue name), conversations that appeared.

use crate::hub::Hub;
use crate::metrics::Metrics;
use chat_shared::bus::{self, GatewayEvent};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Consumer};
use std::sync::Arc;

/// Declares the gateway queue; `max_length` bounds it (oldest dropped first:
/// a client that misses a frame fills the gap from history).
pub async fn declare_queue(
    channel: &Channel,
    name: &str,
    max_length: u32,
) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongUInt(max_length));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("drop-head".into()),
    );
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    channel
        .queue_declare(name.into(), options, args)
        .await
        .map(|_| ())
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
