//! What reaches a session from the rest of the gateway: frames to write,
//! and the answers to its sends (which its ledger settles). Each frame is
//! serialised once and shared by every session it goes to.

use axum::extract::ws::Utf8Bytes;
use chat_shared::ids::ClientMsgId;
use chat_shared::protocol::ServerFrame;

/// What the hub hands a session.
#[derive(Debug)]
pub enum Outbound {
    /// A frame to write as it is.
    Frame(Utf8Bytes),
    /// The persister's answer to one of this session's sends (ack or
    /// refusal): written, and settled in the session's ledger. The id is
    /// boxed to keep this enum, and so every session's queue, small.
    SendAnswered {
        client_msg_id: Box<ClientMsgId>,
        frame: Utf8Bytes,
    },
    /// The broker did not take one of this session's sends: the ledger
    /// answers it `unavailable`, unless its timeout has answered it already.
    SendRefused(Box<ClientMsgId>),
    /// The gateway is draining (`gateway.drain_ms`): answer the sends in
    /// flight, then close with 1012.
    Restart,
}

/// Serialises a server frame once; the result is shared by every recipient.
pub fn encode(frame: &ServerFrame) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(frame).unwrap_or_default())
}
