//! The sessions this gateway hosts, and the routing that follows them: the
//! gateway's queue is bound to `shard.<n>` on the fan-out exchange while at
//! least one user of shard `n` has a session here, so each gateway receives
//! the traffic of the shards it hosts, and delivers each event only to the
//! recipients it names that are here.
//!
//! [`registry`] is who is here (pure data), [`route`] which of them get
//! which frame for an event (pure), [`bindings`] the broker side. The hub
//! puts them together, with the traces and metrics of each delivery.

mod bindings;
pub mod registry;
mod route;

pub use bindings::{AmqpBindings, ShardBindings};
pub use registry::SessionHandle;

use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::sender::Refusals;
use crate::server_sends::{Answer, ServerSends};
use chat_shared::bus::{GatewayEvent, PersistCommand};
use chat_shared::ids::UserId;
use chat_shared::protocol::Message;
use chat_shared::telemetry::propagation::TraceHeaders;
use chat_shared::telemetry::spans;
use registry::{Registry, TooManySessions};
use route::Routed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;

pub struct Hub {
    registry: Mutex<Registry>,
    /// The server API's sends waiting for their answer (version 2).
    pub server_sends: Arc<ServerSends>,
    /// One lock per shard: serialises that shard's bind and unbind, so its
    /// last user leaving and a new one arriving cannot leave the binding in
    /// the wrong state (on one channel, the broker applies them in the
    /// order sent). Per shard, so that a broker that stops answering holds
    /// only the sessions whose shard needs a (un)bind, not every session's
    /// setup and teardown behind one lock.
    routing: Vec<tokio::sync::Mutex<()>>,
    route_shards: u16,
    bindings: Arc<dyn ShardBindings>,
    /// How long a bind or unbind may take: a broker connection that stopped
    /// answering holds the setup and teardown of a shard's sessions at most
    /// this long each (`amqp.confirm_timeout_ms`); other shards' go on.
    binding_timeout: Duration,
    metrics: Arc<Metrics>,
}

/// Server API sends that may wait for their answer at once, per gateway.
const MAX_SERVER_SENDS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("user {0} already has the most sessions allowed here")]
    TooManySessions(UserId),
    #[error("could not route user {user} to this gateway: {source}")]
    Bind { user: UserId, source: lapin::Error },
    #[error("could not route user {user} to this gateway: the broker did not answer within {0:?}", .after)]
    BindTimeout { user: UserId, after: Duration },
}

