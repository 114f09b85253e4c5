//! The host site's server API (version 2): `Authorization: ApiKey <key>`,
//! for the site's backend, never for users. Served on the public listener,
//! or only on `gateway.server_api_listen` when that is set (production: a
//! port the public route does not expose, docs/operations.md).
//!
//! Every call is authenticated against `auth.server_api_keys`, limited per
//! key (`gateway.limits.server_api_per_second`), logged with the key's id
//! (never the key) and counted (`gateway_server_api_requests_total`). A user
//! token is refused here, and a key on the user routes (401 both).

pub mod keys;
pub mod routes;

use super::error::ApiError;
use crate::limits::retry_after_ms;
use crate::state::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The key a server API request was made with (its index and id).
#[derive(Debug, Clone)]
pub struct ServerCaller {
    pub key: usize,
    pub id: Arc<str>,
}

/// The three routes, registered once from their `#[utoipa::path]`s (for
/// the router and the OpenAPI document alike), without authentication.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(routes::put_user))
        .routes(routes!(routes::create_conversation))
        .routes(routes!(routes::post_message))
}

/// The server API as served: [`routes`], each call authenticated.
pub fn router(state: AppState) -> OpenApiRouter<AppState> {
    routes().route_layer(middleware::from_fn_with_state(state, authenticate))
}

/// Authenticates, limits, logs and counts one server API request.
async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "?".to_owned(), |p| p.as_str().to_owned());
    let caller = match caller(&state, &request) {
        Ok(caller) => caller,
        Err(refused) => {
            let response = refused.into_response();
            state
                .metrics
                .server_api_request("none", &route, response.status().as_u16());
            tracing::warn!(
                route,
                status = response.status().as_u16(),
                "server API request refused"
            );
            return response;
        }
    };
    request.extensions_mut().insert(caller.clone());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state.metrics.server_api_request(&caller.id, &route, status);
    tracing::info!(api_key.id = %caller.id, route, status, "server API request");
    response
}

fn caller(state: &AppState, request: &Request) -> Result<ServerCaller, ApiError> {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("ApiKey "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("this route takes Authorization: ApiKey <key>"))?;
    let key = state
        .server_keys
        .find(presented)
        .ok_or_else(|| ApiError::unauthorized("unknown API key"))?;
    let id: Arc<str> = state.server_keys.id(key).into();
    if let Err(wait) = state
        .limits
        .server_api
        .take(key, tokio::time::Instant::now())
    {
        state.metrics.refused("server_api_per_second");
        tracing::warn!(api_key.id = %id, "server API rate limit");
        return Err(ApiError::rate_limited(
            "too many server API requests",
            retry_after_ms(wait),
        ));
    }
    Ok(ServerCaller { key, id })
}
