//! The send path out of the gateway: a `send` frame becomes a `SendCommand`
//! (a `read` frame a `ReadCommand`), published mandatory (and persistent if
//! `amqp.persistent_sends`) to the partition of its conversation; only the
//! broker's confirm counts. The
//! ack itself comes later, from the persister, once the message is committed.
//!
//! One task publishes for the whole gateway. It takes whatever commands are
//! waiting (up to [`MAX_COMMANDS_PER_MESSAGE`]), lingers up to
//! `gateway.publish_linger_ms` for more, and publishes one AMQP message per
//! partition (of at most [`bus::MAX_PERSIST_MESSAGE_BYTES`]): few to a message under light load, many under heavy load,
//! which is what lets the broker keep up.
//! One task on one channel also keeps every session's commands in order. At
//! most [`MAX_IN_FLIGHT`] rounds await their confirms at once; while they do,
//! new sends wait and then go out together, so the busier the broker, the
//! fewer and larger the messages.

use crate::metrics::Metrics;
use chat_shared::amqp::{ConfirmedPublisher, Outgoing, PendingConfirm, PublishError, Topology};
use chat_shared::batch;
use chat_shared::bus::{self, PersistCommand};
use chat_shared::telemetry::spans;
use chat_shared::telemetry::throttle::LogThrottle;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tracing::Instrument as _;

/// Most commands coalesced into one AMQP message.
pub const MAX_COMMANDS_PER_MESSAGE: usize = 256;
/// Rounds of publishes whose confirms may be outstanding at once. One: with
/// sends published transient a confirm takes a fraction of a millisecond when
/// the broker is idle, so a lone send hardly waits, and under load each round
/// carries everything that arrived during the previous one (measured against
/// 4 in docs/benchmarks.md).
const MAX_IN_FLIGHT: usize = 1;
/// A round of at least this many commands means the gateway is busy: the
/// next round then starts no sooner than [`BUSY_ROUND_INTERVAL`] after it, so
/// under load every AMQP message carries more commands (less broker work per
/// send), while a quiet gateway publishes each send at once (a lone send
/// right after a busy round waits out the rest of the interval).
const BUSY_ROUND: usize = 4;
const BUSY_ROUND_INTERVAL: Duration = Duration::from_millis(2);

/// Who answers a command the broker did not take (nacked, returned, not
/// confirmed in time, or not taken at all). A confirmed command needs no
/// answer here: its ack comes from the persister. So the publisher wakes no
/// session for a send that went well, and holds no task per send. (Should
/// the publishing task itself end, the sends it held are answered by their
/// sessions' `gateway.send_timeout_ms`.)
pub trait Refusals: Send + Sync + 'static {
    /// `command` was not taken, for `reason` (for logs).
    fn unconfirmed(&self, command: &PersistCommand, reason: &str);
}

#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<PersistCommand>,
    /// A full queue, logged at most every ten seconds.
    full: Arc<LogThrottle>,
}

impl Sender {
    /// Starts the publishing task.
    /// `linger`: how long a round that has taken what was waiting waits
    /// for more (`gateway.publish_linger_ms`; zero: not at all).
    /// `queue`: commands that may wait for it (`gateway.publish_queue`). A
    /// session whose command finds it full holds that command and reads no
    /// more frames until there is room (backpressure, in frame order), but
    /// never waits on the broker: it goes on with its timers, its outbound
    /// frames, shutdown and a lost broker.
    /// `refusals`: who answers the commands the broker did not take.
    pub fn spawn(
        publisher: ConfirmedPublisher,
        topo: &Topology,
        linger: Duration,
        queue: usize,
        refusals: Arc<dyn Refusals>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (sender, rx) = Self::channel(queue);
        let target = Target {
            exchange: topo.persist_exchange(),
            partitions: topo.partitions,
            persistent: topo.persistent_sends,
            linger,
        };
        tokio::spawn(publish_loop(rx, publisher, target, refusals, metrics));
        sender
    }

