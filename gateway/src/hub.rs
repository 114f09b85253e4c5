//! The sessions this gateway hosts, by user, and the routing that follows
//! them: the gateway's queue is bound to `shard.<n>` on the fan-out exchange
//! while at least one user of shard `n` has a session here, so each gateway
//! receives the traffic of the shards it hosts, and delivers each event only
//! to the recipients it names that are here.

use crate::metrics::Metrics;
use crate::sender::Refusals;
use axum::extract::ws::Utf8Bytes;
use chat_shared::amqp::Topology;
use chat_shared::bus::{GatewayEvent, PersistCommand, SendOutcome};
use chat_shared::ids::{ClientMsgId, UserId};
use chat_shared::protocol::{ErrorCode, ServerFrame};
use chat_shared::telemetry::propagation::TraceHeaders;
use chat_shared::telemetry::spans;
use lapin::Channel;
use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, mpsc};

/// What the hub hands a session.
#[derive(Debug)]
pub enum Outbound {
    /// A frame to write as it is.
    Frame(Utf8Bytes),
    /// The answer to one of this session's sends (clears it from pending).
    /// The id is boxed to keep this enum, and so every session's queue, small.
    SendAnswered {
        client_msg_id: Box<ClientMsgId>,
        frame: Utf8Bytes,
    },
    /// The broker did not take one of this session's sends: `unavailable`,
    /// written (and counted) only if the send is still unanswered, since
    /// its timeout may have answered it already.
    SendRefused(Box<ClientMsgId>),
}

/// The hub's handle on one session.
#[derive(Clone)]
pub struct SessionHandle {
    pub session_id: Arc<str>,
    pub tx: mpsc::Sender<Outbound>,
    /// Woken when the session's queue overflowed: the session closes itself.
    pub overflow: Arc<Notify>,
}

pub struct Hub {
    sessions: Mutex<HashMap<UserId, Vec<SessionHandle>>>,
    /// Serialises bind and unbind so a shard's last user leaving and a new
    /// one arriving cannot leave the binding in the wrong state.
    routing: tokio::sync::Mutex<Routing>,
    metrics: Arc<Metrics>,
}

struct Routing {
    channel: Channel,
    queue: String,
    exchange: String,
    topo: Topology,
    /// Users here per bound shard (a shard is bound while its count is > 0).
    users_per_shard: HashMap<u16, usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("user {0} already has the most sessions allowed here")]
    TooManySessions(UserId),
    #[error("could not route user {user} to this gateway: {source}")]
    Bind { user: UserId, source: lapin::Error },
}

