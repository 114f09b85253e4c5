//! What the gateway tells the presence service: a user's first session here
//! opened, their last one closed, who is typing, and, every
//! `presence.heartbeat_ms`, that this gateway lives and whom it hosts. The
//! heartbeat is what lets the presence service notice a gateway that died
//! without a word (kill -9), and rebuild its state after Redis was down.
//!
//! Fire and forget: presence is ephemeral, and a lost event is repaired by the
//! next heartbeat.

use crate::hub::Hub;
use chat_shared::amqp::{self, Outgoing, Topology};
use chat_shared::bus::{self, PresenceEvent};
use chat_shared::telemetry::throttle::LogThrottle;
use lapin::Channel;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct PresenceFeed {
    channel: Channel,
    queue: String,
    /// This gateway's id in presence events.
    pub gateway: Arc<str>,
    /// Events not published, logged at most every ten seconds (without a
    /// broker, every session that opens or closes would log a line).
    unpublished: Arc<LogThrottle>,
}

impl PresenceFeed {
    pub fn new(channel: Channel, topo: &Topology, gateway: &str) -> Self {
        Self {
            channel,
            queue: topo.presence_queue(),
            gateway: gateway.into(),
            unpublished: Arc::new(LogThrottle::new(Duration::from_secs(10))),
        }
    }

    pub async fn publish(&self, event: PresenceEvent) {
        let payload = bus::encode(&[event]);
        let published =
            amqp::publish_unconfirmed(&self.channel, Outgoing::to_queue(&self.queue, &payload))
                .await;
        if let Err(e) = published
            && let Some(events) = self.unpublished.hit()
        {
            tracing::warn!(error = %e, events, "presence events not published (the next heartbeat repairs them)");
        }
    }

    pub async fn opened(&self, user: chat_shared::ids::UserId) {
        self.publish(PresenceEvent::SessionOpened {
            gateway: self.gateway.to_string(),
            user_id: user,
        })
        .await;
    }

    pub async fn closed(&self, user: chat_shared::ids::UserId) {
        self.publish(PresenceEvent::SessionClosed {
            gateway: self.gateway.to_string(),
            user_id: user,
        })
        .await;
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
            self.publish(event).await;
        }
    }
}
