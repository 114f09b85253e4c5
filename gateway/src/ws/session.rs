//! One WebSocket session, from its first frame to its close: authenticate
//! (if the header did not), register with the hub, say `hello`, then serve
//! frames both ways until the client leaves, falls too far behind, stops
//! answering pings or reading, breaks the protocol, its token expires, or the
//! gateway shuts down. Every write has a deadline, so a client that stops
//! reading holds the loop (heartbeat, overflow) for at most
//! `gateway.write_timeout_ms`.

use crate::auth::{AuthUser, unix_now};
use crate::hub::{self, Outbound, RegisterError, SessionHandle};
use crate::limits::{ConnectionSlot, TokenBucket, retry_after_ms};
use crate::sender::Refused;
use crate::state::AppState;
use crate::store::Membership;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use chat_shared::bus::{PersistCommand, PresenceEvent, ReadCommand, SendCommand};
use chat_shared::ids::ClientMsgId;
use chat_shared::ids::ConversationId;
use chat_shared::protocol::{ClientFrame, ErrorCode, SendFrame, ServerFrame};
use chat_shared::telemetry::spans;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, MissedTickBehavior, interval};
use tracing::Instrument as _;

/// Close codes (protocol.md, docs/protocol.md and RFC 6455).
pub(super) mod close {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const TOO_SLOW: u16 = 1013;
    pub const INTERNAL: u16 = 1011;
    pub const SERVICE_RESTART: u16 = 1012;
    pub const UNAUTHORIZED: u16 = 4001;
    pub const TOO_MANY_SESSIONS: u16 = 4029;
}

/// How long a close frame may take to write before the socket is dropped.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Conversations a session remembers it is a member of (then forgets all).
const MEMBERSHIPS_REMEMBERED: usize = 64;

/// `_slot` is the client address's connection slot (when a load balancer
/// carried the connection); it is held until the session ends.
pub async fn run(
    mut socket: WebSocket,
    state: AppState,
    user: Option<AuthUser>,
    _slot: Option<ConnectionSlot>,
) {
    let user = match user {
        Some(user) => user,
        None => match auth_frame(&mut socket, &state).await {
            Ok(user) => user,
            Err(reason) => {
                state.metrics.connection_refused("auth_frame");
                close_with(&mut socket, close::UNAUTHORIZED, reason).await;
                return;
            }
        },
    };
    let session_id: Arc<str> = uuid::Uuid::new_v4().to_string().into();
    let (tx, rx) = mpsc::channel(state.settings.gateway.session_queue);
    let overflow = Arc::new(Notify::new());
    let handle = SessionHandle {
        session_id: session_id.clone(),
        tx,
        overflow: overflow.clone(),
    };
    let max_sessions = state.settings.gateway.limits.connections_per_user;
    match state.hub.register(user.user_id, handle, max_sessions).await {
        Ok(true) => state.presence.opened(user.user_id).await,
        Ok(false) => {}
        Err(RegisterError::TooManySessions(_)) => {
            state.metrics.refused("connections_per_user");
            let reason = "too many sessions for this user";
            close_with(&mut socket, close::TOO_MANY_SESSIONS, reason).await;
            return;
        }
        Err(e) => {
            tracing::error!(user.id = %user.user_id, error = %e, "session could not be routed");
            close_with(&mut socket, close::INTERNAL, "try another gateway").await;
            return;
        }
    }
    state.metrics.connections_opened.inc();
    tracing::debug!(user.id = %user.user_id, session.id = %session_id, "session opened");
    let now = Instant::now();
    let limits = &state.settings.gateway.limits;
    let mut session = Session {
        socket,
        state: state.clone(),
        user,
        session_id,
        pending: HashMap::new(),
        next_check: Instant::now(),
        typing_window: (now, 0),
        sends: TokenBucket::new(limits.sends_per_second, limits.sends_burst, now),
        reads: TokenBucket::new(limits.reads_per_second, limits.reads_burst, now),
        member_of: HashSet::new(),
        broken: None,
        parked: None,
    };
    let reason = session.serve(rx, overflow).await;
    let last = state
        .hub
        .unregister(session.user.user_id, &session.session_id)
        .await;
    if last {
        state.presence.closed(session.user.user_id).await;
    }
    state.metrics.closed(reason.label());
    tracing::debug!(user.id = %session.user.user_id, session.id = %session.session_id, ?reason, "session closed");
}