impl Hub {
    pub fn new(channel: Channel, queue: String, topo: &Topology, metrics: Arc<Metrics>) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            routing: tokio::sync::Mutex::new(Routing {
                channel,
                queue,
                exchange: topo.fanout_exchange(),
                topo: topo.clone(),
                users_per_shard: HashMap::new(),
            }),
            metrics,
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<UserId, Vec<SessionHandle>>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (every update is a single push or retain), so poisoning is ignored.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
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
        let mut routing = self.routing.lock().await;
        if self.sessions_of_user(user) >= max_per_user {
            return Err(RegisterError::TooManySessions(user));
        }
        let first = !self.sessions().contains_key(&user);
        if first {
            let shard = routing.topo.route_shard(user);
            if routing.users_per_shard.get(&shard).copied().unwrap_or(0) == 0 {
                routing
                    .channel
                    .queue_bind(
                        routing.queue.clone().into(),
                        routing.exchange.clone().into(),
                        Topology::shard_key(shard).into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|source| RegisterError::Bind { user, source })?;
            }
            *routing.users_per_shard.entry(shard).or_insert(0) += 1;
        }
        self.sessions().entry(user).or_default().push(handle);
        Ok(first)
    }

    /// Removes a session (`true` when it was the user's last one here), and
    /// unbinds the user's shard when no user of it is left here.
    pub async fn unregister(&self, user: UserId, session_id: &str) -> bool {
        let mut routing = self.routing.lock().await;
        let last = {
            let mut sessions = self.sessions();
            let Some(list) = sessions.get_mut(&user) else {
                return false;
            };
            list.retain(|s| &*s.session_id != session_id);
            let last = list.is_empty();
            if last {
                sessions.remove(&user);
            }
            last
        };
        if !last {
            return false;
        }
        let shard = routing.topo.route_shard(user);
        let left = match routing.users_per_shard.get_mut(&shard) {
            Some(count) => {
                *count = count.saturating_sub(1);
                *count
            }
            None => 0,
        };
        if left == 0 {
            routing.users_per_shard.remove(&shard);
            let unbound = routing
                .channel
                .queue_unbind(
                    routing.queue.clone().into(),
                    routing.exchange.clone().into(),
                    Topology::shard_key(shard).into(),
                    FieldTable::default(),
                )
                .await;
            if let Err(e) = unbound {
                // Harmless: deliveries for users with no session here are dropped.
                tracing::warn!(shard, error = %e, "unbind failed");
            }
        }
        true
    }

    /// The users with at least one session here.
    pub fn users(&self) -> Vec<UserId> {
        self.sessions().keys().copied().collect()
    }

    /// How many sessions `user` has here.
    pub fn sessions_of_user(&self, user: UserId) -> usize {
        self.sessions().get(&user).map_or(0, Vec::len)
    }

    pub fn hosts(&self, user: UserId) -> bool {
        self.sessions().contains_key(&user)
    }

    /// Frames queued towards all sessions, not yet written.
    pub fn queued_frames(&self) -> usize {
        self.sessions()
            .values()
            .flatten()
            .map(|s| s.tx.max_capacity() - s.tx.capacity())
            .sum()
    }

    pub fn session_count(&self) -> usize {
        self.sessions().values().map(Vec::len).sum()
    }

    /// Delivers one bus event to the local sessions it concerns; `via` is
    /// the trace context of the publish that brought it (AMQP headers).
    pub fn dispatch(&self, event: GatewayEvent, via: Option<&TraceHeaders>) {
        match event {
            GatewayEvent::Stored {
                message,
                member_ids,
                origin,
            } => {
                // The delivery on this gateway, in the send's trace: only for
                // a traced send that concerns a session here (most events
                // of a shard concern other gateways).
                let trace = origin.as_ref().and_then(|o| o.trace.as_ref());
                let here = trace.filter(|_| member_ids.iter().any(|m| self.hosts(*m)));
                let span = spans::process("process chat.fanout", "fanout", here, via);
                span.record("message.id", message.id.0);
                let _in_span = span.enter();
                let received_at_us = origin.as_ref().and_then(|o| o.received_at_us);
                let origin = origin.map(|o| o.session_id);
                // Serialised once, and only if a local session needs it: with
                // coalesced events most of them concern other gateways.
                let mut delivery = None;
                let mut ack = None;
                let mut sessions = 0usize;
                for member in &member_ids {
                    let member = *member;
                    for session in self.sessions_of(member) {
                        if origin.as_deref() == Some(&*session.session_id) {
                            let frame = ack
                                .get_or_insert_with(|| {
                                    frame(&ServerFrame::Ack {
                                        client_msg_id: message.client_msg_id.clone(),
                                        message: message.clone(),
                                    })
                                })
                                .clone();
                            self.metrics.acks_sent.inc();
                            let client_msg_id = Box::new(message.client_msg_id.clone());
                            self.offer(
                                &session,
                                Outbound::SendAnswered {
                                    client_msg_id,
                                    frame,
                                },
                            );
                        } else {
                            self.metrics.messages_delivered.inc();
                            let delivery = delivery
                                .get_or_insert_with(|| {
                                    frame(&ServerFrame::Message {
                                        message: message.clone(),
                                    })
                                })
                                .clone();
                            self.offer(&session, Outbound::Frame(delivery));
                        }
                        sessions += 1;
                    }
                }
                if sessions > 0 {
                    // Stored (the persister's clock) -> handed to the
                    // sessions here (recipients, or the sender's ack).
                    let since = chrono::Utc::now() - message.created_at;
                    let seconds = since.num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
                    if delivery.is_some() {
                        self.metrics.delivery_seconds.observe(seconds);
                    }
                    span.record("chat.stored_to_here_ms", seconds * 1e3);
                    if let Some(received) = received_at_us {
                        // The send frame read (the sender's gateway's
                        // clock) -> here: the message's whole way.
                        let micros = chrono::Utc::now().timestamp_micros() - received;
                        span.record("chat.send_to_here_ms", micros.max(0) as f64 / 1e3);
                    }
                }
                tracing::debug!(
                    message.id = message.id.0,
                    conversation.id = %message.conversation_id,
                    message.seq = message.seq,
                    sessions,
                    "message delivered to local sessions"
                );
            }
            GatewayEvent::Reply {
                user_id,
                session_id,
                outcome,
            } => {
                let Some(session) = self.session(user_id, &session_id) else {
                    return;
                };
                let (client_msg_id, reply) = match outcome {
                    SendOutcome::Stored { message } => {
                        self.metrics.acks_sent.inc();
                        let id = message.client_msg_id.clone();
                        (
                            id.clone(),
                            ServerFrame::Ack {
                                client_msg_id: id,
                                message,
                            },
                        )
                    }
                    SendOutcome::Refused {
                        code,
                        message,
                        client_msg_id,
                    } => {
                        self.metrics.send_refused(code);
                        let frame = ServerFrame::Error {
                            code,
                            message,
                            client_msg_id: Some(client_msg_id.as_str().to_owned()),
                            retry_after_ms: None,
                        };
                        (client_msg_id, frame)
                    }
                };
                self.offer(
                    &session,
                    Outbound::SendAnswered {
                        client_msg_id: Box::new(client_msg_id),
                        frame: frame(&reply),
                    },
                );
            }
            GatewayEvent::Typing {
                conversation_id,
                user_id,
                state,
                recipients,
                trace,
            } => {
                let here = trace
                    .as_ref()
                    .filter(|_| recipients.iter().any(|r| self.hosts(*r)));
                let span = spans::process("process chat.typing", "fanout", here, via);
                span.record("conversation.id", conversation_id.get());
                let _in_span = span.enter();
                self.offer_all(&recipients, || ServerFrame::Typing {
                    conversation_id,
                    user_id,
                    state,
                });
            }
            GatewayEvent::Read {
                conversation_id,
                user_id,
                seq,
                recipients,
            } => {
                self.offer_all(&recipients, || ServerFrame::Read {
                    conversation_id,
                    user_id,
                    seq,
                });
            }
            GatewayEvent::Presence {
                user_id,
                status,
                last_seen,
                recipients,
            } => {
                self.offer_all(&recipients, || ServerFrame::Presence {
                    user_id,
                    status,
                    last_seen,
                });
            }
            GatewayEvent::ConversationAdded {
                conversation,
                member_ids,
            } => {
                self.offer_all(&member_ids, || ServerFrame::Conversation {
                    conversation: conversation.clone(),
                });
            }
        }
    }

    /// Queues one frame to every local session of `users`; it is built and
    /// serialised once, on the first local session found.
    fn offer_all(&self, users: &[UserId], make: impl Fn() -> ServerFrame) {
        let mut serialised: Option<Utf8Bytes> = None;
        for user in users {
            for session in self.sessions_of(*user) {
                let frame = serialised.get_or_insert_with(|| frame(&make())).clone();
                self.offer(&session, Outbound::Frame(frame));
            }
        }
    }

    /// One session of `user`, by its id (answers meant for it alone).
    fn session(&self, user: UserId, session_id: &str) -> Option<SessionHandle> {
        let sessions = self.sessions();
        sessions
            .get(&user)?
            .iter()
            .find(|s| *s.session_id == *session_id)
            .cloned()
    }

    fn sessions_of(&self, user: UserId) -> Vec<SessionHandle> {
        self.sessions().get(&user).cloned().unwrap_or_default()
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

/// The publisher's refusals go to the session that sent the command: a send
/// is answered `unavailable` (send it again, same `client_msg_id`); a read
/// marker is only logged (the client's next `read` moves it).
impl Refusals for Hub {
    fn unconfirmed(&self, command: &PersistCommand, reason: &str) {
        match command {
            PersistCommand::Send(send) => {
                let Some(session) = self.session(send.sender_id, &send.session_id) else {
                    return; // gone: nobody to answer
                };
                self.offer(
                    &session,
                    Outbound::SendRefused(Box::new(send.client_msg_id.clone())),
                );
            }
            PersistCommand::Read(read) => {
                tracing::debug!(user.id = %read.user_id, conversation.id = %read.conversation_id, error = %reason, "read marker not confirmed by the broker");
            }
        }
    }
}

/// The answer to a send the broker did not take, or that was not acked in
/// time: resending it with the same `client_msg_id` is always safe.
pub fn unavailable(client_msg_id: &ClientMsgId) -> Utf8Bytes {
    frame(&ServerFrame::Error {
        code: ErrorCode::Unavailable,
        message: "message not confirmed in time, send it again".into(),
        client_msg_id: Some(client_msg_id.as_str().to_owned()),
        retry_after_ms: None,
    })
}

/// Serialises a server frame once; the result is shared by every recipient.
pub fn frame(frame: &ServerFrame) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(frame).unwrap_or_default())
}
