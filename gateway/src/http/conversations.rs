//! `POST /api/conversations`, `GET /api/conversations`,
//! `GET /api/conversations/{id}/messages`.

use super::error::ApiError;
use super::extract::{Body, Params};
use super::openapi::ApiErrors;
use crate::auth::AuthUser;
use crate::state::AppState;
use crate::store::{Creation, MembersChange, Membership, Page, Refusal};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chat_shared::bus::GatewayEvent;
use chat_shared::ids::ConversationId;
use chat_shared::protocol::{
    AddMembersRequest, Conversation, ConversationList, CreateConversationRequest, MessagePage,
    NewConversation, ReadMarker,
};
use chat_shared::time;
use serde::{Deserialize, Serialize};

const DEFAULT_LIMIT: i64 = 50;
/// Larger limits are clamped to this (docs/protocol.md).
pub const MAX_LIMIT: i64 = 200;

fn limit(raw: Option<i64>) -> Result<i64, ApiError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if n < 1 => Err(ApiError::bad_request("limit must be at least 1")),
        Some(n) => Ok(n.min(MAX_LIMIT)),
    }
}

/// A user's direct conversation with `peer_id` (the same one every time),
/// or a new group with `title` and `member_ids`.
#[utoipa::path(post, path = "/api/conversations", tag = "conversations",
    security(("user_token" = [])),
    request_body = CreateConversationRequest,
    responses(
        (status = 201, description = "Created", body = Conversation),
        (status = 200, description = "The direct conversation of the pair already existed", body = Conversation),
        ApiErrors,
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: AuthUser,
    Body(request): Body<CreateConversationRequest>,
) -> Result<(StatusCode, Json<Conversation>), ApiError> {
    let new = request
        .parse(caller.user_id)
        .map_err(ApiError::bad_request)?;
    if matches!(new, NewConversation::Group { .. }) {
        count_group(&state, caller.user_id).await?;
    }
    let (id, members, created) = match state.store.create(caller.user_id, &new, false).await? {
        Creation::Done(id, members, created) => (id, members, created),
        Creation::Refused(refusal) => return Err(refused(refusal)),
    };
    let conversation = seen_by(&state, id, caller.user_id).await?;
    if created {
        tracing::info!(conversation.id = %id, user.id = %caller.user_id, members = members.len(), "conversation created");
        announce(&state, &conversation, &members).await;
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(conversation)))
}

/// Counts a group created by `user` this hour, over all gateways (Redis);
/// past `gateway.limits.groups_per_hour` it is 429 until the hour ends.
/// While Redis is down groups are not counted: creating one goes on.
async fn count_group(state: &AppState, user: chat_shared::ids::UserId) -> Result<(), ApiError> {
    let now = chrono::Utc::now().timestamp();
    let (hour, into_hour) = (now.div_euclid(3600), now.rem_euclid(3600));
    let key = state.presence_keys.groups_created(user, hour);
    let mut redis = state.redis.clone();
    let counted: Result<(u32,), redis::RedisError> = redis::pipe()
        .atomic()
        .incr(&key, 1u32)
        .expire(&key, 3600)
        .ignore()
        .query_async(&mut redis)
        .await;
    match counted {
        Ok((count,)) if count > state.settings.gateway.limits.groups_per_hour => {
            state.metrics.refused("groups_per_hour");
            let wait_ms = ((3600 - into_hour) * 1000) as u64;
            Err(ApiError::rate_limited(
                "too many groups created this hour",
                wait_ms,
            ))
        }
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(user.id = %user, error = %e, "could not count group creation (Redis); allowing it");
            Ok(())
        }
    }
}

