//! `GET /ws`: the checks before a session exists (origin, capacity, the
//! client's connection limits, the header token) and the upgrade. The
//! session itself is in [`session`].

pub mod blocks;
pub mod close;
pub mod context;
pub mod echo;
pub mod frames;
pub mod ledger;
pub mod members;
pub mod remembered;
pub mod session;
#[cfg(test)]
mod session_tests;

use crate::http::error::ApiError;
use crate::http::extract::header_user;
use crate::limits::ConnectionSlot;
use crate::state::AppState;
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN};
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};

/// Per-connection read buffer: tungstenite's default (128 KiB) would dominate
/// an idle connection's memory; frames larger than this still work.
const READ_BUFFER_BYTES: usize = 1024;

/// The WebSocket of docs/protocol.md: the token in an `Authorization:
/// Bearer` header (checked before the upgrade) or in the first frame.
#[utoipa::path(get, path = "/ws", tag = "operations",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 401, description = "The header token is refused", body = chat_shared::protocol::ErrorBody),
        (status = 403, description = "The origin is not allowed", body = chat_shared::protocol::ErrorBody),
        (status = 429, description = "Too many sessions for this user or address", body = chat_shared::protocol::ErrorBody),
        (status = 503, description = "At capacity, shutting down, or no broker", body = chat_shared::protocol::ErrorBody),
    ))]
pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let allowed = &state.settings.auth.allowed_origins;
        let listed = allowed.iter().any(|a| a == "*" || a == origin);
        if !listed && !same_origin(origin, &headers) {
            state.metrics.connection_refused("origin");
            return ApiError::forbidden("origin not allowed").into_response();
        }
    }
    if *state.broker_lost.borrow() {
        state.metrics.connection_refused("broker_lost");
        return ApiError::unavailable("gateway cannot reach its broker").into_response();
    }
    if *state.shutdown.borrow() {
        state.metrics.connection_refused("shutting_down");
        return ApiError::unavailable("gateway shutting down").into_response();
    }
    if state.hub.session_count() >= state.settings.gateway.max_connections {
        state.metrics.connection_refused("at_capacity");
        return ApiError::unavailable("gateway at capacity").into_response();
    }
    let slot = match proxied_client_slot(&state, peer.ip(), &headers) {
        Ok(slot) => slot,
        Err(refused) => return refused.into_response(),
    };
    // With a header the token is checked before the upgrade (401, no
    // upgrade); without one the first frame must carry it.
    let user = match header_user(&state, &headers) {
        None => None,
        Some(Ok(user)) => Some(user),
        Some(Err(unauthorized)) => {
            state.metrics.connection_refused("unauthorized");
            return unauthorized.into_response();
        }
    };
    let per_user = state.settings.gateway.limits.connections_per_user.get();
    if let Some(user) = &user
        && state.hub.sessions_of_user(user.user_id) >= per_user
    {
        state.metrics.refused("connections_per_user");
        let refusal = ApiError::rate_limited("too many sessions for this user", 1000);
        return refusal.into_response();
    }
    configured(ws, &state).on_upgrade(move |socket| session::run(socket, state, user, slot))
}

/// The socket settings of every WebSocket the gateway serves.
fn configured(ws: WebSocketUpgrade, state: &AppState) -> WebSocketUpgrade {
    let max = state.settings.gateway.max_frame_bytes;
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(max)
        .max_frame_size(max)
}

/// A connection that a trusted load balancer carries is counted against the
/// client it names (the last `X-Forwarded-For` entry, which that balancer
/// wrote); others were counted at the accept already (`listener`).
fn proxied_client_slot(
    state: &AppState,
    peer: IpAddr,
    headers: &HeaderMap,
) -> Result<Option<ConnectionSlot>, ApiError> {
    if !state
        .settings
        .gateway
        .trusted_proxies
        .iter()
        .any(|net| net.contains(peer))
    {
        return Ok(None);
    }
    let client = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|ip| ip.trim().parse::<IpAddr>().ok())
        .unwrap_or(peer);
    match state.limits.connections.acquire(
        client,
        state.settings.gateway.limits.connections_per_ip.get(),
    ) {
        Some(slot) => Ok(Some(slot)),
        None => {
            state.metrics.refused("connections_per_ip");
            Err(ApiError::rate_limited(
                "too many connections from one address",
                1000,
            ))
        }
    }
}

/// The page that opens the socket was served by us (the web client at `/`):
/// its origin names the host the request was sent to. Behind a load balancer
/// this holds as long as it passes `Host` on (deploy/nginx.conf.tmpl does).
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(HOST).and_then(|host| host.to_str().ok()) else {
        return false;
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|authority| !host.is_empty() && authority.eq_ignore_ascii_case(host))
}
