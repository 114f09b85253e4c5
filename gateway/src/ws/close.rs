//! How a session ends: the close codes it sends (protocol.md,
//! docs/protocol.md and RFC 6455) and why it ended (the
//! `gateway_sessions_closed_total` label).

use axum::extract::ws::{CloseFrame, Message as WsMessage};
use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use std::time::Duration;

pub const NORMAL: u16 = 1000;
pub const PROTOCOL_ERROR: u16 = 1002;
pub const INVALID_DATA: u16 = 1007;
pub const TOO_BIG: u16 = 1009;
pub const TOO_SLOW: u16 = 1013;
pub const INTERNAL: u16 = 1011;
pub const SERVICE_RESTART: u16 = 1012;
pub const UNAUTHORIZED: u16 = 4001;
pub const TOO_MANY_SESSIONS: u16 = 4029;

/// How long the closing handshake may take before the socket is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Says goodbye with `code`, and completes the closing handshake: reads
/// (and drops) whatever the client still sends until its own close frame,
/// so the connection ends after ours with a FIN. Dropping a socket with
/// unread data makes the kernel send a reset, which can lose the close
/// frame on its way (the client then sees 1006). A client that does not
/// answer within [`HANDSHAKE_TIMEOUT`] is dropped anyway.
pub async fn send<S, E>(socket: &mut S, code: u16, reason: &str)
where
    S: Sink<WsMessage> + Stream<Item = Result<WsMessage, E>> + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let handshake = async {
        if socket.send(WsMessage::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, WsMessage::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await;
}

/// How RFC 6455 says to close after a read failed below the message layer
/// (bad UTF-8, an oversized frame, a malformed one), or `None` when the
/// connection is simply gone.
pub fn for_protocol_error(error: &axum::BoxError) -> Option<(u16, &'static str)> {
    match error.downcast_ref::<tungstenite::Error>()? {
        tungstenite::Error::Utf8(_) => Some((INVALID_DATA, "text frame is not UTF-8")),
        tungstenite::Error::Capacity(_) => Some((TOO_BIG, "frame too large")),
        tungstenite::Error::Protocol(_) => Some((PROTOCOL_ERROR, "protocol error")),
        _ => None,
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
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
    pub fn label(self) -> &'static str {
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