impl Hub {
    pub fn new(
        bindings: Arc<dyn ShardBindings>,
        route_shards: u16,
        binding_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            registry: Mutex::new(Registry::new(route_shards)),
            server_sends: ServerSends::new(MAX_SERVER_SENDS),
            routing: (0..route_shards.max(1))
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            route_shards: route_shards.max(1),
            bindings,
            binding_timeout,
            metrics,
        }
    }

    /// The lock of `user`'s shard.
    fn routing_of(&self, user: UserId) -> &tokio::sync::Mutex<()> {
        let shard = chat_shared::amqp::Topology::shard_of(user, self.route_shards);
        &self.routing[usize::from(shard) % self.routing.len()]
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding this lock cannot leave the registry
        // half-updated (every update completes without panicking), so
        // poisoning is ignored.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a session; binds the user's shard first if it is the shard's
    /// first user here. Returns once the broker has the binding, so nothing
    /// stored after `hello` can miss this session; `true` when it was the
    /// user's first session here. A user who already has `max_per_user`
    /// sessions here gets none.
    pub async fn register(
        &self,
        user: UserId,
        handle: SessionHandle,
        max_per_user: usize,
    ) -> Result<bool, RegisterError> {
        let _routing = self.routing_of(user).lock().await;
        let admission = self
            .registry()
            .admit(user, max_per_user)
            .map_err(|TooManySessions| RegisterError::TooManySessions(user))?;
        if let Some(shard) = admission.bind {
            let after = self.binding_timeout;
            match tokio::time::timeout(after, self.bindings.bind(shard)).await {
                Ok(Ok(())) => {}
                Ok(Err(source)) => return Err(RegisterError::Bind { user, source }),
                Err(_) => return Err(RegisterError::BindTimeout { user, after }),
            }
        }
        Ok(self.registry().add(user, handle))
    }

    /// Removes a session (`true` when it was the user's last one here), and
    /// unbinds the user's shard when no user of it is left here.
    pub async fn unregister(&self, user: UserId, session_id: &str) -> bool {
        let _routing = self.routing_of(user).lock().await;
        let removal = self.registry().remove(user, session_id);
        if let Some(shard) = removal.unbind {
            // A failed or late unbind is harmless: deliveries for users with
            // no session here are dropped, and a later bind of the shard
            // goes out after it on the same channel.
            match tokio::time::timeout(self.binding_timeout, self.bindings.unbind(shard)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(shard, error = %e, "unbind failed"),
                Err(_) => tracing::warn!(shard, "unbind not answered in time; going on"),
            }
        }
        removal.last_of_user
    }

    /// The users with at least one session here.
    pub fn users(&self) -> Vec<UserId> {
        self.registry().users()
    }

    pub fn hosts(&self, user: UserId) -> bool {
        self.registry().hosts(user)
    }

    /// How many sessions `user` has here.
    pub fn sessions_of_user(&self, user: UserId) -> usize {
        self.registry().sessions_of_user(user)
    }

    /// Frames queued towards all sessions, not yet written.
    pub fn queued_frames(&self) -> usize {
        self.registry().queued_frames()
    }

    pub fn session_count(&self) -> usize {
        self.registry().session_count()
    }

    /// Every session here, as it stands (for the drain).
    pub fn sessions(&self) -> Vec<registry::SessionHandle> {
        self.registry().handles()
    }

    /// Delivers one bus event to the local sessions it concerns; `via` is
    /// the trace context of the publish that brought it (AMQP headers).
    pub fn dispatch(&self, event: GatewayEvent, via: Option<&TraceHeaders>) {
        let event = match event {
            GatewayEvent::Reply {
                session_id,
                outcome,
                ..
            } if ServerSends::is_server(&session_id) => {
                return self
                    .server_sends
                    .answer(&session_id, Answer::Outcome(outcome));
            }
            event => event,
        };
        let registry = self.registry();
        // The delivery on this gateway, in the trace of the frame that
        // caused it: only for a traced event that concerns a session here.
        let span = delivery_span(&event, &registry, via);
        let _in_span = span.enter();
        let stored = match &event {
            GatewayEvent::Stored {
                message, origin, ..
            } => Some(StoredFacts::of(
                message,
                origin.as_ref().and_then(|o| o.received_at_us),
            )),
            _ => None,
        };
        let routed = route::route(event, &registry, |session, out| self.offer(session, out));
        drop(registry);
        self.count(&routed);
        if let Some(stored) = stored {
            stored.record(&routed, &span, &self.metrics);
        }
    }

    fn count(&self, routed: &Routed) {
        self.metrics.acks_sent.inc_by(routed.acks as u64);
        self.metrics
            .messages_delivered
            .inc_by(routed.deliveries as u64);
        if let Some(code) = routed.refused {
            self.metrics.send_refused(code);
        }
    }

    /// Queues a frame without waiting: a session whose queue is full is too
    /// slow to keep up and is told to close (it catches up from history).
    fn offer(&self, session: &SessionHandle, out: Outbound) {
        if let Err(mpsc::error::TrySendError::Full(_)) = session.tx.try_send(out) {
            self.metrics.session_overflows.inc();
            session.overflow.notify_one();
        }
    }
}

