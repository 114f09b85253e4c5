//! The server API's three routes (protocol.md, "The host site's backend").

use super::super::error::ApiError;
use super::super::extract::{Body, path_id};
use super::super::openapi::ApiErrors;
use crate::server_sends::Answer;
use crate::state::AppState;
use crate::store::{Creation, Refusal};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chat_shared::bus::{GatewayEvent, PersistCommand, SendCommand, SendOutcome};
use chat_shared::card::{Card, HttpsUrl};
use chat_shared::ids::{ClientMsgId, ConversationId, MessageBody, SenderId, UserId};
use chat_shared::profile::DisplayName;
use chat_shared::protocol::{Conversation, ErrorCode, Message, ServerConversationRequest, User};
use serde::{Deserialize, Serialize};

/// `PUT /api/server/users/{id}` `{"name": "...", "avatar_url": "..."}`:
/// either field may be left out to keep it; `avatar_url` null removes the
/// avatar (a name cannot be removed).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    /// 1 to 100 characters (NFC), not null.
    #[serde(default)]
    name: Option<String>,
    /// An `https://` URL; null removes the avatar.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = "uri")]
    avatar_url: Option<Option<String>>,
}

/// A field that is present, even as null, is `Some`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Sets a user's name and avatar (a field left out keeps its value).
#[utoipa::path(put, path = "/api/server/users/{id}", tag = "server",
    security(("server_key" = [])),
    params(("id" = i64, Path, description = "The user")),
    request_body = UserChange,
    responses((status = 200, description = "The user, as stored", body = User), ApiErrors))]
pub async fn put_user(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    Body(change): Body<UserChange>,
) -> Result<Json<User>, ApiError> {
    let user = path_id(&raw_id, "user id", UserId::new)?;
    let name = change
        .name
        .map(|n| DisplayName::parse(&n))
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let avatar = match change.avatar_url {
        None => None,
        Some(None) => Some(None),
        Some(Some(url)) => Some(Some(
            HttpsUrl::parse(&url, "avatar_url")
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        )),
    };
    let (profile, changed) = state.store.set_profile(user, name, avatar).await?;
    if changed {
        tracing::info!(user.id = %user, "profile set by the server API");
        state.profiles.announce(profile.clone()).await;
    }
    Ok(Json(profile))
}

/// `POST /api/server/conversations`: the site vouches for the members, so
/// `groups` settings do not apply; a new direct conversation across a block
/// is still refused (403 `blocked`).
#[utoipa::path(post, path = "/api/server/conversations", tag = "server",
    security(("server_key" = [])),
    request_body = ServerConversationRequest,
    responses(
        (status = 201, description = "Created; as its first member sees it", body = Conversation),
        (status = 200, description = "The direct conversation of the two already existed", body = Conversation),
        ApiErrors,
    ))]
pub async fn create_conversation(
    State(state): State<AppState>,
    Body(request): Body<ServerConversationRequest>,
) -> Result<(StatusCode, Json<Conversation>), ApiError> {
    let (creator, new) = request.parse().map_err(ApiError::bad_request)?;
    let (id, members, created) = match state.store.create(creator, &new, true).await? {
        Creation::Done(id, members, created) => (id, members, created),
        Creation::Refused(Refusal::Blocked) => {
            return Err(ApiError::blocked("one of these users blocks the other"));
        }
        Creation::Refused(Refusal::NotAllowed) => {
            return Err(ApiError::internal(
                "a vouched conversation was refused by a setting",
            ));
        }
    };
    let conversation = state
        .store
        .conversations(creator, Some(id), None, 1)
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal(format!("conversation {id} not found")))?;
    if created {
        tracing::info!(conversation.id = %id, members = members.len(), "conversation created by the server API");
        let event = GatewayEvent::ConversationAdded {
            conversation: conversation.clone(),
            member_ids: members.clone(),
        };
        if let Err(e) = state.events.send(&members, event).await {
            tracing::warn!(conversation.id = %id, error = %e, "could not announce the new conversation");
        }
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(conversation)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// The idempotency key, with `sender_id`.
    client_msg_id: ClientMsgId,
    body: String,
    /// A member; left out, the message is a system message (`sender_id` 0).
    #[serde(default)]
    sender_id: Option<UserId>,
    #[serde(default)]
    card: Option<Card>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Posted {
    message: Message,
}

/// `POST /api/server/conversations/{id}/messages`: stored, sequenced and
/// delivered like a user's send (the same publisher, persister and
/// fan-out), idempotent on (`sender_id`, `client_msg_id`); answered once
/// the persister has committed it, or 503 `unavailable` (post it again,
/// with the same `client_msg_id`).
#[utoipa::path(post, path = "/api/server/conversations/{id}/messages", tag = "server",
    security(("server_key" = [])),
    params(("id" = i64, Path, description = "The conversation")),
    request_body = PostMessage,
    responses((status = 200, description = "Stored (new, or the original of a repeat)", body = Posted), ApiErrors))]
pub async fn post_message(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    Body(post): Body<PostMessage>,
) -> Result<Json<Posted>, ApiError> {
    let conversation = path_id(&raw_id, "conversation id", ConversationId::new)?;
    let body = MessageBody::parse(post.body, state.settings.gateway.max_body_chars).map_err(
        |e| match e {
            chat_shared::ids::InvalidValue::TooLong { .. } => ApiError::too_large(e.to_string()),
            e => ApiError::bad_request(e.to_string()),
        },
    )?;
    let sender = post.sender_id.map_or(SenderId::SYSTEM, SenderId::from);
    if let Some(user) = sender.user()
        && let Some(peer) = state.sessions.members.direct_peer(conversation, user).await
        && state.sessions.blocks.between(user, peer).await
    {
        return Err(ApiError::blocked(
            "a block between the sender and this user refuses the message",
        ));
    }
    let mut waiting =
        state.hub.server_sends.wait().map_err(|_| {
            ApiError::unavailable("too many server sends waiting here; post it again")
        })?;
    let command = SendCommand {
        session_id: waiting.session_id.clone(),
        reply_to: state.queue.to_string(),
        conversation_id: conversation,
        sender_id: sender,
        client_msg_id: post.client_msg_id,
        body: body.into_inner(),
        card: post.card.map(Box::new),
        reply_when_stored: true,
        trace: None,
        received_at_us: None,
    };
    let timeout = state.settings.gateway.send_timeout;
    let answered = tokio::time::timeout(timeout, async {
        let room = state.sessions.sender.reserve().await.ok()?;
        room.start(PersistCommand::Send(command));
        waiting.answer().await
    })
    .await;
    match answered {
        Ok(Some(Answer::Outcome(SendOutcome::Stored { message }))) => Ok(Json(Posted { message })),
        Ok(Some(Answer::Outcome(SendOutcome::Refused { code, message, .. }))) => {
            Err(refused(code, message))
        }
        Ok(Some(Answer::NotTaken) | None) | Err(_) => Err(ApiError::unavailable(
            "the message was not stored in time; post it again with the same client_msg_id",
        )),
    }
}

/// The persister's refusal as an HTTP error.
fn refused(code: ErrorCode, message: String) -> ApiError {
    match code {
        ErrorCode::Forbidden => ApiError::forbidden(message),
        ErrorCode::NotFound => ApiError::not_found(message),
        ErrorCode::Blocked => ApiError::blocked(message),
        ErrorCode::BadRequest => ApiError::bad_request(message),
        ErrorCode::Unavailable | ErrorCode::RateLimited => ApiError::unavailable(message),
        _ => ApiError::internal(message),
    }
}
