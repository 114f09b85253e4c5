//! `/health`, `/ready`, `/metrics`, and the dev login.

use super::error::ApiError;
use super::extract::Body;
use crate::auth::unix_now;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use chat_shared::protocol::{DevTokenRequest, TokenResponse};

pub async fn health() -> &'static str {
    "ok"
}

/// 200 when the broker and the database answer, 503 with the reason otherwise.
pub async fn ready(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if !state.amqp.status().connected() {
        return Err(ApiError::unavailable("broker not connected"));
    }
    if *state.shutdown.borrow() {
        return Err(ApiError::unavailable("shutting down"));
    }
    state.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness: database unreachable");
        ApiError::unavailable("database unreachable")
    })?;
    Ok("ready")
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state
        .metrics
        .connections_active
        .set(state.hub.session_count() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// `POST /api/dev/token`: exists only where `auth.dev_login` is true.
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