/// A connection without the header must send `auth` first, within the timeout.
async fn auth_frame(socket: &mut WebSocket, state: &AppState) -> Result<AuthUser, &'static str> {
    let timeout = Duration::from_millis(state.settings.auth.auth_timeout_ms);
    let first = tokio::time::timeout(timeout, socket.recv()).await;
    let Ok(Some(Ok(WsMessage::Text(text)))) = first else {
        return Err("expected an auth frame first");
    };
    match ClientFrame::parse(&text) {
        Ok(ClientFrame::Auth { token }) => state.keys.verify(&token).map_err(|_| "invalid token"),
        _ => Err("expected an auth frame first"),
    }
}

/// Says goodbye with `code`, unless the client does not even read that.
pub(super) async fn close_with(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(
        CLOSE_WRITE_TIMEOUT,
        socket.send(WsMessage::Close(Some(frame))),
    )
    .await;
}

#[derive(Debug, Clone, Copy)]
enum Ended {
    ClientLeft,
    TooSlow,
    Unresponsive,
    Shutdown,
    SocketError,
    /// A write did not complete within `gateway.write_timeout_ms`.
    WriteStalled,
    TokenExpired,
    /// The client broke RFC 6455 (bad UTF-8, an oversized frame, ...).
    ProtocolError,
    /// The broker was unreachable for `gateway.broker_lost_ms`.
    BrokerLost,
}

impl Ended {
    fn label(self) -> &'static str {
        match self {
            Ended::ClientLeft => "client_left",
            Ended::TooSlow => "too_slow",
            Ended::Unresponsive => "heartbeat_timeout",
            Ended::Shutdown => "shutdown",
            Ended::SocketError => "socket_error",
            Ended::WriteStalled => "write_timeout",
            Ended::TokenExpired => "token_expired",
            Ended::ProtocolError => "protocol_error",
            Ended::BrokerLost => "broker_lost",
        }
    }
}

struct Session {
    socket: WebSocket,
    state: AppState,
    user: AuthUser,
    session_id: Arc<str>,
    /// Sends published but not yet answered, with when they were sent.
    pending: HashMap<ClientMsgId, Instant>,
    /// Typing frames forwarded in the current one-second window.
    typing_window: (Instant, u32),
    /// `send` and `read` frames this session may still send now.
    sends: TokenBucket,
    reads: TokenBucket,
    /// Conversations the user is known to be a member of.
    member_of: HashSet<ConversationId>,
    /// Set when a write failed: the loop ends the session with it.
    broken: Option<Ended>,
    /// When the session's timer fires next ([`Session::deadline`]).
    next_check: Instant,
    /// A command the publisher's queue had no room for: until it is queued
    /// the session reads no more frames (backpressure, in frame order), and
    /// goes on with everything else.
    parked: Option<Parked>,
}

struct Parked {
    command: Box<PersistCommand>,
    span: tracing::Span,
}

/// What was handed to the publisher, for the bookkeeping once it is queued.
enum Submitted {
    Send {
        client_msg_id: ClientMsgId,
        conversation_id: ConversationId,
    },
    Read {
        conversation_id: ConversationId,
    },
}

impl Submitted {
    fn of(command: &PersistCommand) -> Self {
        match command {
            PersistCommand::Send(send) => Submitted::Send {
                client_msg_id: send.client_msg_id.clone(),
                conversation_id: send.conversation_id,
            },
            PersistCommand::Read(read) => Submitted::Read {
                conversation_id: read.conversation_id,
            },
        }
    }
}

/// The instant of a Unix time in seconds, at most a day ahead (a timer set
/// that far is set again when it fires; `Instant` cannot hold any time).
fn instant_of_unix(now: Instant, unix_secs: i64) -> Instant {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let at = Duration::from_secs(u64::try_from(unix_secs).unwrap_or(0));
    now + at
        .saturating_sub(since_epoch)
        .min(Duration::from_secs(86_400))
}

/// Typing frames one session may send per second; more are `rate_limited`.
/// (Every one becomes a presence event, and the presence queue is shared.)
const MAX_TYPING_PER_SECOND: u32 = 10;

