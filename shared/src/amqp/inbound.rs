//! The one consume path: every delivery of every service comes through
//! [`Inbound::next`], which decodes its events one by one
//! ([`bus::decode_each`]) and reads the trace context from its AMQP headers.
//! What a service then does with it (ack it, hold it in a batch until
//! committed, dead-letter what it cannot read) is the service's own.

use crate::bus::{self, Undecodable};
use crate::telemetry::propagation::{self, TraceHeaders};
use lapin::Acker;
use lapin::Consumer;
use lapin::types::AMQPValue;
use serde::de::DeserializeOwned;

/// A consumer, named for the logs.
pub struct Inbound {
    consumer: Consumer,
    source: String,
}

/// One AMQP message, decoded.
#[derive(Debug)]
pub struct Received<T> {
    pub events: Vec<T>,
    /// Events this service cannot read, with why (the others are kept).
    pub undecodable: Vec<Undecodable>,
    /// The trace context in the message's headers: the span that
    /// published it, when that was traced.
    pub via: Option<TraceHeaders>,
    pub acker: Acker,
    pub delivery_tag: u64,
    pub redelivered: bool,
    /// The length of its body.
    pub bytes: usize,
}

/// A message whose body is not a JSON array of events at all.
#[derive(Debug)]
pub struct Unreadable {
    pub error: serde_json::Error,
    pub acker: Acker,
}

impl Inbound {
    pub fn new(consumer: Consumer, source: impl Into<String>) -> Self {
        Self {
            consumer,
            source: source.into(),
        }
    }

    /// The next message; `None` once the consumer has ended (its channel or
    /// connection closed). A consumer error is logged and skipped (lapin
    /// recovers the channel). Cancel-safe: nothing is taken from the
    /// consumer unless it is returned.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Option<Result<Received<T>, Unreadable>> {
        use futures_util::StreamExt as _;
        loop {
            let delivery = match self.consumer.next().await? {
                Ok(delivery) => delivery,
                Err(e) => {
                    tracing::error!(source = %self.source, error = %e, "consumer failed");
                    continue;
                }
            };
            // Read only when traces are exported: an untraced system pays
            // one branch per delivery.
            let headers = crate::telemetry::tracing_enabled()
                .then(|| delivery.properties.headers().as_ref())
                .flatten();
            let via = headers.and_then(|headers| {
                propagation::from_headers(|name| match headers.inner().get(name)? {
                    AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
                    _ => None,
                })
            });
            return Some(match bus::decode_each::<T>(&delivery.data) {
                Ok(decoded) => Ok(Received {
                    events: decoded.events,
                    undecodable: decoded.undecodable,
                    via,
                    acker: delivery.acker,
                    delivery_tag: delivery.delivery_tag,
                    redelivered: delivery.redelivered,
                    bytes: delivery.data.len(),
                }),
                Err(error) => Err(Unreadable {
                    error,
                    acker: delivery.acker,
                }),
            });
        }
    }
}
