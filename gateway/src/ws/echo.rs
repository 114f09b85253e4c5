//! `GET /ws/echo` (only with `gateway.conformance_echo`, on loopback): a
//! WebSocket that sends every message back. The chat endpoint speaks JSON
//! and wants a token first, so the Autobahn conformance suite
//! (deploy/autobahn.sh) cannot drive it; this one shares everything below
//! the chat protocol with it: the upgrade, the frame and message limits,
//! and the close codes for broken frames.

use crate::http::error::ApiError;
use crate::state::AppState;
use axum::extract::ws::{Message, WebSocket};
use axum::extract::{State, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};

pub async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    if !state.settings.gateway.conformance_echo {
        return ApiError::not_found("no such route").into_response();
    }
    super::configured(ws, &state).on_upgrade(echo)
}

async fn echo(mut socket: WebSocket) {
    while let Some(received) = socket.recv().await {
        let reply = match received {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => message,
            // Pings are answered and closes returned by the socket itself.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_)) => continue,
            Err(error) => {
                if let Some((code, reason)) = super::close::for_protocol_error(&error.into_inner())
                {
                    super::close::send(&mut socket, code, reason).await;
                }
                return;
            }
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}