    /// A sender and the queue it fills, for the publishing task (or a
    /// test) to read.
    pub fn channel(queue: usize) -> (Self, mpsc::Receiver<PersistCommand>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let sender = Self {
            tx,
            full: Arc::new(LogThrottle::new(Duration::from_secs(10))),
        };
        (sender, rx)
    }

    /// Room for one command in the queue, now; when the queue is full
    /// (the broker is not keeping up, or not answering) the caller holds
    /// its command until [`Sender::reserve`] gives it room. Commands queued
    /// through rooms keep the order in which the rooms were used.
    pub fn try_reserve(&self) -> Result<Room<'_>, Refused> {
        self.tx.try_reserve().map(Room::Now).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                self.log_full();
                Refused::Full
            }
            mpsc::error::TrySendError::Closed(_) => Refused::Stopped,
        })
    }

    /// Waits for room in the queue; the room is kept until it is used or
    /// dropped. Cancel-safe (a dropped wait takes no room).
    pub fn reserve(
        &self,
    ) -> impl std::future::Future<Output = Result<Room<'static>, Refused>> + 'static {
        let tx = self.tx.clone();
        async move {
            tx.reserve_owned()
                .await
                .map(Room::Later)
                .map_err(|_| Refused::Stopped)
        }
    }

    fn log_full(&self) {
        if let Some(times) = self.full.hit() {
            tracing::warn!(
                capacity = self.tx.max_capacity(),
                times,
                key = "gateway.publish_queue",
                "the publish queue is full (the broker is not confirming): sessions hold their next command and read no more frames until there is room"
            );
        }
    }
}

/// Why there is no room for a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No room now.
    Full,
    /// The publishing task has ended (shutting down).
    Stopped,
}

/// Room for one command in the publisher's queue: found at once
/// ([`Sender::try_reserve`]) or waited for ([`Sender::reserve`]).
pub enum Room<'a> {
    Now(mpsc::Permit<'a, PersistCommand>),
    Later(mpsc::OwnedPermit<PersistCommand>),
}

impl Room<'_> {
    /// Queues `command` in the room kept for it.
    pub fn start(self, command: PersistCommand) {
        match self {
            Room::Now(permit) => permit.send(command),
            Room::Later(permit) => {
                permit.send(command);
            }
        }
    }
}

struct Target {
    exchange: String,
    partitions: u16,
    persistent: bool,
    linger: Duration,
}

async fn publish_loop(
    mut rx: mpsc::Receiver<PersistCommand>,
    publisher: ConfirmedPublisher,
    target: Target,
    refusals: Arc<dyn Refusals>,
    metrics: Arc<Metrics>,
) {
    // A round takes what is waiting and lingers from its first command.
    let limits = batch::Limits {
        max: MAX_COMMANDS_PER_MESSAGE,
        linger_from: 1,
        linger_until: MAX_COMMANDS_PER_MESSAGE,
        linger: target.linger,
    };
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // When the last round was busy, when it started: the next one waits for
    // the busy interval to pass.
    let mut busy_since: Option<Instant> = None;
    let mut spill = None;
    while let Some(first) = batch::first(&mut rx, &mut spill).await {
        // While the broker still owes the confirms of earlier rounds, sends
        // pile up here and go out together: coalescing grows with load.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        if let Some(since) = busy_since {
            tokio::time::sleep_until((since + BUSY_ROUND_INTERVAL).into()).await;
        }
        let started = Instant::now();
        let commands = batch::fill(first, &mut rx, &limits, &mut spill).await;
        busy_since = (commands.len() >= BUSY_ROUND).then_some(started);
        let round = publish_round(commands, &publisher, &target, &*refusals, &metrics).await;
        // The confirms are awaited off this loop, together (so a round
        // waits at most one confirm timeout); the permit goes back when the
        // whole round is answered.
        let confirms = await_confirms(round, metrics.clone(), refusals.clone());
        tokio::spawn(async move {
            confirms.await;
            drop(permit);
        });
    }
}

/// One AMQP message of a round: its confirm, its commands, when it went.
type Published = (PendingConfirm, Vec<PersistCommand>, Instant);

