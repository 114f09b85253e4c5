//! Version 2 consent: `GET`/`PUT /api/me/privacy`, `PUT`/`DELETE
//! /api/blocks/{user_id}`, `GET /api/blocks`.
//!
//! A change takes effect on every gateway within milliseconds of its
//! commit: presence is filtered in SQL by whoever sends it (the presence
//! service, `GET /api/presence`), a block is broadcast to every gateway's
//! send gate (`GatewayEvent::BlocksChanged`), and whoever may no longer see
//! a user's presence is sent one `presence` frame `offline` with
//! `last_seen` null. Whoever may see it again is sent the user's presence as
//! it is (protocol.md of this project: a decision of ours).

use super::error::ApiError;
use super::extract::Body;
use super::openapi::ApiErrors;
use super::presence::{UserPresence, from_redis};
use crate::auth::AuthUser;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chat_shared::bus::GatewayEvent;
use chat_shared::ids::UserId;
use chat_shared::privacy::{Privacy, PrivacyChange};
use chat_shared::protocol::{PresenceStatus, User};
use serde::Serialize;

/// The caller's privacy settings.
#[utoipa::path(get, path = "/api/me/privacy", tag = "people",
    security(("user_token" = [])),
    responses((status = 200, description = "The settings", body = Privacy), ApiErrors))]
pub async fn privacy(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<Json<Privacy>, ApiError> {
    Ok(Json(state.store.privacy(caller.user_id).await?))
}

/// Changes any of the caller's privacy settings (an unknown field or value
/// is 400 and changes nothing).
#[utoipa::path(put, path = "/api/me/privacy", tag = "people",
    security(("user_token" = [])),
    request_body = PrivacyChange,
    responses((status = 200, description = "The settings, as stored", body = Privacy), ApiErrors))]
pub async fn set_privacy(
    State(state): State<AppState>,
    caller: AuthUser,
    Body(change): Body<PrivacyChange>,
) -> Result<Json<Privacy>, ApiError> {
    let me = caller.user_id;
    let audience_before = match change.presence {
        Some(_) => Some(state.directory.presence_audience(me).await?),
        None => None,
    };
    let (before, after) = state.store.set_privacy(me, change).await?;
    tracing::info!(user.id = %me, presence = after.presence.as_str(), read_receipts = after.read_receipts, groups = after.groups.as_str(), "privacy settings changed");
    if let Some(audience_before) = audience_before
        && before.presence != after.presence
    {
        let audience_after = state.directory.presence_audience(me).await?;
        let lost: Vec<UserId> = (audience_before.iter())
            .filter(|u| !audience_after.contains(u))
            .copied()
            .collect();
        let gained: Vec<UserId> = (audience_after.iter())
            .filter(|u| !audience_before.contains(u))
            .copied()
            .collect();
        hide(&state, me, &lost).await;
        show(&state, me, &gained).await;
    }
    Ok(Json(after))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BlockList {
    blocked: Vec<User>,
}

/// The users the caller blocks, most recent first.
#[utoipa::path(get, path = "/api/blocks", tag = "people",
    security(("user_token" = [])),
    responses((status = 200, description = "The users blocked", body = BlockList), ApiErrors))]
pub async fn blocks(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<Json<BlockList>, ApiError> {
    let blocked = state.store.blocks_made(caller.user_id).await?;
    Ok(Json(BlockList { blocked }))
}

/// `PUT /api/blocks/{user_id}`: idempotent, 204.
#[utoipa::path(put, path = "/api/blocks/{user_id}", tag = "people",
    security(("user_token" = [])),
    params(("user_id" = i64, Path, description = "The user to block")),
    responses((status = 204, description = "Blocked (new or not)"), ApiErrors))]
pub async fn block(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(raw_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (me, them) = (caller.user_id, other_user(&raw_id, caller.user_id)?);
    if state.store.block(me, them).await? {
        tracing::info!(user.id = %me, blocked.id = %them, "user blocked");
        blocks_changed(&state, me, them).await;
        hide(&state, me, &[them]).await;
        hide(&state, them, &[me]).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/blocks/{user_id}`: 204, whether there was a block or not.
#[utoipa::path(delete, path = "/api/blocks/{user_id}", tag = "people",
    security(("user_token" = [])),
    params(("user_id" = i64, Path, description = "The user to unblock")),
    responses((status = 204, description = "Not blocked (any more)"), ApiErrors))]
pub async fn unblock(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(raw_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (me, them) = (caller.user_id, other_user(&raw_id, caller.user_id)?);
    if state.store.unblock(me, them).await? {
        tracing::info!(user.id = %me, unblocked.id = %them, "user unblocked");
        blocks_changed(&state, me, them).await;
        for (viewer, subject) in [(me, them), (them, me)] {
            if state
                .directory
                .presence_visible(viewer, &[subject])
                .await?
                .contains(&subject)
            {
                show(&state, subject, &[viewer]).await;
            }
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

fn other_user(raw: &str, caller: UserId) -> Result<UserId, ApiError> {
    let id = super::extract::path_id(raw, "user id", UserId::new)?;
    if id == caller {
        return Err(ApiError::bad_request("you cannot block yourself"));
    }
    Ok(id)
}

/// Tells every gateway's send gate to forget what it knows of these two
/// users' blocks.
async fn blocks_changed(state: &AppState, a: UserId, b: UserId) {
    let event = GatewayEvent::BlocksChanged { user_ids: [a, b] };
    if let Err(e) = state.events.broadcast(event).await {
        tracing::warn!(user.id = %a, other.id = %b, error = %e, "change of blocks not broadcast; other gateways keep the old blocks for up to a minute");
    }
}

/// `viewers` may no longer see `subject`'s presence: each of their sessions
/// gets `offline` with `last_seen` null, as for a user never seen.
async fn hide(state: &AppState, subject: UserId, viewers: &[UserId]) {
    let hidden = UserPresence {
        user_id: subject,
        status: PresenceStatus::Offline,
        last_seen: None,
    };
    tell(state, hidden, viewers).await;
}

/// `viewers` may see `subject`'s presence again: they get it as it is.
async fn show(state: &AppState, subject: UserId, viewers: &[UserId]) {
    if viewers.is_empty() {
        return;
    }
    match from_redis(state, &[subject]).await {
        Ok(mut now) if now.len() == 1 => tell(state, now.remove(0), viewers).await,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(user.id = %subject, error = %e, "presence unknown (Redis); not shown again until it changes")
        }
    }
}

async fn tell(state: &AppState, presence: UserPresence, viewers: &[UserId]) {
    if viewers.is_empty() {
        return;
    }
    let event = GatewayEvent::Presence {
        user_id: presence.user_id,
        status: presence.status,
        last_seen: presence.last_seen,
        recipients: viewers.to_vec(),
    };
    if let Err(e) = state.events.send(viewers, event).await {
        tracing::warn!(user.id = %presence.user_id, error = %e, "presence change of consent not sent");
    }
}
