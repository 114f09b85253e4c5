//! The last stage: once a batch is committed and announced (every confirm
//! in, the persistent publishes' too), its deliveries are acknowledged, and
//! only then. One `basic.ack` with `multiple` per partition channel covers
//! the whole batch.

use crate::announcer::Durable;
use crate::consumer::Incoming;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use std::collections::BTreeMap;
use tokio::sync::mpsc;

/// A batch announced, with what its ack still waits for.
pub struct Announced {
    pub batch: Vec<Incoming>,
    pub durable: Durable,
}

/// Acks announced batches in the order they come (each `multiple` ack must
/// not cover a batch before its own confirms are in), once their confirms
/// are in. A confirm that fails puts the batch back on its queue: it is
/// stored again (the idempotency key makes that a repeat), announced and
/// published again.
pub async fn run(mut announced: mpsc::Receiver<Announced>) {
    while let Some(Announced { batch, durable }) = announced.recv().await {
        let mut confirmed = true;
        for confirm in durable.confirms {
            if let Err(e) = confirm.wait().await {
                tracing::warn!(error = %e, "a persistent publish (contacts made) not confirmed: the batch goes back to its queue");
                confirmed = false;
            }
        }
        if let Some(notices) = durable.notices {
            confirmed &= notices.await.unwrap_or(false);
        }
        if confirmed {
            ack(&batch).await;
        } else {
            requeue(&batch).await;
        }
    }
}

/// Puts back, per channel, everything up to the newest delivery of the
/// batch (the earlier batches are acked already).
async fn requeue(batch: &[Incoming]) {
    for incoming in newest_per_channel(batch).values() {
        let options = BasicNackOptions {
            multiple: true,
            requeue: true,
        };
        if let Err(e) = incoming.acker.nack(options).await {
            tracing::warn!(error = %e, "nack failed");
        }
    }
}

fn newest_per_channel(batch: &[Incoming]) -> BTreeMap<u16, &Incoming> {
    let mut newest: BTreeMap<u16, &Incoming> = BTreeMap::new();
    for incoming in batch {
        newest
            .entry(incoming.channel)
            .and_modify(|n| {
                if incoming.delivery_tag > n.delivery_tag {
                    *n = incoming;
                }
            })
            .or_insert(incoming);
    }
    newest
}

/// Acks, per channel, everything up to the newest delivery of the batch.
pub async fn ack(batch: &[Incoming]) {
    for incoming in newest_per_channel(batch).values() {
        if let Err(e) = incoming.acker.ack(BasicAckOptions { multiple: true }).await {
            // The channel is gone; the broker will redeliver, and the
            // idempotency key turns that into a harmless re-delivery.
            tracing::warn!(error = %e, "ack failed");
        }
    }
}