/// The span of one event's delivery here: only for a traced send or typing
/// frame that concerns a session here (most events of a shard concern
/// other gateways).
fn delivery_span(
    event: &GatewayEvent,
    registry: &Registry,
    via: Option<&TraceHeaders>,
) -> tracing::Span {
    match event {
        GatewayEvent::Stored {
            message,
            member_ids,
            origin,
        } => {
            let trace = origin.as_ref().and_then(|o| o.trace.as_ref());
            let here = trace.filter(|_| member_ids.iter().any(|m| registry.hosts(*m)));
            let span = spans::process("process chat.fanout", "fanout", here, via);
            span.record("message.id", message.id.0);
            span
        }
        GatewayEvent::Typing {
            conversation_id,
            recipients,
            trace,
            ..
        } => {
            let here = trace
                .as_ref()
                .filter(|_| recipients.iter().any(|r| registry.hosts(*r)));
            let span = spans::process("process chat.typing", "fanout", here, via);
            span.record("conversation.id", conversation_id.get());
            span
        }
        _ => tracing::Span::none(),
    }
}

/// What a stored message's delivery records once it is handed out.
struct StoredFacts {
    id: i64,
    conversation: chat_shared::ids::ConversationId,
    seq: i64,
    created_at: chat_shared::time::Timestamp,
    received_at_us: Option<i64>,
}

impl StoredFacts {
    fn of(message: &Message, received_at_us: Option<i64>) -> Self {
        Self {
            id: message.id.0,
            conversation: message.conversation_id,
            seq: message.seq,
            created_at: message.created_at,
            received_at_us,
        }
    }

    fn record(&self, routed: &Routed, span: &tracing::Span, metrics: &Metrics) {
        if routed.sessions > 0 {
            // Stored (the persister's clock) -> handed to the sessions here
            // (recipients, or the sender's ack).
            let since = chrono::Utc::now() - self.created_at;
            let seconds = since.num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
            if routed.deliveries > 0 {
                metrics.delivery_seconds.observe(seconds);
            }
            span.record("chat.stored_to_here_ms", seconds * 1e3);
            if let Some(received) = self.received_at_us {
                // The send frame read (the sender's gateway's clock) ->
                // here: the message's whole way.
                let micros = chrono::Utc::now().timestamp_micros() - received;
                span.record("chat.send_to_here_ms", micros.max(0) as f64 / 1e3);
            }
        }
        tracing::debug!(
            message.id = self.id,
            conversation.id = %self.conversation,
            message.seq = self.seq,
            sessions = routed.sessions,
            "message delivered to local sessions"
        );
    }
}