/// Tells the sessions of `members`, on whichever gateway, that the
/// conversation exists or that its members changed (a `conversation` frame).
/// Best effort: a member who misses it sees it in the list.
async fn announce(
    state: &AppState,
    conversation: &Conversation,
    members: &[chat_shared::ids::UserId],
) {
    let event = GatewayEvent::ConversationAdded {
        conversation: conversation.clone(),
        member_ids: members.to_vec(),
    };
    if let Err(e) = state.events.send(members, event).await {
        tracing::warn!(conversation.id = %conversation.id, error = %e, "could not announce the new conversation");
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1 to 200 (larger is clamped); 50 when left out.
    limit: Option<i64>,
    /// RFC 3339: the page of conversations last active before this time.
    before: Option<String>,
}

/// The caller's conversations, most recent activity first.
#[utoipa::path(get, path = "/api/conversations", tag = "conversations",
    security(("user_token" = [])),
    params(ListParams),
    responses((status = 200, description = "The caller's conversations", body = ConversationList), ApiErrors))]
pub async fn list(
    State(state): State<AppState>,
    caller: AuthUser,
    Params(params): Params<ListParams>,
) -> Result<Json<ConversationList>, ApiError> {
    let limit = limit(params.limit)?;
    let before = params
        .before
        .map(|raw| time::parse(&raw).map_err(|e| ApiError::bad_request(format!("before: {e}"))))
        .transpose()?;
    let conversations = state
        .store
        .conversations(caller.user_id, None, before, limit)
        .await?;
    Ok(Json(ConversationList { conversations }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// 1 to 200 (larger is clamped); 50 when left out.
    limit: Option<i64>,
    /// The page just before this `seq` (default: the newest page).
    before_seq: Option<i64>,
    /// The page just after this `seq`: how a client catches up (not with `before_seq`).
    after_seq: Option<i64>,
}

/// A page of a conversation's messages, ascending by `seq`.
#[utoipa::path(get, path = "/api/conversations/{id}/messages", tag = "conversations",
    security(("user_token" = [])),
    params(("id" = i64, Path, description = "The conversation"), HistoryParams),
    responses((status = 200, description = "A page of messages", body = MessagePage), ApiErrors))]
pub async fn history(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(raw_id): Path<String>,
    Params(params): Params<HistoryParams>,
) -> Result<Json<MessagePage>, ApiError> {
    let id = conversation_id(&raw_id)?;
    let limit = limit(params.limit)?;
    let page = match (params.before_seq, params.after_seq) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give before_seq or after_seq, not both",
            ));
        }
        (Some(seq), None) => Page::Before(seq),
        (None, Some(seq)) => Page::After(seq),
        (None, None) => Page::Before(i64::MAX),
    };
    let (membership, messages) = state.store.history(id, caller.user_id, page, limit).await?;
    allowed(membership)?;
    Ok(Json(MessagePage { messages }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ReadList {
    reads: Vec<ReadMarker>,
}

/// `GET /api/conversations/{id}/reads` (version 2): how far the other
/// members have read, for "seen" after a reconnect.
#[utoipa::path(get, path = "/api/conversations/{id}/reads", tag = "conversations",
    security(("user_token" = [])),
    params(("id" = i64, Path, description = "The conversation")),
    responses((status = 200, description = "The other members' read markers", body = ReadList), ApiErrors))]
pub async fn reads(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(raw_id): Path<String>,
) -> Result<Json<ReadList>, ApiError> {
    let id = conversation_id(&raw_id)?;
    member_of(&state, id, &caller).await?;
    let reads = state.store.reads(id, caller.user_id).await?;
    Ok(Json(ReadList { reads }))
}

/// `POST /api/conversations/{id}/members` (version 2): any member adds
/// people to a group; every member, old and new, gets a `conversation`
/// frame with the new member list.
#[utoipa::path(post, path = "/api/conversations/{id}/members", tag = "conversations",
    security(("user_token" = [])),
    params(("id" = i64, Path, description = "The group")),
    request_body = AddMembersRequest,
    responses((status = 200, description = "The group as the caller sees it", body = Conversation), ApiErrors))]
