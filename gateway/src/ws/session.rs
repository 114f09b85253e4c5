//! One WebSocket session, from its first frame to its close: authenticate
//! (if the header did not), register with the hub, say `hello`, then serve
//! frames both ways until the client leaves, falls too far behind, stops
//! answering pings, or the gateway shuts down.

use crate::auth::{AuthUser, unix_now};
use crate::hub::{self, Outbound, SessionHandle};
use crate::state::AppState;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use chat_shared::bus::{PersistCommand, PresenceEvent, ReadCommand, SendCommand};
use chat_shared::ids::ClientMsgId;
use chat_shared::ids::ConversationId;
use chat_shared::protocol::{ClientFrame, ErrorCode, SendFrame, ServerFrame};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, MissedTickBehavior, interval};

/// Close codes (protocol.md and RFC 6455).
mod close {
    pub const NORMAL: u16 = 1000;
    pub const TOO_SLOW: u16 = 1013;
    pub const INTERNAL: u16 = 1011;
    pub const SERVICE_RESTART: u16 = 1012;
    pub const UNAUTHORIZED: u16 = 4001;
}

pub async fn run(mut socket: WebSocket, state: AppState, user: Option<AuthUser>) {
    let user = match user {
        Some(user) => user,
        None => match auth_frame(&mut socket, &state).await {
            Ok(user) => user,
            Err(reason) => {
                state.metrics.connections_refused.inc();
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
        tx: tx.clone(),
        overflow: overflow.clone(),
    };
    match state.hub.register(user.user_id, handle).await {
        Ok(true) => state.presence.opened(user.user_id).await,
        Ok(false) => {}
        Err(e) => {
            tracing::error!(user.id = %user.user_id, error = %e, "session could not be routed");
            close_with(&mut socket, close::INTERNAL, "try another gateway").await;
            return;
        }
    }
    state.metrics.connections_opened.inc();
    tracing::debug!(user.id = %user.user_id, session.id = %session_id, "session opened");
    let mut session = Session {
        socket,
        state: state.clone(),
        user,
        session_id,
        tx,
        pending: HashMap::new(),
        typing_window: (Instant::now(), 0),
    };
    let reason = session.serve(rx, overflow).await;
    let last = state
        .hub
        .unregister(session.user.user_id, &session.session_id)
        .await;
    if last {
        state.presence.closed(session.user.user_id).await;
    }
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
        Ok(ClientFrame::Auth { token }) => state
            .keys
            .verify(&token, unix_now())
            .map_err(|_| "invalid token"),
        _ => Err("expected an auth frame first"),
    }
}

async fn close_with(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = socket.send(WsMessage::Close(Some(frame))).await;
}

#[derive(Debug)]
enum Ended {
    ClientLeft,
    TooSlow,
    Unresponsive,
    Shutdown,
    SocketError,
}

struct Session {
    socket: WebSocket,
    state: AppState,
    user: AuthUser,
    session_id: Arc<str>,
    /// A sender to this session's own queue, for answers produced here.
    tx: mpsc::Sender<Outbound>,
    /// Sends published but not yet answered, with when they were sent.
    pending: HashMap<ClientMsgId, Instant>,
    /// Typing frames forwarded in the current one-second window.
    typing_window: (Instant, u32),
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
        };
        if self.write(hub::frame(&hello)).await.is_err() {
            return Ended::SocketError;
        }
        let heartbeat_timeout = Duration::from_millis(settings.heartbeat_timeout_ms);
        let send_timeout = Duration::from_millis(settings.send_timeout_ms);
        let mut heartbeat = interval(Duration::from_millis(settings.heartbeat_ms));
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        heartbeat.reset();
        let mut sweep = interval(Duration::from_millis(500));
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut shutdown = self.state.shutdown.clone();
        let mut last_heard = Instant::now();

        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    close_with(&mut self.socket, close::SERVICE_RESTART, "gateway restarting").await;
                    return Ended::Shutdown;
                }
                _ = overflow.notified() => {
                    close_with(&mut self.socket, close::TOO_SLOW, "too far behind; reconnect and catch up").await;
                    return Ended::TooSlow;
                }
                Some(out) = rx.recv() => {
                    let frame = match out {
                        Outbound::Frame(frame) => frame,
                        Outbound::SendAnswered { client_msg_id, frame } => {
                            self.pending.remove(&client_msg_id);
                            frame
                        }
                    };
                    if self.write(frame).await.is_err() {
                        return Ended::SocketError;
                    }
                }
                // Frame handling is boxed: it is big, and only exists while a
                // frame is being handled, so an idle session stays small.
                incoming = self.socket.recv() => {
                    last_heard = Instant::now();
                    match incoming {
                        None | Some(Ok(WsMessage::Close(_))) => return Ended::ClientLeft,
                        Some(Err(_)) => return Ended::SocketError,
                        Some(Ok(WsMessage::Text(text))) => Box::pin(self.on_text(&text)).await,
                        Some(Ok(WsMessage::Binary(_))) => {
                            self.refuse(ErrorCode::BadRequest, "binary frames are not supported", None).await;
                        }
                        // Pings are answered by the WebSocket layer; pongs only prove life.
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > heartbeat_timeout {
                        close_with(&mut self.socket, close::NORMAL, "heartbeat timeout").await;
                        return Ended::Unresponsive;
                    }
                    if self.socket.send(WsMessage::Ping(Default::default())).await.is_err() {
                        return Ended::SocketError;
                    }
                }
                _ = sweep.tick() => Box::pin(self.expire_pending(send_timeout)).await,
            }
        }
    }

    async fn write(&mut self, frame: axum::extract::ws::Utf8Bytes) -> Result<(), axum::Error> {
        self.socket.send(WsMessage::Text(frame)).await
    }

    async fn refuse(&mut self, code: ErrorCode, message: &str, client_msg_id: Option<String>) {
        self.state.metrics.sends_refused.inc();
        let frame = ServerFrame::Error {
            code,
            message: message.to_owned(),
            client_msg_id,
            retry_after_ms: None,
        };
        let _ = self.write(hub::frame(&frame)).await;
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
                    let frame = ServerFrame::Error {
                        code: ErrorCode::RateLimited,
                        message: "too many typing frames".into(),
                        client_msg_id: None,
                        retry_after_ms: Some(wait.as_millis() as u64),
                    };
                    let _ = self.write(hub::frame(&frame)).await;
                    return;
                }
                *count += 1;
                let user_id = self.user.user_id;
                let event = PresenceEvent::Typing {
                    conversation_id,
                    user_id,
                    state,
                };
                self.state.presence.publish(event).await;
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
        let command = PersistCommand::Read(ReadCommand {
            conversation_id,
            user_id: self.user.user_id,
            seq,
        });
        match self.state.sender.start(command).await {
            Ok(confirm) => {
                let user = self.user.user_id;
                tokio::spawn(async move {
                    if let Err(e) = confirm.wait().await {
                        tracing::warn!(user.id = %user, conversation.id = %conversation_id, error = %e, "read marker not confirmed by the broker");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(user.id = %self.user.user_id, conversation.id = %conversation_id, error = %e, "read marker not accepted by the broker");
            }
        }
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
            self.state.metrics.sends_refused.inc();
            let frame = ServerFrame::Error {
                code: ErrorCode::RateLimited,
                message: "too many sends waiting for their ack".into(),
                client_msg_id: Some(client_msg_id.as_str().to_owned()),
                retry_after_ms: Some(1000),
            };
            let _ = self.write(hub::frame(&frame)).await;
            return;
        }
        let command = SendCommand {
            session_id: self.session_id.to_string(),
            reply_to: self.state.queue.to_string(),
            conversation_id: send.conversation_id,
            sender_id: self.user.user_id,
            client_msg_id: client_msg_id.clone(),
            body: body.into_inner(),
        };
        // Published here, in frame order, so one session's sends keep their
        // order; the confirm is awaited off this loop.
        let conversation_id = command.conversation_id;
        match self.state.sender.start(PersistCommand::Send(command)).await {
            Err(e) => {
                tracing::warn!(user.id = %self.user.user_id, conversation.id = %conversation_id, error = %e, "send not accepted by the broker");
                self.refuse(
                    ErrorCode::Unavailable,
                    "message not accepted, send it again",
                    Some(client_msg_id.as_str().to_owned()),
                )
                .await;
            }
            Ok(confirm) => {
                self.state.metrics.sends_received.inc();
                tracing::debug!(
                    user.id = %self.user.user_id,
                    session.id = %self.session_id,
                    conversation.id = %conversation_id,
                    client_msg_id = client_msg_id.as_str(),
                    "send published"
                );
                self.pending.insert(client_msg_id.clone(), Instant::now());
                let tx = self.tx.clone();
                let user = self.user.user_id;
                tokio::spawn(async move {
                    if let Err(e) = confirm.wait().await {
                        tracing::warn!(user.id = %user, error = %e, "send not confirmed by the broker");
                        let frame = unavailable(&client_msg_id);
                        let _ = tx
                            .send(Outbound::SendAnswered {
                                client_msg_id: Box::new(client_msg_id),
                                frame,
                            })
                            .await;
                    }
                });
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
            .filter(|(_, sent)| now.duration_since(**sent) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.pending.remove(&id);
            self.state.metrics.sends_refused.inc();
            if self.write(unavailable(&id)).await.is_err() {
                return;
            }
        }
    }
}

fn unavailable(client_msg_id: &ClientMsgId) -> axum::extract::ws::Utf8Bytes {
    hub::frame(&ServerFrame::Error {
        code: ErrorCode::Unavailable,
        message: "message not confirmed in time, send it again".into(),
        client_msg_id: Some(client_msg_id.as_str().to_owned()),
        retry_after_ms: None,
    })
}
