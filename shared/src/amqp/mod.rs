//! RabbitMQ support shared by every service, one file a job: the names of
//! the topology ([`topology`]), how to connect and watch the connection
//! ([`connect`]), how to declare it ([`declare`]), one publish path with a
//! publisher that only reports success once the broker has confirmed (and
//! routed) the message ([`publish`]), the fan-out to the gateways
//! ([`announce`]), one consume path ([`inbound`]), and a watch for an AMQP
//! client whose recovery is stuck ([`recovery`]).
//!
//! Topology (prefix `chat` by default):
//! - `chat.persist` direct exchange -> durable queues `chat.persist.0..N`
//!   (routing key = partition), single active consumer each, dead letters to
//!   the `chat.persist.dead` exchange -> durable queue
//!   `chat.persist.dead-letters` (bounded, oldest dropped first).
//! - `chat.presence` durable queue (single active consumer, bounded): session
//!   and typing events from the gateways to the presence service.
//! - `chat.fanout` direct exchange -> one exclusive queue per gateway
//!   (`chat.gw.<instance>`), bound with `shard.<user % route_shards>` for each
//!   shard that has a user it hosts. An event is published once, with its
//!   recipients' shard keys in the `CC` header; RabbitMQ puts it once into
//!   each queue bound to any of them, and the gateway delivers it to the
//!   recipients it hosts.
//!
//! Every publish goes through one function (`publish::basic_publish`, which
//! writes the current span's trace context into the AMQP headers), and every
//! delivery through one consumer wrapper ([`Inbound`], which reads it).

pub mod announce;
pub mod connect;
pub mod declare;
mod inbound;
pub mod publish;
pub mod recovery;
pub mod topology;

pub use announce::{Announcer, Batch};
pub use connect::{Retirement, connect, connect_and_declare, watch_connections};
pub use declare::{
    DEAD_LETTERS_MAX, bounded_drop_head, declare_fanout, declare_gateway_queue,
    declare_notify_queue, declare_persist_path, declare_presence_path, gateway_dropped_queue,
};
pub use inbound::{Inbound, Received, Unreadable};
pub use publish::{
    ConfirmedPublisher, Outgoing, PendingConfirm, PublishError, publish_unconfirmed,
};
pub use recovery::{RecoveryStuck, watch_recovery};
pub use topology::Topology;
