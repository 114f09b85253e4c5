//! One WebSocket session, from its first frame to its close: authenticate
//! (if the header did not), register with the hub, say `hello`, then serve
//! frames both ways until the client leaves, falls too far behind, stops
//! answering pings or reading, breaks the protocol, its token expires, or the
//! gateway shuts down.
//!
//! The loop only moves bytes and timers: what each client frame means is
//! [`super::frames`], which sends still await an answer is
//! [`super::ledger`]. Every write has a deadline, so a client that stops
//! reading holds the loop for at most `gateway.write_timeout_ms`. The loop
//! is generic over the socket, so unit tests drive it through channels.

use super::close::{self, Ended};
use super::context::SessionContext;
use super::frames::{Action, SessionState};
use crate::auth::AuthUser;
use crate::hub::{RegisterError, SessionHandle};
use crate::limits::ConnectionSlot;
use crate::outbound::{Outbound, encode};
use crate::sender::{Refused, Room};
use crate::state::AppState;
use axum::extract::ws::{Message as WsMessage, Utf8Bytes, WebSocket};
use chat_shared::bus::PersistCommand;
use chat_shared::ids::ConversationId;
use chat_shared::protocol::{ClientFrame, ServerFrame};
use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use std::sync::Arc;
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, MissedTickBehavior, interval};

/// What a session reads from and writes to: a WebSocket, or channels in tests.
pub trait Socket:
    Sink<WsMessage, Error = axum::Error> + Stream<Item = Result<WsMessage, axum::Error>> + Unpin + Send
{
}

impl<S> Socket for S where
    S: Sink<WsMessage, Error = axum::Error>
        + Stream<Item = Result<WsMessage, axum::Error>>
        + Unpin
        + Send
{
}

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
                close::send(&mut socket, close::UNAUTHORIZED, reason).await;
                return;
            }
        },
    };
    state.profiles.token_used(&user);
    let user_id = user.user_id;
    let session_id: Arc<str> = uuid::Uuid::new_v4().to_string().into();
    let (tx, rx) = mpsc::channel(state.settings.gateway.session_queue.get());
    let overflow = Arc::new(Notify::new());
    let handle = SessionHandle {
        session_id: session_id.clone(),
        tx,
        overflow: overflow.clone(),
    };
    let max_sessions = state.settings.gateway.limits.connections_per_user.get();
    match state.hub.register(user_id, handle, max_sessions).await {
        Ok(true) => state.presence.opened(user_id),
        Ok(false) => {}
        Err(RegisterError::TooManySessions(_)) => {
            state.metrics.refused("connections_per_user");
            let reason = "too many sessions for this user";
            close::send(&mut socket, close::TOO_MANY_SESSIONS, reason).await;
            return;
        }
        Err(e) => {
            tracing::error!(user.id = %user_id, error = %e, "session could not be routed");
            close::send(&mut socket, close::INTERNAL, "try another gateway").await;
            return;
        }
    }
    state.metrics.connections_opened.inc();
    tracing::debug!(user.id = %user_id, session.id = %session_id, "session opened");
    let session = Session::new(socket, state.sessions.clone(), user, session_id.clone());
    let reason = session.serve(rx, overflow).await;
    if state.hub.unregister(user_id, &session_id).await {
        state.presence.closed(user_id);
    }
    state.metrics.closed(reason.label());
    tracing::debug!(user.id = %user_id, session.id = %session_id, ?reason, "session closed");
}

/// A connection without the header must send `auth` first, within the timeout.
async fn auth_frame(socket: &mut WebSocket, state: &AppState) -> Result<AuthUser, &'static str> {
    let timeout = state.settings.auth.auth_timeout;
    let first = tokio::time::timeout(timeout, socket.recv()).await;
    let Ok(Some(Ok(WsMessage::Text(text)))) = first else {
        return Err("expected an auth frame first");
    };
    match ClientFrame::parse(&text) {
        Ok(ClientFrame::Auth { token }) => state.keys.verify(&token).map_err(|_| "invalid token"),
        _ => Err("expected an auth frame first"),
    }
}

pub struct Session<S> {
    socket: S,
    ctx: Arc<SessionContext>,
    state: SessionState,
    /// Set when a write failed: the loop ends the session with it.
    broken: Option<Ended>,
    /// When the session's timer fires next ([`SessionState::deadline`]).
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

impl<S: Socket> Session<S> {
    pub fn new(socket: S, ctx: Arc<SessionContext>, user: AuthUser, session_id: Arc<str>) -> Self {
        let now = Instant::now();
        let state = SessionState::new(
            user,
            session_id,
            ctx.reply_to.clone(),
            &ctx.rules,
            ctx.limits.clone(),
            ctx.metrics.clone(),
            now,
        );
        Self {
            socket,
            ctx,
            state,
            broken: None,
            next_check: now,
            parked: None,
        }
    }

