//! The gateway queue's bindings to the fan-out exchange, one per shard:
//! on the broker ([`AmqpBindings`]), or recorded by a fake in unit tests.

use chat_shared::amqp::Topology;
use futures_util::future::BoxFuture;
use lapin::Channel;
use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;

pub trait ShardBindings: Send + Sync + 'static {
    /// Routes shard `shard`'s events to this gateway's queue.
    fn bind(&self, shard: u16) -> BoxFuture<'_, Result<(), lapin::Error>>;
    fn unbind(&self, shard: u16) -> BoxFuture<'_, Result<(), lapin::Error>>;
}

/// Bindings of `queue` to the fan-out exchange, on the channel that
/// declared the queue (lapin's recovery replays them after it).
pub struct AmqpBindings {
    pub channel: Channel,
    pub queue: String,
    pub exchange: String,
}

impl AmqpBindings {
    pub fn new(channel: Channel, queue: String, topo: &Topology) -> Self {
        Self {
            channel,
            queue,
            exchange: topo.fanout_exchange(),
        }
    }
}

impl ShardBindings for AmqpBindings {
    fn bind(&self, shard: u16) -> BoxFuture<'_, Result<(), lapin::Error>> {
        Box::pin(self.channel.queue_bind(
            self.queue.as_str().into(),
            self.exchange.as_str().into(),
            Topology::shard_key(shard).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ))
    }

    fn unbind(&self, shard: u16) -> BoxFuture<'_, Result<(), lapin::Error>> {
        Box::pin(self.channel.queue_unbind(
            self.queue.as_str().into(),
            self.exchange.as_str().into(),
            Topology::shard_key(shard).into(),
            FieldTable::default(),
        ))
    }
}
