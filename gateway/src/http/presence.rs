//! `GET /api/presence?user_ids=7,42`: read from Redis, where the presence
//! service keeps it. Only users who share a conversation with the caller,
//! and whose privacy settings and blocks let the caller see them, are looked
//! up: any other id is answered `offline` with no `last_seen`, as a user
//! never seen, so the endpoint cannot be used to watch strangers.
//! When Redis cannot be reached, chat goes on and this answers what the
//! gateway itself knows: users with a session here are online, the others
//! offline with no `last_seen`.

use super::error::ApiError;
use super::extract::Params;
use super::openapi::ApiErrors;
use crate::auth::AuthUser;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use chat_shared::ids::UserId;
use chat_shared::protocol::PresenceStatus;
use chat_shared::time::{self, Timestamp};
use serde::{Deserialize, Serialize};

/// Most ids one request may ask about.
pub const MAX_USERS: usize = 200;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PresenceParams {
    /// 1 to 200 comma-separated positive ids, e.g. `7,42`.
    user_ids: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PresenceList {
    presence: Vec<UserPresence>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserPresence {
    pub user_id: UserId,
    pub status: PresenceStatus,
    #[serde(with = "time::rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen: Option<Timestamp>,
}

/// Who of these users is online (strangers are answered `offline`, as a
/// user never seen).
#[utoipa::path(get, path = "/api/presence", tag = "people",
    security(("user_token" = [])),
    params(PresenceParams),
    responses((status = 200, description = "Each user's presence", body = PresenceList), ApiErrors))]
pub async fn presence(
    State(state): State<AppState>,
    caller: AuthUser,
    Params(params): Params<PresenceParams>,
) -> Result<Json<PresenceList>, ApiError> {
    let asked = parse_ids(params.user_ids.as_deref().unwrap_or_default(), "user_ids")?;
    let visible = state
        .directory
        .presence_visible(caller.user_id, &asked)
        .await?;
    let users: Vec<UserId> = asked
        .iter()
        .copied()
        .filter(|u| visible.contains(u))
        .collect();
    let from_cache = if users.is_empty() {
        Ok(Vec::new())
    } else {
        from_redis(&state, &users).await
    };
    let known = match from_cache {
        Ok(presence) => presence,
        Err(e) => {
            tracing::warn!(error = %e, "presence from Redis failed; answering what this gateway knows");
            users
                .iter()
                .map(|&user_id| UserPresence {
                    user_id,
                    status: if state.hub.hosts(user_id) {
                        PresenceStatus::Online
                    } else {
                        PresenceStatus::Offline
                    },
                    last_seen: None,
                })
                .collect()
        }
    };
    let mut known = known.into_iter().peekable();
    let presence = asked
        .into_iter()
        .map(|user_id| match known.next_if(|p| p.user_id == user_id) {
            Some(found) => found,
            None => UserPresence {
                user_id,
                status: PresenceStatus::Offline,
                last_seen: None,
            },
        })
        .collect();
    Ok(Json(PresenceList { presence }))
}

/// Comma-separated positive ids, 1 to [`MAX_USERS`] of them, in the query
/// parameter `name`.
pub fn parse_ids(raw: &str, name: &str) -> Result<Vec<UserId>, ApiError> {
    let ids: Vec<UserId> = raw
        .split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            part.trim()
                .parse::<i64>()
                .ok()
                .and_then(|n| UserId::new(n).ok())
        })
        .collect::<Option<_>>()
        .ok_or_else(|| {
            ApiError::bad_request(format!("{name} must be comma-separated positive ids"))
        })?;
    if ids.is_empty() || ids.len() > MAX_USERS {
        return Err(ApiError::bad_request(format!(
            "give 1 to {MAX_USERS} {name}"
        )));
    }
    Ok(ids)
}

pub(super) async fn from_redis(
    state: &AppState,
    users: &[UserId],
) -> Result<Vec<UserPresence>, redis::RedisError> {
    let keys = &state.presence_keys;
    let mut online = redis::cmd("SMISMEMBER");
    online.arg(keys.online());
    for user in users {
        online.arg(user.get());
    }
    let mut seen = redis::cmd("MGET");
    for user in users {
        seen.arg(keys.last_seen(*user));
    }
    let mut pipe = redis::pipe();
    pipe.add_command(online).add_command(seen);
    let mut conn = state.redis.clone();
    let (online, seen): (Vec<bool>, Vec<Option<i64>>) = pipe.query_async(&mut conn).await?;
    Ok(users
        .iter()
        .zip(online.into_iter().zip(seen))
        .map(|(&user_id, (online, seen))| UserPresence {
            user_id,
            status: if online {
                PresenceStatus::Online
            } else {
                PresenceStatus::Offline
            },
            last_seen: seen.and_then(chrono::DateTime::from_timestamp_millis),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_are_positive_and_at_most_two_hundred() {
        assert_eq!(
            parse_ids("7, 42", "user_ids").map(|ids| ids.len()).ok(),
            Some(2)
        );
        for bad in ["", ",", "0", "-1", "7,x", "1e3", "9223372036854775808"] {
            assert!(parse_ids(bad, "user_ids").is_err(), "{bad:?}");
        }
        let too_many: Vec<String> = (1..=201).map(|n| n.to_string()).collect();
        assert!(parse_ids(&too_many.join(","), "user_ids").is_err());
    }

    proptest! {
        #[test]
        fn any_query_value_is_parsed_or_refused_without_a_panic(raw in "[0-9,+ -]{0,40}|.{0,40}") {
            if let Ok(ids) = parse_ids(&raw, "user_ids") {
                prop_assert!(!ids.is_empty() && ids.len() <= MAX_USERS);
                prop_assert!(ids.iter().all(|id| id.get() > 0));
            }
        }
    }
}