/// The publisher's refusals go to the session that sent the command: a send
/// is answered by that session's ledger; a read marker is only logged (the
/// client's next `read` moves it).
impl Refusals for Hub {
    fn unconfirmed(&self, command: &PersistCommand, reason: &str) {
        match command {
            PersistCommand::Send(send) if ServerSends::is_server(&send.session_id) => {
                self.server_sends.answer(&send.session_id, Answer::NotTaken);
            }
            PersistCommand::Send(send) => {
                let registry = self.registry();
                let Some(session) = send
                    .sender_id
                    .user()
                    .and_then(|user| registry.session(user, &send.session_id))
                else {
                    return; // gone: nobody to answer
                };
                let id = Box::new(send.client_msg_id.clone());
                self.offer(session, Outbound::SendRefused(id));
            }
            PersistCommand::Read(read) => {
                tracing::debug!(user.id = %read.user_id, conversation.id = %read.conversation_id, error = %reason, "read marker not confirmed by the broker");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::registry::tests::{handle, user};
    use super::*;
    use futures_util::future::BoxFuture;

    /// Records every bind and unbind; fails binds, or never answers, when
    /// told to.
    #[derive(Default)]
    struct FakeBindings {
        calls: Mutex<Vec<String>>,
        failing: std::sync::atomic::AtomicBool,
        stuck: std::sync::atomic::AtomicBool,
    }

    impl FakeBindings {
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl ShardBindings for FakeBindings {
        fn bind(&self, shard: u16) -> BoxFuture<'_, Result<(), lapin::Error>> {
            self.calls.lock().unwrap().push(format!("bind {shard}"));
            let failing = self.failing.load(std::sync::atomic::Ordering::Relaxed);
            if self.stuck.load(std::sync::atomic::Ordering::Relaxed) {
                return Box::pin(std::future::pending());
            }
            Box::pin(async move {
                if failing {
                    Err(lapin::Error::from(lapin::ErrorKind::ChannelsLimitReached))
                } else {
                    Ok(())
                }
            })
        }
        fn unbind(&self, shard: u16) -> BoxFuture<'_, Result<(), lapin::Error>> {
            self.calls.lock().unwrap().push(format!("unbind {shard}"));
            if self.stuck.load(std::sync::atomic::Ordering::Relaxed) {
                return Box::pin(std::future::pending());
            }
            Box::pin(async { Ok(()) })
        }
    }

    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

    fn hub() -> (Hub, Arc<FakeBindings>) {
        let bindings = Arc::new(FakeBindings::default());
        let hub = Hub::new(bindings.clone(), 4, TIMEOUT, Arc::new(Metrics::new()));
        (hub, bindings)
    }

    #[tokio::test]
    async fn a_shard_is_bound_once_while_any_of_its_users_is_here() {
        let (hub, bindings) = hub();
        assert!(hub.register(user(1), handle("a").0, 8).await.unwrap());
        assert!(!hub.register(user(1), handle("b").0, 8).await.unwrap());
        assert!(hub.register(user(5), handle("c").0, 8).await.unwrap());
        assert_eq!(bindings.calls(), ["bind 1"]);
        assert!(!hub.unregister(user(1), "a").await);
        assert!(hub.unregister(user(1), "b").await);
        assert!(hub.unregister(user(5), "c").await);
        assert_eq!(bindings.calls(), ["bind 1", "unbind 1"]);
        assert_eq!(hub.session_count(), 0);
    }

    #[tokio::test]
    async fn a_session_whose_shard_cannot_be_bound_is_not_added() {
        let (hub, bindings) = hub();
        bindings
            .failing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let refused = hub.register(user(2), handle("a").0, 8).await;
        assert!(matches!(refused, Err(RegisterError::Bind { .. })));
        assert!(!hub.hosts(user(2)));
        // The next session of that shard tries again.
        bindings
            .failing
            .store(false, std::sync::atomic::Ordering::Relaxed);
        assert!(hub.register(user(2), handle("b").0, 8).await.unwrap());
        assert_eq!(bindings.calls(), ["bind 2", "bind 2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_broker_that_stops_answering_holds_sessions_only_for_the_timeout() {
        let (hub, bindings) = hub();
        hub.register(user(1), handle("a").0, 8).await.unwrap();
        bindings
            .stuck
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        // A session whose shard needs binding is refused after the timeout,
        // and is not added.
        let refused = hub.register(user(2), handle("b").0, 8).await;
        assert!(matches!(refused, Err(RegisterError::BindTimeout { .. })));
        assert_eq!(started.elapsed(), TIMEOUT);
        assert!(!hub.hosts(user(2)));
        // A session whose shard is bound (user 5 shares user 1's) needs no
        // broker.
        assert!(hub.register(user(5), handle("c").0, 8).await.unwrap());
        assert_eq!(started.elapsed(), TIMEOUT);
        assert!(hub.unregister(user(1), "a").await);
        assert_eq!(started.elapsed(), TIMEOUT);
        // The shard's last user leaves: the unbind goes unanswered, and the
        // teardown goes on after the timeout.
        assert!(hub.unregister(user(5), "c").await);
        assert_eq!(started.elapsed(), 2 * TIMEOUT);
        assert_eq!(hub.session_count(), 0);
    }

    /// A bind the broker never answers holds the sessions of its own shard
    /// only: another shard's new session, and the teardown of a session of
    /// a bound shard, go on at once.
    #[tokio::test(start_paused = true)]
    async fn a_stuck_bind_holds_only_its_own_shard() {
        let (hub, bindings) = hub();
        let hub = Arc::new(hub);
        hub.register(user(1), handle("a").0, 8).await.unwrap();
        hub.register(user(5), handle("b").0, 8).await.unwrap(); // shard 1 too
        bindings
            .stuck
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let waiting = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.register(user(2), handle("c").0, 8).await })
        };
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        // Shard 1 is bound: user 9 needs no broker, and neither does user
        // 5 leaving (user 1 is still here), although shard 2's bind hangs.
        assert!(hub.register(user(9), handle("d").0, 8).await.unwrap());
        assert!(hub.unregister(user(5), "b").await);
        assert_eq!(started.elapsed(), std::time::Duration::ZERO);
        let refused = waiting.await.expect("task");
        assert!(matches!(refused, Err(RegisterError::BindTimeout { .. })));
    }

    #[tokio::test]
    async fn a_user_beyond_the_session_limit_is_refused_without_binding() {
        let (hub, bindings) = hub();
        hub.register(user(3), handle("a").0, 1).await.unwrap();
        let refused = hub.register(user(3), handle("b").0, 1).await;
        assert!(matches!(refused, Err(RegisterError::TooManySessions(_))));
        assert_eq!(bindings.calls(), ["bind 3"]);
    }

    #[tokio::test]
    async fn a_full_session_queue_is_told_to_close_and_a_refused_send_reaches_its_session() {
        let (hub, _) = hub();
        let (a, mut rx) = handle("a");
        let overflow = a.overflow.clone();
        hub.register(user(1), a, 8).await.unwrap();
        let presence = |n: i64| GatewayEvent::Presence {
            user_id: user(n),
            status: chat_shared::protocol::PresenceStatus::Online,
            last_seen: None,
            recipients: vec![user(1)],
        };
        // The test handle's queue holds four frames; the fifth overflows.
        for n in 0..5 {
            hub.dispatch(presence(10 + n), None);
        }
        tokio::time::timeout(std::time::Duration::from_secs(1), overflow.notified())
            .await
            .expect("the session was told it fell behind");
        assert_eq!(hub.metrics.session_overflows.get(), 1);
        while rx.try_recv().is_ok() {}

        let send = chat_shared::bus::SendCommand {
            trace: None,
            received_at_us: None,
            session_id: "a".into(),
            reply_to: "gw.q".into(),
            conversation_id: chat_shared::ids::ConversationId::new(5).unwrap(),
            sender_id: user(1).into(),
            client_msg_id: chat_shared::ids::ClientMsgId::try_from("m1".to_owned()).unwrap(),
            body: "hi".into(),
            card: None,
            reply_when_stored: false,
        };
        hub.unconfirmed(&PersistCommand::Send(send.clone()), "nacked");
        assert!(matches!(rx.try_recv(), Ok(Outbound::SendRefused(id)) if id.as_str() == "m1"));

        // A server API send is answered to its waiting request instead.
        let mut waiting = hub.server_sends.wait().unwrap();
        let server_send = chat_shared::bus::SendCommand {
            session_id: waiting.session_id.clone(),
            reply_when_stored: true,
            ..send
        };
        hub.unconfirmed(&PersistCommand::Send(server_send), "nacked");
        assert!(matches!(waiting.answer().await, Some(Answer::NotTaken)));
        assert!(rx.try_recv().is_err(), "no session heard of it");
    }

    #[tokio::test]
    async fn a_reply_to_a_server_send_goes_to_its_request_not_to_a_session() {
        let hub = Hub::new(
            Arc::new(FakeBindings::default()),
            4,
            Duration::from_secs(1),
            Arc::new(Metrics::new()),
        );
        let mut waiting = hub.server_sends.wait().unwrap();
        let reply = GatewayEvent::Reply {
            user_id: chat_shared::ids::SenderId::SYSTEM,
            session_id: waiting.session_id.clone(),
            outcome: chat_shared::bus::SendOutcome::Refused {
                code: chat_shared::protocol::ErrorCode::NotFound,
                message: "no such conversation".into(),
                client_msg_id: chat_shared::ids::ClientMsgId::try_from("k".to_owned()).unwrap(),
            },
        };
        hub.dispatch(reply, None);
        assert!(matches!(
            waiting.answer().await,
            Some(Answer::Outcome(
                chat_shared::bus::SendOutcome::Refused { .. }
            ))
        ));
    }
}