impl Session {
    async fn serve(&mut self, mut rx: mpsc::Receiver<Outbound>, overflow: Arc<Notify>) -> Ended {
        let settings = self.state.settings.clone();
        let settings = &settings.gateway;
        let hello = ServerFrame::Hello {
            user_id: self.user.user_id,
            session_id: self.session_id.to_string(),
            heartbeat_ms: settings.heartbeat_ms,
            max_body_chars: settings.max_body_chars,
        };
        if let Err(ended) = self.write(hub::frame(&hello)).await {
            return ended;
        }
        let heartbeat_timeout = Duration::from_millis(settings.heartbeat_timeout_ms);
        let send_timeout = Duration::from_millis(settings.send_timeout_ms);
        let mut heartbeat = interval(Duration::from_millis(settings.heartbeat_ms));
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        heartbeat.reset();
        // One timer for the session's deadlines (its token's expiry, the
        // oldest unanswered send's timeout), set to the nearest: no periodic
        // wake-up, so idle sessions cost no CPU.
        self.next_check = self.deadline(send_timeout);
        let timer = tokio::time::sleep_until(self.next_check);
        tokio::pin!(timer);
        let mut shutdown = self.state.shutdown.clone();
        let mut broker_lost = self.state.broker_lost.clone();
        let mut last_heard = Instant::now();

        loop {
            if let Some(ended) = self.broken {
                return ended;
            }
            if timer.deadline() != self.next_check {
                timer.as_mut().reset(self.next_check);
            }
            tokio::select! {
                _ = shutdown.changed() => {
                    Box::pin(self.drain(&mut rx)).await;
                    close_with(&mut self.socket, close::SERVICE_RESTART, "gateway restarting").await;
                    return Ended::Shutdown;
                }
                Ok(()) = broker_lost.changed() => {
                    let lost = *broker_lost.borrow_and_update();
                    if lost {
                        close_with(&mut self.socket, close::INTERNAL, "gateway lost its broker; reconnect elsewhere").await;
                        return Ended::BrokerLost;
                    }
                }
                _ = overflow.notified() => {
                    close_with(&mut self.socket, close::TOO_SLOW, "too far behind; reconnect and catch up").await;
                    return Ended::TooSlow;
                }
                Some(out) = rx.recv() => {
                    if let Some(frame) = self.outbound_frame(out)
                        && let Err(ended) = self.write(frame).await
                    {
                        return ended;
                    }
                }
                // Room for the command held back: queue it, and read again.
                room = self.state.sender.reserve(), if self.parked.is_some() => {
                    last_heard = Instant::now(); // nothing was read meanwhile
                    if let Some(Parked { command, span }) = self.parked.take() {
                        let what = Submitted::of(&command);
                        match room {
                            Ok(room) => {
                                span.in_scope(|| room.start(*command));
                                self.published(what);
                            }
                            Err(_) => self.not_queued(what).await,
                        }
                    }
                }
                // Frame handling is boxed: it is big, and only exists while a
                // frame is being handled, so an idle session stays small.
                incoming = self.socket.recv(), if self.parked.is_none() => {
                    last_heard = Instant::now();
                    match incoming {
                        None | Some(Ok(WsMessage::Close(_))) => return Ended::ClientLeft,
                        Some(Err(e)) => return self.on_socket_error(e).await,
                        Some(Ok(WsMessage::Text(text))) => Box::pin(self.on_text(&text)).await,
                        Some(Ok(WsMessage::Binary(_))) => {
                            self.refuse(ErrorCode::BadRequest, "binary frames are not supported", None).await;
                        }
                        // Pings are answered by the WebSocket layer; pongs only prove life.
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                    }
                }
                _ = heartbeat.tick() => {
                    // While a command is held nothing is read, so silence
                    // is ours, not the client's.
                    if self.parked.is_none() && last_heard.elapsed() > heartbeat_timeout {
                        close_with(&mut self.socket, close::NORMAL, "heartbeat timeout").await;
                        return Ended::Unresponsive;
                    }
                    if let Err(ended) = self.send_message(WsMessage::Ping(Default::default())).await {
                        return ended;
                    }
                }
                () = &mut timer => {
                    if unix_now() >= self.user.expires_at {
                        close_with(&mut self.socket, close::UNAUTHORIZED, "token expired").await;
                        return Ended::TokenExpired;
                    }
                    Box::pin(self.expire_pending(send_timeout)).await;
                    // A fired timer must be set again before it is polled.
                    self.next_check = self.deadline(send_timeout);
                    timer.as_mut().reset(self.next_check);
                }
            }
        }
    }

