//! Extractors that turn a bad request into an `ApiError`: the caller (from
//! the bearer token), and JSON bodies and query strings with 400s in the
//! contract's shape instead of axum's plain-text rejections.

use super::error::ApiError;
use crate::auth::AuthUser;
use crate::limits::retry_after_ms;
use crate::state::AppState;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// The caller named by an `Authorization: Bearer` header: `None` when there
/// is no such header, a 401 when it is malformed, wrongly signed or expired.
pub fn header_user(state: &AppState, headers: &HeaderMap) -> Option<Result<AuthUser, ApiError>> {
    let value = headers.get(AUTHORIZATION)?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    Some(match token {
        None => Err(ApiError::unauthorized("malformed Authorization header")),
        Some(token) => state
            .keys
            .verify(token)
            .map_err(|e| ApiError::unauthorized(e.to_string())),
    })
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user = header_user(state, &parts.headers).unwrap_or_else(|| {
            Err(ApiError::unauthorized(
                "missing Authorization: Bearer token",
            ))
        })?;
        // Every API request of a user draws on one bucket (per gateway).
        if let Err(wait) = state
            .limits
            .http
            .take(user.user_id, tokio::time::Instant::now())
        {
            state.metrics.refused("http_per_second");
            return Err(ApiError::rate_limited(
                "too many requests",
                retry_after_ms(wait),
            ));
        }
        state.profiles.token_used(&user);
        Ok(user)
    }
}

/// A positive id from a path segment (`what` names it in the 400).
pub fn path_id<T>(
    raw: &str,
    what: &str,
    make: fn(i64) -> Result<T, chat_shared::ids::InvalidValue>,
) -> Result<T, ApiError> {
    raw.parse::<i64>()
        .ok()
        .and_then(|n| make(n).ok())
        .ok_or_else(|| ApiError::bad_request(format!("{what} must be a positive integer")))
}

/// `Json<T>` whose rejection is a contract-shaped 400.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(v)| Body(v))
            .map_err(|e| {
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large("request body too large")
                } else {
                    ApiError::bad_request(e.body_text())
                }
            })
    }
}

/// `Query<T>` whose rejection is a contract-shaped 400.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Params(v))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}
