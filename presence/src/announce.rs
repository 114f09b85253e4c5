//! Publishing typing and presence changes to the gateways that host the
//! people concerned: one AMQP message per change, routed by their shard keys
//! (RabbitMQ `CC`), so only gateways hosting a recipient's shard get it.

use chat_shared::amqp::{ConfirmedPublisher, Outgoing, PublishError, Topology};
use chat_shared::bus::{self, GatewayEvent};
use chat_shared::ids::UserId;

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

    pub async fn send(
        &self,
        recipients: &[UserId],
        event: GatewayEvent,
    ) -> Result<(), PublishError> {
        let keys = self.topo.route_keys(recipients.iter().copied());
        let payload = bus::encode(&[event]);
        match Outgoing::to_gateways(&self.fanout, &keys, &payload) {
            Some(message) => self.publisher.publish(message).await,
            None => Ok(()),
        }
    }
}
