//! `GET /api/users?ids=7,42`: the profiles of the caller and of the users
//! who share a conversation with the caller; every other id is left out,
//! so the endpoint cannot be used to look strangers up.

use super::error::ApiError;
use super::extract::Params;
use super::openapi::ApiErrors;
use super::presence::parse_ids;
use crate::auth::AuthUser;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use chat_shared::protocol::User;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsersParams {
    /// 1 to 200 comma-separated positive ids, e.g. `7,42`.
    ids: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserList {
    users: Vec<User>,
}

/// The profiles of the caller and of the users who share a conversation
/// with the caller; other ids are left out.
#[utoipa::path(get, path = "/api/users", tag = "people",
    security(("user_token" = [])),
    params(UsersParams),
    responses((status = 200, description = "The profiles", body = UserList), ApiErrors))]
pub async fn users(
    State(state): State<AppState>,
    caller: AuthUser,
    Params(params): Params<UsersParams>,
) -> Result<Json<UserList>, ApiError> {
    let mut asked = parse_ids(params.ids.as_deref().unwrap_or_default(), "ids")?;
    asked.sort_unstable();
    asked.dedup();
    let visible = state.directory.co_members(caller.user_id, &asked).await?;
    let shown: Vec<_> = asked.into_iter().filter(|u| visible.contains(u)).collect();
    let users = if shown.is_empty() {
        Vec::new()
    } else {
        state.store.users(&shown).await?
    };
    Ok(Json(UserList { users }))
}
