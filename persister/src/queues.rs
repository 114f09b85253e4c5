//! Queue depths as the persister sees them, every few seconds: each persist
//! partition (work waiting for a persister) and the dead-letter queue (work
//! no persister could read). Served as `persister_queue_messages{queue=...}`;
//! a dead-letter queue that grows is also logged, since each message in it is
//! a send that was never stored.

use chat_shared::amqp::Topology;
use lapin::Connection;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::time::Duration;

pub type QueueGauges = Family<[(&'static str, String); 1], Gauge>;

/// How often the depths are read.
const EVERY: Duration = Duration::from_secs(5);

/// Reads the depths until the task is aborted.
pub async fn watch(conn: Arc<Connection>, topo: Topology, gauges: QueueGauges) {
    let mut queues: Vec<String> = (0..topo.partitions)
        .map(|p| topo.persist_queue(p))
        .collect();
    let dead = topo.dead_letter_queue();
    queues.push(dead.clone());
    let mut channel = None;
    let mut dead_seen = 0;
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        // A passive declare of a missing queue closes its channel: open
        // another on the next round.
        if channel
            .as_ref()
            .is_none_or(|c: &lapin::Channel| !c.status().connected())
        {
            channel = conn.create_channel().await.ok();
        }
        let Some(ch) = &channel else { continue };
        for queue in &queues {
            let options = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            match ch
                .queue_declare(queue.clone().into(), options, FieldTable::default())
                .await
            {
                Ok(q) => {
                    let depth = q.message_count();
                    gauges
                        .get_or_create(&[("queue", queue.clone())])
                        .set(i64::from(depth));
                    if *queue == dead && depth > dead_seen {
                        tracing::error!(queue = %dead, messages = depth, "the dead-letter queue grew: commands were never stored (see the errors logged when they were dead-lettered)");
                    }
                    if *queue == dead {
                        dead_seen = depth;
                    }
                }
                Err(e) => {
                    tracing::warn!(queue = %queue, error = %e, "could not read the queue depth");
                    break;
                }
            }
        }
    }
}
