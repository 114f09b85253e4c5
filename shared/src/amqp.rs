//! RabbitMQ support shared by every service: the names of the topology, how
//! to connect, how to declare it, and a publisher that only reports success
//! once the broker has confirmed (and routed) the message.
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
//! Every publish goes through one function (`basic_publish`, which writes
//! the current span's trace context into the AMQP headers), and every
//! delivery through one consumer wrapper ([`Inbound`], which reads it).

mod inbound;

pub use inbound::{Inbound, Received, Unreadable};

use crate::config::{AmqpSettings, QueueType};
use crate::ids::UserId;
use lapin::Confirmation;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::time::Duration;

/// Names of exchanges, queues and routing keys under one prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    pub partitions: u16,
    pub route_shards: u16,
    /// Whether sends on the persist path are published persistent.
    pub persistent_sends: bool,
    /// The type of the shared durable queues.
    pub queue_type: QueueType,
}

impl Topology {
    pub fn new(settings: &AmqpSettings) -> Self {
        Self {
            prefix: settings.prefix.clone(),
            partitions: settings.partitions,
            route_shards: settings.route_shards,
            persistent_sends: settings.persistent_sends,
            queue_type: settings.queue_type,
        }
    }
    /// The arguments every shared durable queue starts from: its type.
    pub fn shared_queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        args
    }
    pub fn persist_exchange(&self) -> String {
        format!("{}.persist", self.prefix)
    }
    pub fn persist_queue(&self, partition: u16) -> String {
        format!("{}.persist.{partition}", self.prefix)
    }
    /// The dead-letter exchange.
    pub fn dead_letters(&self) -> String {
        format!("{}.persist.dead", self.prefix)
    }
    /// The dead-letter queue, bound to [`Self::dead_letters`] and bounded.
    /// (Until 2026-11 the queue had the exchange's name and no bound; a
    /// service deletes that one when it is empty.)
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.persist.dead-letters", self.prefix)
    }
    pub fn fanout_exchange(&self) -> String {
        format!("{}.fanout", self.prefix)
    }
    pub fn presence_queue(&self) -> String {
        format!("{}.presence", self.prefix)
    }
    pub fn gateway_queue(&self, instance: &str) -> String {
        format!("{}.gw.{instance}", self.prefix)
    }
    /// The fan-out shard of a user.
    pub fn route_shard(&self, user: UserId) -> u16 {
        Self::shard_of(user, self.route_shards)
    }
    /// The fan-out shard of a user, of `route_shards` shards.
    pub fn shard_of(user: UserId, route_shards: u16) -> u16 {
        user.get().rem_euclid(i64::from(route_shards.max(1))) as u16
    }
    /// The fan-out routing key of a shard.
    pub fn shard_key(shard: u16) -> String {
        format!("shard.{shard}")
    }
    /// The routing keys that reach every gateway hosting any of `users`,
    /// each once.
    pub fn route_keys(&self, users: impl IntoIterator<Item = UserId>) -> Vec<String> {
        let shards: std::collections::BTreeSet<u16> =
            users.into_iter().map(|u| self.route_shard(u)).collect();
        shards.into_iter().map(Self::shard_key).collect()
    }
}

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