    /// When the session must next look at its clock: its token's expiry,
    /// or the timeout of its oldest unanswered send, never now or earlier.
    fn deadline(&self, send_timeout: Duration) -> Instant {
        let now = Instant::now();
        let oldest = self.pending.values().min().map(|sent| *sent + send_timeout);
        let expiry = instant_of_unix(now, self.user.expires_at);
        oldest
            .map_or(expiry, |due| due.min(expiry))
            .max(now + Duration::from_millis(1))
    }

    /// The frame to write for `out`, if any; an answered send leaves
    /// `pending`. A refusal of a send already answered writes nothing.
    fn outbound_frame(&mut self, out: Outbound) -> Option<axum::extract::ws::Utf8Bytes> {
        match out {
            Outbound::Frame(frame) => Some(frame),
            Outbound::SendAnswered {
                client_msg_id,
                frame,
            } => {
                if let Some(sent) = self.pending.remove(&client_msg_id) {
                    let waited = sent.elapsed().as_secs_f64();
                    self.state.metrics.send_ack_seconds.observe(waited);
                }
                Some(frame)
            }
            Outbound::SendRefused(client_msg_id) => {
                self.pending.remove(&client_msg_id)?;
                self.state.metrics.send_refused(ErrorCode::Unavailable);
                Some(hub::unavailable(&client_msg_id))
            }
        }
    }

    /// The gateway is shutting down: read nothing more, but let the sends in
    /// flight get their answers (ack or error) within the shutdown grace, so
    /// a client is not left guessing about what it sent just before.
    async fn drain(&mut self, rx: &mut mpsc::Receiver<Outbound>) {
        let grace = Duration::from_millis(self.state.settings.gateway.shutdown_grace_ms);
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        while !self.pending.is_empty() && self.broken.is_none() {
            let out = tokio::select! {
                out = rx.recv() => out,
                () = &mut deadline => break,
            };
            let Some(out) = out else { break };
            if let Some(frame) = self.outbound_frame(out)
                && self.write(frame).await.is_err()
            {
                break;
            }
        }
    }

