//! A WebSocket client that speaks protocol.md: JSON text frames, read as
//! `serde_json::Value` the way any client would see them.

use crate::DEADLINE;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub user_id: i64,
    pub session_id: String,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Code(u16),
    Abruptly,
}

impl Client {
    /// Opens `/ws`, with an `Authorization` header if `token` is given and an
    /// `Origin` header if `origin` is.
    pub async fn connect(
        gateway: SocketAddr,
        token: Option<&str>,
        origin: Option<&str>,
    ) -> Result<Self, tungstenite::Error> {
        let mut request = format!("ws://{gateway}/ws").into_client_request()?;
        if let Some(token) = token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|e| tungstenite::Error::HttpFormat(e.into()))?;
            request.headers_mut().insert("authorization", value);
        }
        if let Some(origin) = origin {
            let value = HeaderValue::from_str(origin)
                .map_err(|e| tungstenite::Error::HttpFormat(e.into()))?;
            request.headers_mut().insert("origin", value);
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self {
            ws,
            user_id: 0,
            session_id: String::new(),
        })
    }

    /// Waits for `hello` and remembers who the server says we are.
    pub async fn authenticated(mut self) -> Self {
        let hello = self.next().await;
        assert_eq!(hello["type"], "hello", "first frame must be hello: {hello}");
        self.user_id = hello["user_id"].as_i64().unwrap_or_default();
        self.session_id = hello["session_id"].as_str().unwrap_or_default().to_owned();
        self
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws
            .send(WsMessage::Text(text.into()))
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(WsMessage::Binary(bytes.into()))
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
    }

    /// A text frame whose payload is not UTF-8 (RFC 6455 says: close 1007).
    pub async fn send_invalid_utf8_text(&mut self) {
        use tungstenite::protocol::frame::Frame;
        use tungstenite::protocol::frame::coding::{Data, OpCode};
        let frame = Frame::message(vec![0xff, 0xfe, 0x7b], OpCode::Data(Data::Text), true);
        self.ws
            .send(WsMessage::Frame(frame))
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
    }

    pub async fn send_json(&mut self, frame: Value) {
        self.send_raw(&frame.to_string()).await;
    }

    /// Sends a message without waiting for its ack.
    pub async fn send_message(&mut self, conversation: i64, client_msg_id: &str, body: &str) {
        let frame = json!({"type": "send", "conversation_id": conversation, "client_msg_id": client_msg_id, "body": body});
        self.send_json(frame).await;
    }

    /// Sends a message and returns the ack's message object.
    pub async fn send_and_ack(
        &mut self,
        conversation: i64,
        client_msg_id: &str,
        body: &str,
    ) -> Value {
        self.send_message(conversation, client_msg_id, body).await;
        let ack = self.next_of("ack").await;
        assert_eq!(
            ack["client_msg_id"], client_msg_id,
            "ack for another message: {ack}"
        );
        ack["message"].clone()
    }

    /// The next JSON frame; fails the test after the deadline or if the
    /// connection closes.
    pub async fn next(&mut self) -> Value {
        match self.next_or_close().await {
            Ok(frame) => frame,
            Err(closed) => panic!(
                "user {} expected a frame, connection closed: {closed:?}",
                self.user_id
            ),
        }
    }

    /// The next JSON frame, or how the connection closed.
    pub async fn next_or_close(&mut self) -> Result<Value, Closed> {
        // One deadline for the whole wait: pings arriving meanwhile must not
        // extend it.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("user {}: no frame within {DEADLINE:?}", self.user_id));
            match msg {
                Some(Ok(WsMessage::Text(text))) => {
                    return Ok(serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}")));
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    return Err(frame.map_or(Closed::Abruptly, |f| Closed::Code(u16::from(f.code))));
                }
                Some(Ok(_)) => continue, // ping, pong
                Some(Err(_)) | None => return Err(Closed::Abruptly),
            }
        }
    }

    /// The next frame of type `kind`, failing on any other frame type in
    /// between except the incidental ones (`conversation` announcements and
    /// `presence` changes), which are skipped.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.next().await;
            if frame["type"] == kind {
                return frame;
            }
            assert!(
                frame["type"] == "conversation" || frame["type"] == "presence",
                "user {} expected {kind}, got {frame}",
                self.user_id
            );
        }
    }

    /// The next `presence` frame about `user` (other frames are skipped).
    pub async fn next_presence_of(&mut self, user: i64) -> Value {
        loop {
            let frame = self.next().await;
            if frame["type"] == "presence" && frame["user_id"] == user {
                return frame;
            }
        }
    }

    /// Waits for the close and returns its code.
    pub async fn closed(&mut self) -> Closed {
        loop {
            if let Err(closed) = self.next_or_close().await {
                return closed;
            }
        }
    }

    /// Proves the connection is alive and that every frame the server queued
    /// before now has been read: ping, then expect the pong next. Returns the
    /// frames that came before it, `presence` changes left out.
    pub async fn drain(&mut self) -> Vec<Value> {
        let mut frames = self.drain_all().await;
        frames.retain(|f| f["type"] != "presence");
        frames
    }

    /// Like [`Client::drain`], with every frame kept.
    pub async fn drain_all(&mut self) -> Vec<Value> {
        self.send_json(json!({"type": "ping"})).await;
        let mut before = Vec::new();
        loop {
            let frame = self.next().await;
            if frame["type"] == "pong" {
                return before;
            }
            before.push(frame);
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}
