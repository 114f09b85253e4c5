//! Telling the gateways, the one way every service does it: an event goes
//! to the fan-out exchange routed by the shard keys of everyone it concerns
//! (RabbitMQ's `CC` header), so each gateway hosting any of them gets one
//! copy and delivers it to those it hosts; a reply for one session goes
//! straight to its gateway's queue. Events are coalesced, up to
//! [`MAX_EVENTS_PER_MESSAGE`] per AMQP message: a lone event travels alone,
//! a big batch in a few AMQP messages. Every publish is confirmed.
//!
//! The persister announces stored messages, read markers and replies;
//! presence announces presence and typing; the gateway announces new
//! conversations.

use super::publish::{ConfirmedPublisher, Outgoing, PendingConfirm, PublishError};
use super::topology::Topology;
use crate::bus::{self, GatewayEvent};
use crate::ids::UserId;
use std::collections::{BTreeMap, BTreeSet};

/// Most events in one AMQP message.
pub const MAX_EVENTS_PER_MESSAGE: usize = 256;

#[derive(Clone)]
pub struct Announcer {
    publisher: ConfirmedPublisher,
    fanout: String,
    topo: Topology,
}

impl Announcer {
    pub fn new(publisher: ConfirmedPublisher, topo: &Topology) -> Self {
        Self {
            publisher,
            fanout: topo.fanout_exchange(),
            topo: topo.clone(),
        }
    }

    pub fn channel(&self) -> &lapin::Channel {
        self.publisher.channel()
    }

    /// One event for the gateways hosting any of `recipients`, confirmed.
    pub async fn send(
        &self,
        recipients: &[UserId],
        event: GatewayEvent,
    ) -> Result<(), PublishError> {
        let mut batch = self.batch();
        batch.to_users(recipients, event);
        batch.publish().await
    }

    /// One event for every gateway (the broadcast exchange), confirmed.
    pub async fn broadcast(&self, event: GatewayEvent) -> Result<(), PublishError> {
        let payload = bus::encode(&[event]);
        let exchange = self.topo.broadcast_exchange();
        let message = Outgoing {
            exchange: &exchange,
            routing_key: "",
            cc: &[],
            payload: &payload,
            persistent: false,
            mandatory: false,
            reason: None,
        };
        self.publisher.publish_confirmed(message).await
    }

    /// Events to publish together.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            announcer: self,
            chunks: Vec::new(),
            current: Chunk::default(),
            replies: BTreeMap::new(),
            durable: Vec::new(),
        }
    }
}

/// Events bound for the fan-out exchange, with the union of their
/// recipients' routing shards.
#[derive(Default)]
struct Chunk {
    shards: BTreeSet<u16>,
    events: Vec<GatewayEvent>,
}

pub struct Batch<'a> {
    announcer: &'a Announcer,
    chunks: Vec<Chunk>,
    current: Chunk,
    /// Replies by gateway queue.
    replies: BTreeMap<&'a str, Vec<GatewayEvent>>,
    /// Payloads published persistent to durable queues.
    durable: Vec<(&'a str, Vec<u8>)>,
}

impl<'a> Batch<'a> {
    /// `event` for the gateways hosting any of `recipients` (with none, it
    /// goes nowhere).
    pub fn to_users(&mut self, recipients: &[UserId], event: GatewayEvent) {
        if recipients.is_empty() {
            return;
        }
        let topo = &self.announcer.topo;
        let shards = recipients.iter().map(|u| topo.route_shard(*u));
        self.current.shards.extend(shards);
        self.current.events.push(event);
        if self.current.events.len() >= MAX_EVENTS_PER_MESSAGE {
            self.chunks.push(std::mem::take(&mut self.current));
        }
    }

    /// `event` straight to the gateway queue `queue` (default exchange).
    pub fn to_queue(&mut self, queue: &'a str, event: GatewayEvent) {
        self.replies.entry(queue).or_default().push(event);
    }

    /// `payload`, persistent, to the durable queue `queue` (confirmed with
    /// the rest).
    pub fn to_durable_queue(&mut self, queue: &'a str, payload: Vec<u8>) {
        self.durable.push((queue, payload));
    }

    /// Publishes every event, and waits for every confirm.
    pub async fn publish(self) -> Result<(), PublishError> {
        for confirm in self.publish_then_durable().await? {
            confirm.wait().await?;
        }
        Ok(())
    }

    /// Publishes every event and waits for the confirms of all but the
    /// durable queues' payloads, whose confirms it returns: a persistent
    /// publish is confirmed once on disk, later than the rest, and whoever
    /// waits for it need not hold up what comes next.
    pub async fn publish_then_durable(mut self) -> Result<Vec<PendingConfirm>, PublishError> {
        if !self.current.events.is_empty() {
            self.chunks.push(std::mem::take(&mut self.current));
        }
        let publisher = &self.announcer.publisher;
        let mut confirms = Vec::with_capacity(self.chunks.len() + self.replies.len());
        for chunk in self.chunks {
            let keys: Vec<String> = chunk.shards.into_iter().map(Topology::shard_key).collect();
            let payload = bus::encode(&chunk.events);
            if let Some(message) = Outgoing::to_gateways(&self.announcer.fanout, &keys, &payload) {
                confirms.push(publisher.start(message).await?);
            }
        }
        for (queue, events) in self.replies {
            let payload = bus::encode(&events);
            confirms.push(publisher.start(Outgoing::to_queue(queue, &payload)).await?);
        }
        let mut durable = Vec::with_capacity(self.durable.len());
        for (queue, payload) in &self.durable {
            let message = Outgoing {
                persistent: true,
                ..Outgoing::to_queue(queue, payload)
            };
            durable.push(publisher.start(message).await?);
        }
        for confirm in confirms {
            confirm.wait().await?;
        }
        Ok(durable)
    }
}
