//! The HTTP API of protocol.md and the operational endpoints.

pub mod consent;
pub mod conversations;
pub mod error;
pub mod extract;
pub mod openapi;
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
use axum::routing::get;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The public API. `/metrics` is not here: it is served on
/// `gateway.metrics_listen` ([`metrics_router`]), away from the public entry.
/// The server API is here too unless `gateway.server_api_listen` gives it a
/// listener of its own.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.gateway.http_body_bytes;
    let mut api = user_routes();
    if state.settings.gateway.server_api_listen.is_none() {
        api = api.merge(server::router(state.clone()));
    }
    Router::new()
        .route("/", get(web::index))
        .route("/app/{name}", get(web::asset))
        .route("/ws/echo", get(ws::echo::upgrade))
        .route("/api/openapi.json", get(openapi::serve))
        .merge(api.split_for_parts().0)
        .fallback(|| async { error::ApiError::not_found("no such route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_deadline,
        ))
        .layer(middleware::from_fn(trace::server_span))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// The user routes of the contract and the operational ones, each
/// registered once, from its handler's `#[utoipa::path]`: the router and
/// the OpenAPI document ([`openapi`]) are both made from this.
pub(crate) fn user_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ws::upgrade))
        .routes(routes!(conversations::create, conversations::list))
        .routes(routes!(conversations::history))
        .routes(routes!(conversations::reads))
        .routes(routes!(conversations::add_members))
        .routes(routes!(conversations::leave))
        .routes(routes!(presence::presence))
        .routes(routes!(users::users))
        .routes(routes!(consent::privacy, consent::set_privacy))
        .routes(routes!(consent::blocks))
        .routes(routes!(consent::block, consent::unblock))
        .routes(routes!(ops::dev_token))
        .routes(routes!(ops::health))
        .routes(routes!(ops::ready))
}

/// The server API alone, for `gateway.server_api_listen`.
pub fn server_router(state: AppState) -> Router {
    let (api, _) = server::router(state.clone()).split_for_parts();
    api.route("/api/openapi.json", get(openapi::serve))
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
