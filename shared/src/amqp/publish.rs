//! The one publish path: an [`Outgoing`] message, published confirmed
//! ([`ConfirmedPublisher`]) or not ([`publish_unconfirmed`]), always through
//! `basic_publish`, which writes the current span's trace context into the
//! AMQP headers.

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for the message (returned)")]
    Unroutable,
    #[error("no confirm within {0:?}")]
    Timeout(Duration),
    /// The channel did not even take the message in time: the connection
    /// is stuck (a broker that stopped reading, a network that drops
    /// packets without a reset).
    #[error("the broker did not take the message within {0:?}")]
    Stalled(Duration),
}

/// One outgoing AMQP message.
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    /// Extra routing keys (RabbitMQ's sender-selected distribution).
    pub cc: &'a [String],
    pub payload: &'a [u8],
    /// Persistent (delivery mode 2) for the persist path.
    pub persistent: bool,
    /// Mandatory: an unroutable message is an error, not silently dropped.
    pub mandatory: bool,
    /// Why it is sent where it is (the `x-chat-reason` header of a dead
    /// letter).
    pub reason: Option<&'a str>,
}

impl<'a> Outgoing<'a> {
    /// Events for the gateways bound to `keys` (shard keys, [`super::Topology::shard_key`])
    /// on the fan-out exchange: one publish, routed by the first key with the
    /// rest in `CC`. Transient and not mandatory: a user with no session
    /// anywhere routes nowhere, and reads history on return. `None` without
    /// keys (nobody to tell).
    pub fn to_gateways(exchange: &'a str, keys: &'a [String], payload: &'a [u8]) -> Option<Self> {
        let (first, rest) = keys.split_first()?;
        Some(Self {
            exchange,
            routing_key: first,
            cc: rest,
            payload,
            persistent: false,
            mandatory: false,
            reason: None,
        })
    }

    /// One event for the queue `queue` (the default exchange routes by
    /// queue name), transient and not mandatory.
    pub fn to_queue(queue: &'a str, payload: &'a [u8]) -> Self {
        Self {
            exchange: "",
            routing_key: queue,
            cc: &[],
            payload,
            persistent: false,
            mandatory: false,
            reason: None,
        }
    }
}

/// A channel in confirm mode: [`ConfirmedPublisher::start`] hands a
/// message to the broker, and its [`PendingConfirm`] says `Ok` once the
/// broker has it.
#[derive(Clone)]
pub struct ConfirmedPublisher {
    channel: Channel,
    timeout: Duration,
}

impl ConfirmedPublisher {
    pub async fn new(conn: &Connection, timeout: Duration) -> Result<Self, lapin::Error> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel, timeout })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes and waits for the broker's confirm.
    pub async fn publish_confirmed(&self, msg: Outgoing<'_>) -> Result<(), PublishError> {
        self.start(msg).await?.wait().await
    }

    /// Hands the message to the channel in call order (so two calls from one
    /// task are published in that order) and returns the confirm to await.
    /// Gives up after the confirm timeout ([`PublishError::Stalled`]): a
    /// stuck connection must not stop the caller (the message may still go
    /// out later; every publish on the chat path is safe to repeat).
    pub async fn start(&self, msg: Outgoing<'_>) -> Result<PendingConfirm, PublishError> {
        let confirm = tokio::time::timeout(self.timeout, basic_publish(&self.channel, msg))
            .await
            .map_err(|_| PublishError::Stalled(self.timeout))??;
        Ok(PendingConfirm {
            confirm,
            timeout: self.timeout,
        })
    }
}

/// Publishes without waiting for a confirm, for what is best effort
/// (presence events, whose next heartbeat repairs a loss; a dead letter,
/// logged either way).
pub async fn publish_unconfirmed(channel: &Channel, msg: Outgoing<'_>) -> Result<(), lapin::Error> {
    basic_publish(channel, msg).await.map(|_| ())
}

/// Every publish of every service goes through here: the one place that
/// turns an [`Outgoing`] into AMQP properties and a `basic.publish`.
async fn basic_publish(
    channel: &Channel,
    msg: Outgoing<'_>,
) -> Result<lapin::PublisherConfirm, lapin::Error> {
    let mut props = BasicProperties::default().with_content_type("application/json".into());
    if msg.persistent {
        props = props.with_delivery_mode(2);
    }
    let mut headers = FieldTable::default();
    if !msg.cc.is_empty() {
        let keys: Vec<AMQPValue> = msg
            .cc
            .iter()
            .map(|k| AMQPValue::LongString(LongString::from(k.as_str())))
            .collect();
        headers.insert(
            ShortString::from("CC"),
            AMQPValue::FieldArray(FieldArray::from(keys)),
        );
    }
    if let Some(reason) = msg.reason {
        headers.insert(
            ShortString::from("x-chat-reason"),
            AMQPValue::LongString(reason.into()),
        );
    }
    // W3C trace context of the span publishing it (when traced), so the
    // consumer's span can name the publish that brought the message.
    if let Some(trace) = crate::telemetry::propagation::current() {
        for (name, value) in trace.fields() {
            headers.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
        }
    }
    if !headers.inner().is_empty() {
        props = props.with_headers(headers);
    }
    let options = BasicPublishOptions {
        mandatory: msg.mandatory,
        ..Default::default()
    };
    channel
        .basic_publish(
            msg.exchange.into(),
            msg.routing_key.into(),
            options,
            msg.payload,
            props,
        )
        .await
}

/// A published message whose confirm has not arrived yet.
pub struct PendingConfirm {
    confirm: lapin::PublisherConfirm,
    timeout: Duration,
}

impl PendingConfirm {
    pub async fn wait(self) -> Result<(), PublishError> {
        match tokio::time::timeout(self.timeout, self.confirm).await {
            Err(_) => Err(PublishError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(PublishError::Broker(e)),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Unroutable),
            Ok(Ok(Confirmation::Ack(None))) | Ok(Ok(Confirmation::NotRequested)) => Ok(()),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
        }
    }
}