    /// Serves the session until it ends; `rx` is what the hub hands it,
    /// `overflow` is woken when it could not keep up with that.
    pub async fn serve(mut self, mut rx: mpsc::Receiver<Outbound>, overflow: Arc<Notify>) -> Ended {
        let timing = self.ctx.timing.clone();
        if let Err(ended) = self.write(encode(&self.hello())).await {
            return ended;
        }
        let mut heartbeat = interval(timing.heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        heartbeat.reset();
        // One timer for the session's deadlines (its token's expiry, the
        // oldest unanswered send's timeout), set to the nearest: no periodic
        // wake-up, so idle sessions cost no CPU.
        self.next_check = self.state.deadline(Instant::now());
        let timer = tokio::time::sleep_until(self.next_check);
        tokio::pin!(timer);
        let mut shutdown = self.ctx.shutdown.clone();
        let mut broker_lost = self.ctx.broker_lost.clone();
        let mut last_heard = Instant::now();
        loop {
            if let Some(ended) = self.broken {
                return ended;
            }
            if timer.deadline() != self.next_check {
                timer.as_mut().reset(self.next_check);
            }
            tokio::select! {
                _ = shutdown.changed() => return self.shut_down(&mut rx).await,
                Ok(()) = broker_lost.changed() => {
                    if *broker_lost.borrow_and_update() {
                        let reason = "gateway lost its broker; reconnect elsewhere";
                        return self.close(close::INTERNAL, reason, Ended::BrokerLost).await;
                    }
                }
                _ = overflow.notified() => {
                    let reason = "too far behind; reconnect and catch up";
                    return self.close(close::TOO_SLOW, reason, Ended::TooSlow).await;
                }
                Some(out) = rx.recv() => {
                    if matches!(out, Outbound::Restart) {
                        return self.shut_down(&mut rx).await;
                    }
                    self.deliver(out).await;
                }
                // Room for the command held back: queue it, and read again.
                room = self.ctx.sender.reserve(), if self.parked.is_some() => {
                    last_heard = Instant::now(); // nothing was read meanwhile
                    self.unpark(room).await;
                }
                // Frame handling is boxed: it is big, and only exists while a
                // frame is being handled, so an idle session stays small.
                incoming = self.socket.next(), if self.parked.is_none() => {
                    last_heard = Instant::now();
                    if let Some(ended) = Box::pin(self.on_incoming(incoming)).await {
                        return ended;
                    }
                }
                _ = heartbeat.tick() => {
                    // While a command is held nothing is read, so silence
                    // is ours, not the client's.
                    if self.parked.is_none() && last_heard.elapsed() > timing.heartbeat_timeout {
                        return self.close(close::NORMAL, "heartbeat timeout", Ended::Unresponsive).await;
                    }
                    let _ = self.send_message(WsMessage::Ping(Default::default())).await;
                }
                () = &mut timer => {
                    if self.state.token_expired() {
                        return self.close(close::UNAUTHORIZED, "token expired", Ended::TokenExpired).await;
                    }
                    Box::pin(self.expire_pending()).await;
                }
            }
        }
    }

    fn hello(&self) -> ServerFrame {
        ServerFrame::Hello {
            user_id: self.state.user_id(),
            session_id: self.state.session_id.to_string(),
            heartbeat_ms: self.ctx.timing.heartbeat.as_millis() as u64,
            max_body_chars: self.ctx.rules.max_body_chars,
        }
    }

    /// One read from the socket; `Some` when it ends the session.
    async fn on_incoming(
        &mut self,
        incoming: Option<Result<WsMessage, axum::Error>>,
    ) -> Option<Ended> {
        let action = match incoming {
            None | Some(Ok(WsMessage::Close(_))) => return Some(Ended::ClientLeft),
            Some(Err(e)) => return Some(self.on_socket_error(e).await),
            Some(Ok(WsMessage::Text(text))) => self.state.on_text(&text, Instant::now()),
            Some(Ok(WsMessage::Binary(_))) => self.state.on_binary(),
            // Pings are answered by the WebSocket layer; pongs only prove life.
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => return None,
        };
        self.act(action).await;
        None
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::Reply(frame) => {
                let _ = self.write(frame).await;
            }
            Action::Persist {
                command,
                span,
                member_of,
            } => {
                if self.admits(member_of).await && self.unblocked(&command).await {
                    self.submit(command, span).await;
                }
            }
            Action::Typing {
                event,
                span,
                member_of,
            } => {
                if self.admits(Some(member_of)).await {
                    self.ctx.presence.publish_in(event, span);
                }
            }
        }
    }

    /// The membership gate: a frame about a conversation the user is not
    /// in is answered `forbidden` and goes no further.
    async fn admits(&mut self, conversation: Option<ConversationId>) -> bool {
        let Some(conversation) = conversation else {
            return true;
        };
        let user = self.state.user_id();
        if self.ctx.members.admits(conversation, user).await {
            return true;
        }
        let refusal = self.state.not_a_member();
        let _ = self.write(refusal).await;
        false
    }

