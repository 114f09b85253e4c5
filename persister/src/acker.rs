//! The last stage: once a batch is committed and announced (every confirm
//! in), its deliveries are acknowledged, and only then. One `basic.ack` with
//! `multiple` per partition channel covers the whole batch.

use crate::consumer::Incoming;
use lapin::options::BasicAckOptions;
use std::collections::BTreeMap;

/// Acks, per channel, everything up to the newest delivery of the batch.
pub async fn ack(batch: &[Incoming]) {
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
    for incoming in newest.values() {
        if let Err(e) = incoming.acker.ack(BasicAckOptions { multiple: true }).await {
            // The channel is gone; the broker will redeliver, and the
            // idempotency key turns that into a harmless re-delivery.
            tracing::warn!(error = %e, "ack failed");
        }
    }
}
