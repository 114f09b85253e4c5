//! `/health`, `/ready`, `/metrics`, and the dev login.

use super::error::ApiError;
use super::extract::{Body, Params};
use super::openapi::ApiErrors;
use crate::auth::unix_now;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use chat_shared::protocol::ErrorBody;
use chat_shared::protocol::{DevTokenRequest, TokenResponse};

/// 200 while the process is alive and well; 503 once its broker
/// connection has been down for `gateway.broker_dead_ms` (a liveness probe
/// then restarts it: an AMQP client stuck reconnecting does not heal).
#[utoipa::path(get, path = "/health", tag = "operations",
    responses(
        (status = 200, description = "Alive", body = String, content_type = "text/plain"),
        (status = 503, description = "Broker unreachable for `gateway.broker_dead_ms`", body = ErrorBody),
    ))]
pub async fn health(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if *state.broker_dead.borrow() {
        return Err(ApiError::unavailable(
            "broker unreachable for gateway.broker_dead_ms",
        ));
    }
    Ok("ok")
}

/// 200 when the broker, the database and the cache answer, 503 with the
/// reason otherwise. (Chat itself goes on without the cache: only presence
/// degrades. An orchestrator that should keep routing to a gateway whose
/// Redis is down can probe `/ready?require=broker,database`.)
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadyParams {
    /// Which of `broker,database,cache` to check (default: all three).
    require: Option<String>,
}

#[utoipa::path(get, path = "/ready", tag = "operations",
    params(ReadyParams),
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain"),
        (status = 503, description = "Not ready, with the reason", body = ErrorBody),
    ))]
pub async fn ready(
    State(state): State<AppState>,
    Params(params): Params<ReadyParams>,
) -> Result<&'static str, ApiError> {
    let require = params
        .require
        .unwrap_or_else(|| "broker,database,cache".into());
    let wants = |what: &str| require.split(',').any(|r| r.trim() == what);
    if *state.shutdown.borrow() {
        return Err(ApiError::unavailable("shutting down"));
    }
    if wants("broker") && !state.amqp.status().connected() {
        return Err(ApiError::unavailable("broker not connected"));
    }
    if wants("broker") && !state.amqp_channels.iter().all(|c| c.status().connected()) {
        return Err(ApiError::unavailable(
            "a broker channel is closed (the gateway queue could not be recovered)",
        ));
    }
    if wants("database") {
        state.store.ping().await.map_err(|e| {
            tracing::warn!(error = %e, "readiness: database unreachable");
            ApiError::unavailable("database unreachable")
        })?;
    }
    if wants("cache") {
        let mut redis = state.redis.clone();
        let pong: Result<String, _> = redis::cmd("PING").query_async(&mut redis).await;
        pong.map_err(|e| {
            tracing::warn!(error = %e, "readiness: cache unreachable");
            ApiError::unavailable("cache unreachable")
        })?;
    }
    Ok("ready")
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state
        .metrics
        .connections_active
        .set(state.hub.session_count() as i64);
    state
        .metrics
        .session_queued_frames
        .set(state.hub.queued_frames() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// `POST /api/dev/token`: exists only where `auth.dev_login` is true (404
/// elsewhere): a user token for local use and tests.
#[utoipa::path(post, path = "/api/dev/token", tag = "operations",
    request_body = DevTokenRequest,
    responses((status = 200, description = "A token", body = TokenResponse), ApiErrors))]
pub async fn dev_token(
    State(state): State<AppState>,
    Body(request): Body<DevTokenRequest>,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    if !state.settings.auth.dev_login {
        return Err(ApiError::not_found("no such route"));
    }
    let exp = unix_now() + state.settings.auth.dev_token_ttl_secs as i64;
    let token = state.keys.issue(request.user_id, request.name, exp);
    Ok((StatusCode::OK, Json(TokenResponse { token })))
}