    /// The block gate (version 2): a send in a direct conversation between
    /// two users with a block, either way, is answered `blocked` and goes
    /// no further (nothing is stored).
    async fn unblocked(&mut self, command: &PersistCommand) -> bool {
        let PersistCommand::Send(send) = command else {
            return true;
        };
        let user = self.state.user_id();
        let Some(peer) = self
            .ctx
            .members
            .direct_peer(send.conversation_id, user)
            .await
        else {
            return true;
        };
        if !self.ctx.blocks.between(user, peer).await {
            return true;
        }
        let refusal = self.state.blocked(&send.client_msg_id);
        let _ = self.write(refusal).await;
        false
    }

    /// Hands `command` to the publisher, in frame order. With no room in
    /// its queue the session holds the command and reads no more frames
    /// until there is ([`Session::serve`]): later sends never overtake it.
    async fn submit(&mut self, command: PersistCommand, span: tracing::Span) {
        let refused = match self.ctx.sender.try_reserve() {
            // (The room borrows the context: the state and timer are passed apart.)
            Ok(room) => {
                queue(&mut self.state, &mut self.next_check, room, command, span);
                return;
            }
            Err(refused) => refused,
        };
        match refused {
            Refused::Full => {
                let command = Box::new(command);
                self.parked = Some(Parked { command, span });
            }
            Refused::Stopped => self.not_queued(&command).await,
        }
    }

    async fn unpark(&mut self, room: Result<Room<'static>, Refused>) {
        let Some(Parked { command, span }) = self.parked.take() else {
            return;
        };
        match room {
            Ok(room) => queue(&mut self.state, &mut self.next_check, room, *command, span),
            Err(_) => self.not_queued(&command).await,
        }
    }

    async fn not_queued(&mut self, command: &PersistCommand) {
        if let Some(answer) = self.state.not_queued(command) {
            let _ = self.write(answer).await;
        }
    }

    async fn deliver(&mut self, out: Outbound) {
        if let Some(frame) = self.state.on_outbound(out) {
            let _ = self.write(frame).await;
        }
    }

    /// Sends still unanswered after the timeout get `unavailable`.
    async fn expire_pending(&mut self) {
        let now = Instant::now();
        for answer in self.state.expired(now) {
            if self.write(answer).await.is_err() {
                break;
            }
        }
        // A fired timer must be set again before it is polled.
        self.next_check = self.state.deadline(now);
    }

    /// The gateway is shutting down: read nothing more, but let the sends in
    /// flight get their answers (ack or error) within the shutdown grace, so
    /// a client is not left guessing about what it sent just before.
    async fn shut_down(&mut self, rx: &mut mpsc::Receiver<Outbound>) -> Ended {
        let deadline = tokio::time::sleep(self.ctx.timing.shutdown_grace);
        tokio::pin!(deadline);
        while !self.state.ledger.is_empty() && self.broken.is_none() {
            let out = tokio::select! {
                out = rx.recv() => out,
                () = &mut deadline => break,
            };
            let Some(out) = out else { break };
            self.deliver(out).await;
        }
        self.close(
            close::SERVICE_RESTART,
            "gateway restarting",
            Ended::Shutdown,
        )
        .await
    }

    async fn close(&mut self, code: u16, reason: &str, ended: Ended) -> Ended {
        close::send(&mut self.socket, code, reason).await;
        ended
    }

    /// Writes one message within `gateway.write_timeout_ms`. A failure marks
    /// the session broken, so the loop ends it on its next turn.
    async fn send_message(&mut self, message: WsMessage) -> Result<(), Ended> {
        if let Some(ended) = self.broken {
            return Err(ended);
        }
        let deadline = self.ctx.timing.write_timeout;
        let ended = match tokio::time::timeout(deadline, self.socket.send(message)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(_)) => Ended::SocketError,
            Err(_) => {
                tracing::info!(user.id = %self.state.user_id(), session.id = %self.state.session_id, "client stopped reading; closing the session");
                Ended::WriteStalled
            }
        };
        self.broken = Some(ended);
        Err(ended)
    }

    async fn write(&mut self, frame: Utf8Bytes) -> Result<(), Ended> {
        self.send_message(WsMessage::Text(frame)).await
    }

    /// A read that failed below the JSON layer: RFC 6455 says how to close.
    async fn on_socket_error(&mut self, error: axum::Error) -> Ended {
        let inner = error.into_inner();
        let Some((code, reason)) = close::for_protocol_error(&inner) else {
            return Ended::SocketError;
        };
        tracing::debug!(user.id = %self.state.user_id(), code, error = %inner, "closing on a protocol error");
        self.close(code, reason, Ended::ProtocolError).await
    }
}

/// Queues `command` in `room`; a send joins the ledger, and the session's
/// timer covers its deadline.
fn queue(
    state: &mut SessionState,
    next_check: &mut Instant,
    room: Room<'_>,
    command: PersistCommand,
    span: tracing::Span,
) {
    if let Some(due) = state.queued(&command, Instant::now()) {
        *next_check = (*next_check).min(due);
    }
    span.in_scope(|| room.start(command));
}
