//! What the gateway tells the presence service: a user's first session here
//! opened, their last one closed, who is typing, and, every
//! `presence.heartbeat_ms`, that this gateway lives and whom it hosts. The
//! heartbeat is what lets the presence service notice a gateway that died
//! without a word (kill -9), and rebuild its state after Redis was down.
//!
//! Fire and forget: presence is ephemeral, and a lost event is repaired by
//! the next heartbeat. Events wait in a bounded queue ([`QUEUE`]) that one
//! task publishes from, in order, so no session ever waits on the broker for
//! them. When the queue is full (a stuck broker connection that takes
//! nothing) an event is dropped and logged; with the connection down,
//! publishes fail at once and the task drops them (logged too). At
//! shutdown the gateway lets the queue empty before it closes the broker
//! connection, so its users' last `SessionClosed` go out.

use crate::hub::Hub;
use chat_shared::amqp::{self, Outgoing, Topology};
use chat_shared::bus::{self, PresenceEvent};
use chat_shared::ids::UserId;
use chat_shared::telemetry::throttle::LogThrottle;
use lapin::Channel;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::Instrument as _;

/// Presence events waiting for the broker, at most (about 100 bytes each).
pub const QUEUE: usize = 16_384;

/// An event, with the span it is published in (a typing frame's, so the
/// relay and its deliveries join the frame's trace).
pub type Queued = (PresenceEvent, tracing::Span);

#[derive(Clone)]
pub struct PresenceFeed {
    tx: mpsc::Sender<Queued>,
    /// This gateway's id in presence events.
    pub gateway: Arc<str>,
    /// Events dropped, logged at most every ten seconds (without a broker,
    /// every session that opens or closes would log a line).
    dropped: Arc<LogThrottle>,
}

impl PresenceFeed {
    /// A feed, and the queue it fills for [`publish`] (or a test) to read.
    pub fn new(gateway: &str) -> (Self, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let feed = Self {
            tx,
            gateway: gateway.into(),
            dropped: Arc::new(LogThrottle::new(Duration::from_secs(10))),
        };
        (feed, rx)
    }

    /// Queues `event`, to be published in `span`.
    pub fn publish_in(&self, event: PresenceEvent, span: tracing::Span) {
        let Err(e) = self.tx.try_send((event, span)) else {
            return;
        };
        if let Some(events) = self.dropped.hit() {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "their queue is full",
                mpsc::error::TrySendError::Closed(_) => "the feed has stopped",
            };
            tracing::warn!(
                events,
                "presence events not published: {why} (the next heartbeat repairs them)"
            );
        }
    }

    /// Waits, at most `within`, until the queue is empty.
    pub async fn flushed(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.tx.capacity() < self.tx.max_capacity() && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn opened(&self, user: UserId) {
        let gateway = self.gateway.to_string();
        let event = PresenceEvent::SessionOpened {
            gateway,
            user_id: user,
        };
        self.publish_in(event, tracing::Span::none());
    }

    pub fn closed(&self, user: UserId) {
        let gateway = self.gateway.to_string();
        let event = PresenceEvent::SessionClosed {
            gateway,
            user_id: user,
        };
        self.publish_in(event, tracing::Span::none());
    }

    /// Sends a heartbeat every `every` until the task is dropped.
    pub async fn heartbeats(self, hub: Arc<Hub>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let event = PresenceEvent::Heartbeat {
                gateway: self.gateway.to_string(),
                user_ids: hub.users(),
            };
            self.publish_in(event, tracing::Span::none());
        }
    }
}

/// Publishes the queued events to the presence queue, in order, until the
/// feed is dropped.
pub async fn publish(mut rx: mpsc::Receiver<Queued>, channel: Channel, topo: Topology) {
    let queue = topo.presence_queue();
    let unpublished = LogThrottle::new(Duration::from_secs(10));
    while let Some((event, span)) = rx.recv().await {
        let payload = bus::encode(&[event]);
        let outgoing = Outgoing::to_queue(&queue, &payload);
        // Published inside the event's span: its context goes out in the
        // AMQP headers.
        let published = amqp::publish_unconfirmed(&channel, outgoing)
            .instrument(span)
            .await;
        if let Err(e) = published
            && let Some(events) = unpublished.hit()
        {
            tracing::warn!(error = %e, events, "presence events not published (the next heartbeat repairs them)");
        }
    }
}
