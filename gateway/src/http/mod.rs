//! The HTTP API of protocol.md and the operational endpoints.

pub mod conversations;
pub mod error;
pub mod extract;
pub mod ops;
pub mod presence;

use crate::state::AppState;
use crate::ws;
use axum::Router;
use axum::routing::{get, post};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route(
            "/api/conversations",
            post(conversations::create).get(conversations::list),
        )
        .route(
            "/api/conversations/{id}/messages",
            get(conversations::history),
        )
        .route("/api/presence", get(presence::presence))
        .route("/api/dev/token", post(ops::dev_token))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { error::ApiError::not_found("no such route") })
        .with_state(state)
}