/// Publishes one AMQP message per partition of `commands` (more when they
/// exceed [`bus::MAX_PERSIST_MESSAGE_BYTES`]). Once the
/// channel has not taken one message in time, the rest of the round is
/// refused at once rather than each waiting as long.
async fn publish_round(
    commands: Vec<PersistCommand>,
    publisher: &ConfirmedPublisher,
    target: &Target,
    refusals: &dyn Refusals,
    metrics: &Metrics,
) -> Vec<Published> {
    let mut by_partition: BTreeMap<u16, Vec<PersistCommand>> = BTreeMap::new();
    for command in commands {
        let partition = bus::partition_of(command.conversation_id(), target.partitions);
        by_partition.entry(partition).or_default().push(command);
    }
    let mut round = Vec::with_capacity(by_partition.len());
    let mut stalled: Option<String> = None;
    for (partition, mut commands) in by_partition {
        // At most MAX_PERSIST_MESSAGE_BYTES a message, which bounds what a
        // persister holds (`persister.max_inflight_bytes`).
        for (count, payload) in bus::encode_split(&commands, bus::MAX_PERSIST_MESSAGE_BYTES) {
            let rest = commands.split_off(count);
            let these = std::mem::replace(&mut commands, rest);
            if let Some(e) = &stalled {
                refuse(refusals, &these, e);
                continue;
            }
            let message = Message {
                partition,
                commands: &these,
                payload: &payload,
            };
            match publish_partition(message, publisher, target, metrics).await {
                Ok(confirm) => round.push((confirm, these, Instant::now())),
                Err(e) => {
                    if matches!(e, PublishError::Stalled(_)) {
                        metrics.persist_publish_stalls.inc();
                        stalled = Some(e.to_string());
                    }
                    refuse(refusals, &these, &e.to_string());
                }
            }
        }
    }
    if let Some(e) = &stalled {
        tracing::warn!(error = %e, "persist publishes stalled; their sends are answered unavailable");
    }
    round
}

/// One AMQP message of a round: commands of one partition, encoded.
struct Message<'a> {
    partition: u16,
    commands: &'a [PersistCommand],
    payload: &'a [u8],
}

/// Publishes one message of persist commands, linked to each traced send
/// in it; its context goes out in the AMQP headers.
async fn publish_partition(
    Message {
        partition,
        commands,
        payload,
    }: Message<'_>,
    publisher: &ConfirmedPublisher,
    target: &Target,
    metrics: &Metrics,
) -> Result<PendingConfirm, PublishError> {
    metrics.persist_publishes.inc();
    metrics.persist_commands.inc_by(commands.len() as u64);
    let key = partition.to_string();
    let span = spans::publish(
        "persist",
        &key,
        commands.len(),
        commands.iter().map(PersistCommand::trace),
    );
    let message = Outgoing {
        exchange: &target.exchange,
        routing_key: &key,
        cc: &[],
        payload,
        persistent: target.persistent,
        mandatory: true,
        reason: None,
    };
    publisher.start(message).instrument(span).await
}

/// Awaits a round's confirms together; what the broker did not confirm is
/// answered by `refusals`.
async fn await_confirms(round: Vec<Published>, metrics: Arc<Metrics>, refusals: Arc<dyn Refusals>) {
    let answers = round.into_iter().map(|(confirm, commands, published)| {
        let metrics = metrics.clone();
        let refusals = refusals.clone();
        async move {
            let verdict = confirm.wait().await;
            metrics
                .persist_confirm_seconds
                .observe(published.elapsed().as_secs_f64());
            if let Err(e) = verdict {
                refuse(&*refusals, &commands, &e.to_string());
            }
        }
    });
    futures_util::future::join_all(answers).await;
}

/// The broker did not take the AMQP message carrying `commands`: one log
/// line for them all, and each answered by `refusals`.
fn refuse(refusals: &dyn Refusals, commands: &[PersistCommand], reason: &str) {
    tracing::warn!(commands = commands.len(), error = %reason, "persist publish not confirmed by the broker; its sends are answered unavailable, its read markers dropped");
    for command in commands {
        refusals.unconfirmed(command, reason);
    }
}
