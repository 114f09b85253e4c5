//! The gateway's inbox: its own queue (declared exclusive and bounded by
//! `amqp::declare_gateway_queue`, bound to the fan-out exchange by shard and
//! to the broadcast exchange), consumed here. Everything the gateway must deliver arrives on
//! it: stored messages (fan-out exchange, by shard key), replies meant for one
//! session (default exchange, by queue name), conversations that appeared.

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::ws::blocks::Blocks;
use crate::ws::members::Memberships;
use chat_shared::amqp::Inbound;
use chat_shared::bus::GatewayEvent;
use lapin::Channel;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use serde::de::IgnoredAny;
use std::sync::Arc;
use std::time::Duration;

/// How often a summary of the drops is logged, at most.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

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

/// The gates whose memory broadcast changes empty.
pub struct Gates {
    pub members: Arc<Memberships>,
    pub blocks: Arc<Blocks>,
}

/// Runs until the consumer ends (connection closed at shutdown). A change
/// of members or blocks empties the gates' memory of it; every other event
/// goes to the hub.
pub async fn run(mut inbound: Inbound, hub: Arc<Hub>, gates: Gates, metrics: Arc<Metrics>) {
    while let Some(delivery) = inbound.next::<GatewayEvent>().await {
        match delivery {
            Ok(received) => {
                for bad in received.undecodable {
                    metrics.dropped("undecodable_event");
                    tracing::error!(error = %bad.error, event = %bad.raw, "undecodable event on the gateway queue, dropped");
                }
                for event in received.events {
                    metrics.bus_events_received.inc();
                    match event {
                        GatewayEvent::MembersChanged { conversation_id } => {
                            gates.members.forget(conversation_id)
                        }
                        GatewayEvent::BlocksChanged { user_ids } => gates.blocks.forget(&user_ids),
                        event => hub.dispatch(event, received.via.as_ref()),
                    }
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
