//! The HTTP API of protocol.md and the operational endpoints.

pub mod consent;
pub mod conversations;
pub mod error;
pub mod extract;
pub mod ops;
pub mod presence;
pub mod server;
pub mod trace;
pub mod users;
pub mod web;

use crate::state::AppState;
use crate::ws;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

/// The public API. `/metrics` is not here: it is served on
/// `gateway.metrics_listen` ([`metrics_router`]), away from the public entry.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.gateway.http_body_bytes;
    Router::new()
        .route("/", get(web::index))
        .route("/app/{name}", get(web::asset))
        .route("/ws", get(ws::upgrade))
        .route("/ws/echo", get(ws::echo::upgrade))
        .route(
            "/api/conversations",
            post(conversations::create).get(conversations::list),
        )
        .route(
            "/api/conversations/{id}/messages",
            get(conversations::history),
        )
        .route("/api/conversations/{id}/reads", get(conversations::reads))
        .route(
            "/api/conversations/{id}/members",
            post(conversations::add_members),
        )
        .route("/api/conversations/{id}/leave", post(conversations::leave))
        .route("/api/presence", get(presence::presence))
        .route("/api/users", get(users::users))
        .route(
            "/api/me/privacy",
            get(consent::privacy).put(consent::set_privacy),
        )
        .route("/api/blocks", get(consent::blocks))
        .route(
            "/api/blocks/{user_id}",
            put(consent::block).delete(consent::unblock),
        )
        .merge(if state.settings.gateway.server_api_listen.is_none() {
            server::router(state.clone())
        } else {
            Router::new()
        })
        .route("/api/dev/token", post(ops::dev_token))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .fallback(|| async { error::ApiError::not_found("no such route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_deadline,
        ))
        .layer(middleware::from_fn(trace::server_span))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// The server API alone, for `gateway.server_api_listen`.
pub fn server_router(state: AppState) -> Router {
    server::router(state.clone())
        .fallback(|| async { error::ApiError::not_found("no such route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_deadline,
        ))
        .layer(middleware::from_fn(trace::server_span))
        .layer(DefaultBodyLimit::max(
            state.settings.gateway.http_body_bytes,
        ))
        .with_state(state)
}

/// The internal endpoints: `GET /metrics` (and `/health`, for probes).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(ops::metrics))
        .route("/health", get(ops::health))
        .with_state(state)
}

/// A request that takes longer than `gateway.http_request_timeout_ms` is
/// answered 503 `unavailable` and its work dropped.
async fn request_deadline(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let deadline = state.settings.gateway.http_request_timeout;
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            state.metrics.refused("http_request_timeout");
            error::ApiError::unavailable("request timed out").into_response()
        }
    }
}
