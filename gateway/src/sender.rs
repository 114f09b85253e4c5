//! The send path out of the gateway: a `send` frame becomes a `SendCommand`
//! (and a `read` frame a `ReadCommand`)
//! published, persistent and mandatory, to the partition of its conversation,
//! and only the broker's confirm counts. The ack itself comes later, from the
//! persister, once the message is committed.

use chat_shared::amqp::{ConfirmedPublisher, Outgoing, PendingConfirm, PublishError, Topology};
use chat_shared::bus::{self, PersistCommand};

#[derive(Clone)]
pub struct Sender {
    publisher: ConfirmedPublisher,
    exchange: String,
    partitions: u16,
}

impl Sender {
    pub fn new(publisher: ConfirmedPublisher, topo: &Topology) -> Self {
        Self {
            publisher,
            exchange: topo.persist_exchange(),
            partitions: topo.partitions,
        }
    }

    /// Publishes in call order; the returned confirm says whether the broker
    /// took it. Awaited by the caller off the session's read loop.
    pub async fn start(&self, cmd: &PersistCommand) -> Result<PendingConfirm, PublishError> {
        let key = bus::partition_of(cmd.conversation_id(), self.partitions).to_string();
        let payload = bus::encode(std::slice::from_ref(cmd));
        self.publisher
            .start(Outgoing {
                exchange: &self.exchange,
                routing_key: &key,
                cc: &[],
                payload: &payload,
                persistent: true,
                mandatory: true,
            })
            .await
    }
}