/// Connects with lapin's automatic recovery (connection, channels, topology)
/// switched on, retrying the first connection until `deadline` passes.
pub async fn connect(
    settings: &AmqpSettings,
    name: &str,
    deadline: Duration,
) -> Result<Connection, lapin::Error> {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        // Recovery retries after 1 s, then every 2 s, for ever: lapin's
        // default (1 s doubling to 60 s, 16 tries) left a service 15-30 s
        // behind a 10 s broker restart, and gave up for good after a quarter
        // of an hour. (A first retry after 100 ms was tried: lapin then
        // sometimes never recovered from a short cut, stuck reconnecting.)
        let props = ConnectionProperties::default()
            .with_connection_name(name.into())
            .configure_backoff(|backoff| {
                backoff
                    .with_min_delay(Duration::from_secs(1))
                    .with_max_delay(Duration::from_secs(2))
                    .with_jitter()
                    .without_max_times()
            })
            .enable_auto_recover();
        match Connection::connect(&settings.url, props).await {
            Ok(conn) => return Ok(conn),
            Err(e) if started.elapsed() + delay < deadline => {
                tracing::warn!(error = %e, "amqp connect failed, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Watches broker connections and the channels a service cannot work
/// without, every 100 ms, for as long as it runs. Each `(after, signal)` is
/// raised once any of `conns` or `channels` has been down `after` (and
/// lowered when all are back): a service without its broker can do nothing
/// useful, and one whose AMQP client stays stuck reconnecting (seen with
/// lapin after an interrupted handshake, docs/reliability.md), or whose
/// channel the broker closed while recovering it (a gateway's exclusive
/// queue still held by its old connection: `RESOURCE_LOCKED`), is better
/// restarted. `on_tick` hears, each time, whether all are connected.
pub async fn watch_connections(
    conns: Vec<std::sync::Arc<Connection>>,
    channels: Vec<Channel>,
    signals: Vec<(Duration, tokio::sync::watch::Sender<bool>)>,
    mut on_tick: impl FnMut(bool),
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down_since: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        let connected = conns.iter().all(|conn| conn.status().connected())
            && channels.iter().all(|channel| channel.status().connected());
        on_tick(connected);
        if connected {
            down_since = None;
        } else {
            down_since.get_or_insert(now);
        }
        let down_for = down_since.map_or(Duration::ZERO, |since| now.duration_since(since));
        for (after, signal) in &signals {
            let down = !connected && down_for >= *after;
            if down != *signal.borrow() {
                if down {
                    tracing::warn!(
                        down_ms = down_for.as_millis() as u64,
                        after_ms = after.as_millis() as u64,
                        "broker unreachable"
                    );
                } else {
                    tracing::info!(
                        after_ms = after.as_millis() as u64,
                        "broker reachable again"
                    );
                }
                let _ = signal.send(down);
            }
        }
    }
}

fn durable() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// `args` with a bound of `max_length` messages, past which a queue drops
/// its oldest (`x-overflow: drop-head`).
pub fn bounded_drop_head(mut args: FieldTable, max_length: u32) -> FieldTable {
    args.insert("x-max-length".into(), AMQPValue::LongUInt(max_length));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("drop-head".into()),
    );
    args
}

/// Most messages the dead-letter queue keeps.
pub const DEAD_LETTERS_MAX: u32 = 100_000;

/// Deletes the unbounded dead-letter queue of earlier versions if it is
/// empty (else it is left, with a warning: read it, then delete it). On a
/// channel of its own: a refusal closes the channel.
pub async fn retire_old_dead_letter_queue(conn: &Connection, topo: &Topology) {
    let Ok(channel) = conn.create_channel().await else {
        return;
    };
    let options = lapin::options::QueueDeleteOptions {
        if_empty: true,
        ..Default::default()
    };
    match channel
        .queue_delete(topo.dead_letters().into(), options)
        .await
    {
        Ok(_) => {
            let _ = channel.close(200, "done".into()).await;
        }
        Err(e) => {
            tracing::warn!(queue = %topo.dead_letters(), error = %e, "the old dead-letter queue holds messages: read them, then delete the queue")
        }
    }
}

/// Declares the persist path (idempotent; gateways and persisters both call it).
pub async fn declare_persist_path(channel: &Channel, topo: &Topology) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            topo.persist_exchange().into(),
            ExchangeKind::Direct,
            durable(),
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            topo.dead_letters().into(),
            ExchangeKind::Fanout,
            durable(),
            FieldTable::default(),
        )
        .await?;
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    // Bounded: past DEAD_LETTERS_MAX the oldest are dropped (each was
    // logged with its cause when it was dead-lettered, and
    // persister_queue_messages shows the queue growing).
    let dead_args = bounded_drop_head(topo.shared_queue_args(), DEAD_LETTERS_MAX);
    channel
        .queue_declare(topo.dead_letter_queue().into(), durable_queue, dead_args)
        .await?;
    channel
        .queue_bind(
            topo.dead_letter_queue().into(),
            topo.dead_letters().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for partition in 0..topo.partitions {
        let mut args = topo.shared_queue_args();
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(topo.dead_letters().into()),
        );
        let queue = topo.persist_queue(partition);
        channel
            .queue_declare(queue.clone().into(), durable_queue, args)
            .await?;
        channel
            .queue_bind(
                queue.into(),
                topo.persist_exchange().into(),
                partition.to_string().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Declares the presence queue (idempotent): gateways publish session and
/// typing events to it; one presence service at a time consumes it (single
/// active consumer keeps the events of a user in order). Bounded: if no
/// presence service runs, the oldest events are dropped, and the next
/// heartbeats rebuild the state.
pub async fn declare_presence_path(channel: &Channel, topo: &Topology) -> Result<(), lapin::Error> {
    let mut args = bounded_drop_head(topo.shared_queue_args(), 100_000);
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(topo.presence_queue().into(), options, args)
        .await
        .map(|_| ())
}

/// Declares the fan-out exchange (idempotent).
pub async fn declare_fanout(channel: &Channel, topo: &Topology) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            topo.fanout_exchange().into(),
            ExchangeKind::Direct,
            durable(),
            FieldTable::default(),
        )
        .await
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
    /// Events for the gateways bound to `keys` (from [`Topology::route_keys`])
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

/// A channel in confirm mode. `publish` returns once the broker has
/// confirmed the message, so `Ok` means "the broker has it".
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

    pub async fn publish(&self, msg: Outgoing<'_>) -> Result<(), PublishError> {
        self.start(msg).await?.wait().await
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

/// Connects as `name` and declares the whole topology. Every service
/// declares all of it (idempotent), so any of them can start first.
pub async fn connect_and_declare(
    settings: &AmqpSettings,
    name: &str,
) -> Result<(Connection, Topology), lapin::Error> {
    let conn = connect(settings, name, Duration::from_secs(30)).await?;
    let topo = Topology::new(settings);
    let channel = conn.create_channel().await?;
    declare_persist_path(&channel, &topo).await?;
    declare_fanout(&channel, &topo).await?;
    declare_presence_path(&channel, &topo).await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok((conn, topo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(route_shards: u16) -> Topology {
        Topology {
            prefix: "chat".into(),
            partitions: 2,
            route_shards,
            persistent_sends: false,
            queue_type: QueueType::Classic,
        }
    }

    fn users(ids: &[i64]) -> Vec<UserId> {
        ids.iter()
            .map(|id| UserId::new(*id).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    #[test]
    fn recipients_in_one_shard_make_one_routing_key() {
        let topo = topology(4);
        assert_eq!(topo.route_keys(users(&[1, 5, 9])), ["shard.1"]);
    }

    #[test]
    fn routing_keys_name_each_shard_of_the_recipients_once() {
        let topo = topology(4);
        assert_eq!(
            topo.route_keys(users(&[7, 2, 3, 6, 11])),
            ["shard.2", "shard.3"]
        );
    }

    #[test]
    fn with_more_shards_than_users_every_user_has_a_shard_of_their_own() {
        let topo = topology(64);
        assert_eq!(topo.route_keys(users(&[1, 2])), ["shard.1", "shard.2"]);
        assert_eq!(topo.route_shard(users(&[65])[0]), 1);
    }
}
