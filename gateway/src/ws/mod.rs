//! `GET /ws`: the checks before a session exists (origin, capacity, the
//! header token) and the upgrade. The session itself is in [`session`].

pub mod session;

use crate::http::error::ApiError;
use crate::http::extract::header_user;
use crate::state::AppState;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::http::header::ORIGIN;
use axum::response::{IntoResponse, Response};

/// Per-connection read buffer: tungstenite's default (128 KiB) would dominate
/// an idle connection's memory; frames larger than this still work.
const READ_BUFFER_BYTES: usize = 1024;

pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let allowed = &state.settings.auth.allowed_origins;
        if !allowed.iter().any(|a| a == "*" || a == origin) {
            state.metrics.connections_refused.inc();
            return ApiError::forbidden("origin not allowed").into_response();
        }
    }
    if state.hub.session_count() >= state.settings.gateway.max_connections
        || *state.shutdown.borrow()
    {
        state.metrics.connections_refused.inc();
        return ApiError::unavailable("gateway at capacity").into_response();
    }
    // With a header the token is checked before the upgrade (401, no
    // upgrade); without one the first frame must carry it.
    let user = match header_user(&state, &headers) {
        None => None,
        Some(Ok(user)) => Some(user),
        Some(Err(unauthorized)) => {
            state.metrics.connections_refused.inc();
            return unauthorized.into_response();
        }
    };
    let max = state.settings.gateway.max_frame_bytes;
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| session::run(socket, state, user))
}