pub async fn add_members(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(raw_id): Path<String>,
    Body(request): Body<AddMembersRequest>,
) -> Result<Json<Conversation>, ApiError> {
    let id = conversation_id(&raw_id)?;
    let users = request.parse().map_err(ApiError::bad_request)?;
    let change = state.store.add_members(id, caller.user_id, &users).await?;
    let members = changed(change)?;
    tracing::info!(conversation.id = %id, user.id = %caller.user_id, added = users.len(), "members added");
    members_changed(&state, id).await;
    let conversation = seen_by(&state, id, caller.user_id).await?;
    announce(&state, &conversation, &members).await;
    Ok(Json(conversation))
}

/// `POST /api/conversations/{id}/leave` (version 2): the caller leaves a
/// group (204). The members left, and the caller's own sessions, get a
/// `conversation` frame with the new member list; from then on the caller
/// gets none of its frames and 403 on its history.
#[utoipa::path(post, path = "/api/conversations/{id}/leave", tag = "conversations",
    security(("user_token" = [])),
    params(("id" = i64, Path, description = "The group")),
    responses((status = 204, description = "Left"), ApiErrors))]
pub async fn leave(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(raw_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = conversation_id(&raw_id)?;
    let change = state.store.leave(id, caller.user_id).await?;
    let members = changed(change)?;
    tracing::info!(conversation.id = %id, user.id = %caller.user_id, "member left");
    members_changed(&state, id).await;
    if let Some(member) = members.first() {
        let conversation = seen_by(&state, id, *member).await?;
        let mut told = members.clone();
        told.push(caller.user_id);
        announce(&state, &conversation, &told).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Tells every gateway to forget what it remembers of the conversation's
/// members (their membership gates ask Postgres again).
async fn members_changed(state: &AppState, id: ConversationId) {
    let event = GatewayEvent::MembersChanged {
        conversation_id: id,
    };
    if let Err(e) = state.events.broadcast(event).await {
        tracing::warn!(conversation.id = %id, error = %e, "change of members not broadcast; other gateways keep the old members for up to a minute");
    }
}

/// The members after a change, or why there was none.
fn changed(change: MembersChange) -> Result<Vec<chat_shared::ids::UserId>, ApiError> {
    match change {
        MembersChange::Changed(members) => Ok(members),
        MembersChange::NoSuchConversation => Err(ApiError::not_found("no such conversation")),
        MembersChange::NotMember => Err(ApiError::forbidden("not a member of this conversation")),
        MembersChange::Direct => Err(ApiError::bad_request(
            "a direct conversation's members do not change",
        )),
        MembersChange::TooMany => Err(ApiError::bad_request(format!(
            "a group has at most {} members",
            Conversation::MAX_MEMBERS
        ))),
        MembersChange::Refused(refusal) => Err(refused(refusal)),
    }
}

/// 403 for what consent refuses: `blocked` for a block, `forbidden` for a
/// `groups` setting.
fn refused(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Blocked => ApiError::blocked("a block between you and this user refuses it"),
        Refusal::NotAllowed => {
            ApiError::forbidden("this user's privacy settings do not let you add them to groups")
        }
    }
}

/// The conversation as `member` sees it (its unread count and last message).
async fn seen_by(
    state: &AppState,
    id: ConversationId,
    member: chat_shared::ids::UserId,
) -> Result<Conversation, ApiError> {
    state
        .store
        .conversations(member, Some(id), None, 1)
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal(format!("conversation {id} not found for a member")))
}

fn conversation_id(raw: &str) -> Result<ConversationId, ApiError> {
    super::extract::path_id(raw, "conversation id", ConversationId::new)
}

/// 403 for a caller who is not a member, 404 for no such conversation.
async fn member_of(
    state: &AppState,
    id: ConversationId,
    caller: &AuthUser,
) -> Result<(), ApiError> {
    allowed(state.store.membership(id, caller.user_id).await?)
}

/// A member may; others are told why not.
fn allowed(membership: Membership) -> Result<(), ApiError> {
    match membership {
        Membership::Member => Ok(()),
        Membership::NotMember => Err(ApiError::forbidden("not a member of this conversation")),
        Membership::NoSuchConversation => Err(ApiError::not_found("no such conversation")),
    }
}