    /// Writes one message within `gateway.write_timeout_ms`. A failure marks
    /// the session broken, so the loop ends it on its next turn.
    async fn send_message(&mut self, message: WsMessage) -> Result<(), Ended> {
        if let Some(ended) = self.broken {
            return Err(ended);
        }
        let deadline = Duration::from_millis(self.state.settings.gateway.write_timeout_ms);
        let ended = match tokio::time::timeout(deadline, self.socket.send(message)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(_)) => Ended::SocketError,
            Err(_) => {
                tracing::info!(user.id = %self.user.user_id, session.id = %self.session_id, "client stopped reading; closing the session");
                Ended::WriteStalled
            }
        };
        self.broken = Some(ended);
        Err(ended)
    }

    async fn write(&mut self, frame: axum::extract::ws::Utf8Bytes) -> Result<(), Ended> {
        self.send_message(WsMessage::Text(frame)).await
    }

    /// A read that failed below the JSON layer: RFC 6455 says how to close.
    async fn on_socket_error(&mut self, error: axum::Error) -> Ended {
        let inner = error.into_inner();
        let Some((code, reason)) = super::protocol_close(&inner) else {
            return Ended::SocketError;
        };
        tracing::debug!(user.id = %self.user.user_id, code, error = %inner, "closing on a protocol error");
        close_with(&mut self.socket, code, reason).await;
        Ended::ProtocolError
    }

    async fn refuse(&mut self, code: ErrorCode, message: &str, client_msg_id: Option<String>) {
        self.state.metrics.send_refused(code);
        let frame = ServerFrame::Error {
            code,
            message: message.to_owned(),
            client_msg_id,
            retry_after_ms: None,
        };
        let _ = self.write(hub::frame(&frame)).await;
    }

    /// `rate_limited`, counted under `limit`.
    async fn rate_limited(
        &mut self,
        limit: &'static str,
        message: &str,
        client_msg_id: Option<String>,
        wait: Duration,
    ) {
        self.state.metrics.refused(limit);
        let frame = ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message: message.to_owned(),
            client_msg_id,
            retry_after_ms: Some(retry_after_ms(wait)),
        };
        let _ = self.write(hub::frame(&frame)).await;
    }

    /// Answers `forbidden` (and says so) when the user is not a member.
    async fn refused_as_non_member(&mut self, conversation: ConversationId) -> bool {
        if self.is_member(conversation).await {
            return false;
        }
        let message = "not a member of this conversation";
        self.refuse(ErrorCode::Forbidden, message, None).await;
        true
    }

    /// Whether the user is a member of `conversation`: asked of Postgres
    /// once per conversation and session, then remembered. When Postgres
    /// cannot answer, the frame goes on and the service behind decides.
    async fn is_member(&mut self, conversation: ConversationId) -> bool {
        if self.member_of.contains(&conversation) {
            return true;
        }
        match self
            .state
            .store
            .membership(conversation, self.user.user_id)
            .await
        {
            Ok(Membership::Member) => {
                if self.member_of.len() >= MEMBERSHIPS_REMEMBERED {
                    self.member_of.clear();
                }
                self.member_of.insert(conversation);
                true
            }
            Ok(Membership::NotMember | Membership::NoSuchConversation) => false,
            Err(e) => {
                tracing::warn!(conversation.id = %conversation, error = %e, "membership check failed; letting the frame through");
                true
            }
        }
    }

    async fn on_text(&mut self, text: &str) {
        match ClientFrame::parse(text) {
            Err(e) => {
                let _ = self.write(hub::frame(&e.into_frame())).await;
            }
            Ok(ClientFrame::Ping) => {
                let _ = self.write(hub::frame(&ServerFrame::Pong)).await;
            }
            Ok(ClientFrame::Send(send)) => self.on_send(send).await,
            Ok(ClientFrame::Auth { .. }) => {
                self.refuse(ErrorCode::BadRequest, "already authenticated", None)
                    .await;
            }
            Ok(ClientFrame::Typing {
                conversation_id,
                state,
            }) => {
                // Relayed (and throttled) by the presence service.
                let (window, count) = &mut self.typing_window;
                if window.elapsed() >= Duration::from_secs(1) {
                    *window = Instant::now();
                    *count = 0;
                }
                if *count >= MAX_TYPING_PER_SECOND {
                    let wait = Duration::from_secs(1).saturating_sub(window.elapsed());
                    self.rate_limited("typing_per_second", "too many typing frames", None, wait)
                        .await;
                    return;
                }
                *count += 1;
                if self.refused_as_non_member(conversation_id).await {
                    return;
                }
                let user_id = self.user.user_id;
                // The producer span of this typing frame (only when traces
                // are exported): presence's relay and every delivery of it
                // are its children.
                let (span, trace) = spans::create("presence", "typing", |span| {
                    span.record("conversation.id", conversation_id.get());
                });
                let event = PresenceEvent::Typing {
                    conversation_id,
                    user_id,
                    state,
                    trace,
                };
                // Published inside its span: one event, so the creation
                // context is also the publish's, in the AMQP headers.
                self.state.presence.publish(event).instrument(span).await;
            }
            Ok(ClientFrame::Read {
                conversation_id,
                seq,
            }) => self.on_read(conversation_id, seq).await,
        }
    }

    /// A read marker goes down the persist path with the messages, so it is
    /// stored in the same group commits; the persister relays it if it moved.
    async fn on_read(&mut self, conversation_id: ConversationId, seq: i64) {
        if seq < 0 {
            self.refuse(ErrorCode::BadRequest, "seq must not be negative", None)
                .await;
            return;
        }
        if let Err(wait) = self.reads.take(Instant::now()) {
            self.rate_limited("reads_per_second", "too many read frames", None, wait)
                .await;
            return;
        }
        if self.refused_as_non_member(conversation_id).await {
            return;
        }
        let command = PersistCommand::Read(ReadCommand {
            conversation_id,
            user_id: self.user.user_id,
            seq,
        });
        // The producer span of this read frame (only when traces are
        // exported), like a send's.
        let (span, _) = spans::create("persist", "read", |span| {
            span.record("conversation.id", conversation_id.get());
        });
        self.submit(command, span).await;
    }

    async fn on_send(&mut self, send: SendFrame) {
        let client_msg_id = send.client_msg_id.clone();
        let body = match send.body(self.state.settings.gateway.max_body_chars) {
            Ok(body) => body,
            Err(e) => {
                self.refuse(e.code, &e.message, e.client_msg_id).await;
                return;
            }
        };
        if self.pending.len() >= self.state.settings.gateway.max_pending_sends
            && !self.pending.contains_key(&client_msg_id)
        {
            self.state.metrics.send_refused(ErrorCode::RateLimited);
            let id = Some(client_msg_id.as_str().to_owned());
            let message = "too many sends waiting for their ack";
            self.rate_limited("max_pending_sends", message, id, Duration::from_secs(1))
                .await;
            return;
        }
        let now = Instant::now();
        let limited = match self.sends.take(now) {
            Err(wait) => Some(("sends_per_second", wait)),
            Ok(()) => match self.state.limits.user_sends.take(self.user.user_id, now) {
                Err(wait) => Some(("user_sends_per_second", wait)),
                Ok(()) => None,
            },
        };
        if let Some((limit, wait)) = limited {
            self.state.metrics.send_refused(ErrorCode::RateLimited);
            let id = Some(client_msg_id.as_str().to_owned());
            self.rate_limited(limit, "too many sends; wait and send it again", id, wait)
                .await;
            return;
        }
        // The producer span of this send (only when traces are exported):
        // the persister's batch links to it, and every gateway's delivery of
        // the message is its child.
        let (span, trace) = spans::create("persist", "send", |span| {
            span.record("chat.client_msg_id", client_msg_id.as_str());
            span.record("conversation.id", send.conversation_id.get());
        });
        let received_at_us = trace
            .as_ref()
            .map(|_| chrono::Utc::now().timestamp_micros());
        let command = SendCommand {
            trace,
            received_at_us,
            session_id: self.session_id.to_string(),
            reply_to: self.state.queue.to_string(),
            conversation_id: send.conversation_id,
            sender_id: self.user.user_id,
            client_msg_id: client_msg_id.clone(),
            body: body.into_inner(),
        };
        // Published here, in frame order, so one session's sends keep their
        // order; the confirm is awaited off this loop.
        self.submit(PersistCommand::Send(command), span).await;
    }

    /// Hands `command` to the publisher, in frame order. With no room in
    /// its queue the session holds the command and reads no more frames
    /// until there is ([`Session::serve`]): later sends never overtake it.
    async fn submit(&mut self, command: PersistCommand, span: tracing::Span) {
        let what = Submitted::of(&command);
        match span.in_scope(|| self.state.sender.try_start(command)) {
            Ok(()) => self.published(what),
            Err(Refused::Full(command)) => self.parked = Some(Parked { command, span }),
            Err(Refused::Stopped) => self.not_queued(what).await,
        }
    }

    /// A command is queued for the broker: a send waits for its ack. If
    /// the broker does not take it, the publisher has the hub answer it
    /// `unavailable` (`Refusals`); if nothing answers it in
    /// `gateway.send_timeout_ms`, this session does.
    fn published(&mut self, what: Submitted) {
        let Submitted::Send {
            client_msg_id,
            conversation_id,
        } = what
        else {
            return;
        };
        self.state.metrics.sends_received.inc();
        tracing::debug!(
            user.id = %self.user.user_id,
            session.id = %self.session_id,
            conversation.id = %conversation_id,
            client_msg_id = client_msg_id.as_str(),
            "send published"
        );
        let now = Instant::now();
        self.pending.insert(client_msg_id, now);
        let timeout = Duration::from_millis(self.state.settings.gateway.send_timeout_ms);
        self.next_check = self.next_check.min(now + timeout);
    }

    /// The publisher has stopped (the gateway is shutting down): a send is
    /// answered `unavailable` (send it again, elsewhere).
    async fn not_queued(&mut self, what: Submitted) {
        match what {
            Submitted::Send { client_msg_id, .. } => {
                self.refuse(
                    ErrorCode::Unavailable,
                    "message not accepted, send it again",
                    Some(client_msg_id.as_str().to_owned()),
                )
                .await;
            }
            Submitted::Read { conversation_id } => {
                tracing::debug!(user.id = %self.user.user_id, conversation.id = %conversation_id, "read marker not queued: the publisher stopped");
            }
        }
    }

    /// Sends still unanswered after the timeout get `unavailable`: resending
    /// with the same client_msg_id is safe, it is never stored twice.
    async fn expire_pending(&mut self, timeout: Duration) {
        let now = Instant::now();
        let expired: Vec<ClientMsgId> = self
            .pending
            .iter()
            .filter(|(_, sent)| now.duration_since(**sent) >= timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.pending.remove(&id);
            self.state.metrics.send_refused(ErrorCode::Unavailable);
            if self.write(hub::unavailable(&id)).await.is_err() {
                return;
            }
        }
    }
}
