//! The client contract (`shared/protocol.md`, version 1) as Rust types: the
//! objects, the WebSocket frames both ways and the HTTP bodies. Field names and
//! shapes match protocol.md field for field; the snapshot tests at the bottom
//! pin the JSON so that any change to the wire shows in review.

pub use crate::card::Card;
use crate::ids::{
    ClientMsgId, ConversationId, InvalidValue, MessageBody, MessageId, SenderId, UserId,
};
pub use crate::profile::User;
use crate::time::{self, Timestamp};
use serde::{Deserialize, Serialize};

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Message {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub seq: i64,
    /// `0` for a system message (version 2).
    pub sender_id: SenderId,
    pub client_msg_id: ClientMsgId,
    pub body: String,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Version 2: `system` for a message the host site posted with no
    /// sender; absent (`user`) otherwise.
    #[serde(default, skip_serializing_if = "MessageKind::is_user")]
    pub kind: MessageKind,
    /// Version 2: structured content shown with the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<Card>,
}

/// A message's kind (version 2), which follows from its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    #[default]
    User,
    System,
}

impl MessageKind {
    pub fn of(sender: SenderId) -> Self {
        if sender.is_system() {
            Self::System
        } else {
            Self::User
        }
    }

    pub fn is_user(&self) -> bool {
        *self == Self::User
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    Direct,
    Group,
}

impl ConversationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Group => "group",
        }
    }
}

/// A conversation as one user sees it (`unread_count` is theirs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Conversation {
    pub id: ConversationId,
    pub kind: ConversationKind,
    pub title: Option<String>,
    pub member_ids: Vec<UserId>,
    /// Version 2: the members' profiles, for direct conversations and for
    /// groups of up to [`Conversation::MEMBERS_SHOWN`] members; absent for
    /// larger groups (`GET /api/users` answers for the ids a client shows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<User>>,
    pub last_message: Option<Message>,
    pub last_seq: i64,
    pub unread_count: i64,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

impl Conversation {
    /// Groups up to this size carry their members' profiles.
    pub const MEMBERS_SHOWN: usize = 50;
    /// The most members a group may have, its creator included.
    pub const MAX_MEMBERS: usize = 1000;
}

/// `POST /api/conversations/{id}/members` (version 2).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AddMembersRequest {
    pub user_ids: Vec<i64>,
}

impl AddMembersRequest {
    /// The users to add, each once, ascending; the error is the 400 message.
    pub fn parse(self) -> Result<Vec<UserId>, String> {
        if self.user_ids.is_empty() || self.user_ids.len() > Conversation::MAX_MEMBERS {
            return Err(format!("give 1 to {} user_ids", Conversation::MAX_MEMBERS));
        }
        let mut users = self
            .user_ids
            .into_iter()
            .map(|id| UserId::new(id).map_err(|e| format!("user_ids: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        users.sort();
        users.dedup();
        Ok(users)
    }
}

/// How far one member has read a conversation (version 2,
/// `GET /api/conversations/{id}/reads`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReadMarker {
    pub user_id: UserId,
    pub seq: i64,
}

/// Error codes shared by WebSocket error frames and HTTP error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    TooLarge,
    Unauthorized,
    Forbidden,
    NotFound,
    RateLimited,
    Unavailable,
    Internal,
    /// Version 2: a block between the two users refused it.
    Blocked,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadRequest,
        ErrorCode::TooLarge,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Blocked,
    ];

    /// The code as it is written on the wire (`rate_limited`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Blocked => "blocked",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypingState {
    Start,
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Offline,
}

// ---------------------------------------------------------------- WebSocket

/// A frame from a client, as parsed at the socket. (`Serialize` is for
/// clients written in Rust, and for the round-trip property test.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Auth {
        token: String,
    },
    Send(SendFrame),
    Typing {
        conversation_id: ConversationId,
        state: TypingState,
    },
    Read {
        conversation_id: ConversationId,
        seq: i64,
    },
    Ping,
}

/// `send` before its body is checked against the configured limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendFrame {
    pub conversation_id: ConversationId,
    pub client_msg_id: ClientMsgId,
    pub body: String,
    /// Version 2: a card shown with the message (checked as it is parsed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<Card>,
}

/// A refused client frame: becomes an `error` frame; the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    pub client_msg_id: Option<String>,
}

impl FrameError {
    pub fn into_frame(self) -> ServerFrame {
        ServerFrame::Error {
            code: self.code,
            message: self.message,
            client_msg_id: self.client_msg_id,
            retry_after_ms: None,
        }
    }
}

impl ClientFrame {
    /// Parses one text frame. On failure the error still carries the frame's
    /// `client_msg_id` when it had a readable one, so the client can match it.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| FrameError {
            code: ErrorCode::BadRequest,
            message: format!("frame is not JSON: {e}"),
            client_msg_id: None,
        })?;
        let client_msg_id = value
            .get("client_msg_id")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        serde_json::from_value(value).map_err(|e| FrameError {
            code: ErrorCode::BadRequest,
            message: format!("invalid frame: {e}"),
            client_msg_id,
        })
    }
}

impl SendFrame {
    /// Checks the body against the configured limit: empty is `bad_request`,
    /// longer than the limit is `too_large`.
    pub fn body(&self, max_chars: usize) -> Result<MessageBody, FrameError> {
        MessageBody::parse(self.body.clone(), max_chars).map_err(|e| FrameError {
            code: match e {
                InvalidValue::TooLong { .. } => ErrorCode::TooLarge,
                _ => ErrorCode::BadRequest,
            },
            message: e.to_string(),
            client_msg_id: Some(self.client_msg_id.as_str().to_owned()),
        })
    }
}

/// A frame to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Hello {
        user_id: UserId,
        session_id: String,
        heartbeat_ms: u64,
        /// Added (docs/protocol.md): the longest `body` this server takes,
        /// in characters, so clients need not hard-code it.
        max_body_chars: usize,
    },
    Ack {
        client_msg_id: ClientMsgId,
        message: Message,
    },
    Message {
        message: Message,
    },
    Typing {
        conversation_id: ConversationId,
        user_id: UserId,
        state: TypingState,
    },
    Read {
        conversation_id: ConversationId,
        user_id: UserId,
        seq: i64,
    },
    Presence {
        user_id: UserId,
        status: PresenceStatus,
        #[serde(with = "time::rfc3339_opt")]
        last_seen: Option<Timestamp>,
    },
    Conversation {
        conversation: Conversation,
    },
    /// Version 2: a user who shares a conversation with the caller changed
    /// name or avatar.
    User {
        user: User,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        client_msg_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        retry_after_ms: Option<u64>,
    },
    Pong,
}

// --------------------------------------------------------------------- HTTP

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct DevTokenRequest {
    pub user_id: UserId,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub token: String,
}

/// `POST /api/conversations`: `{"peer_id": 7}` or `{"title": "...", "member_ids": [..]}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
pub struct CreateConversationRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_ids: Option<Vec<i64>>,
}

/// What a create request asks for, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewConversation {
    Direct { peer: UserId },
    Group { title: String, members: Vec<UserId> },
}

impl CreateConversationRequest {
    /// Checks the request on behalf of `caller`; the error is the 400 message.
    pub fn parse(self, caller: UserId) -> Result<NewConversation, String> {
        match (self.peer_id, self.title, self.member_ids) {
            (Some(peer), None, None) => {
                let peer = UserId::new(peer).map_err(|e| format!("peer_id: {e}"))?;
                if peer == caller {
                    return Err("peer_id must be another user than the caller".into());
                }
                Ok(NewConversation::Direct { peer })
            }
            (None, Some(title), Some(ids)) => {
                let mut members = member_ids(&ids)?;
                members.push(caller);
                NewConversation::group(title, members)
            }
            _ => Err(
                "expected either {\"peer_id\": id} or {\"title\": ..., \"member_ids\": [...]}"
                    .into(),
            ),
        }
    }
}

impl NewConversation {
    /// A group of `members` (repeats dropped): a title of 1 to 200
    /// characters once trimmed, 2 to [`Conversation::MAX_MEMBERS`] members.
    pub fn group(title: String, mut members: Vec<UserId>) -> Result<Self, String> {
        let title = title.trim().to_owned();
        if title.is_empty() {
            return Err("title must not be empty".into());
        }
        if title.chars().count() > 200 {
            return Err("title is longer than 200 characters".into());
        }
        if title.contains('\0') {
            return Err("title must not contain NUL characters".into());
        }
        members.sort();
        members.dedup();
        if members.len() < 2 {
            return Err("a group needs at least 2 members".into());
        }
        if members.len() > Conversation::MAX_MEMBERS {
            return Err("a group has at most 1000 members".into());
        }
        Ok(NewConversation::Group { title, members })
    }
}

/// `member_ids` of a request: positive ids, at most
/// [`Conversation::MAX_MEMBERS`] of them.
fn member_ids(ids: &[i64]) -> Result<Vec<UserId>, String> {
    if ids.len() > Conversation::MAX_MEMBERS {
        return Err("a group has at most 1000 members".into());
    }
    ids.iter()
        .map(|id| UserId::new(*id).map_err(|e| format!("member_ids: {e}")))
        .collect()
}

/// `POST /api/server/conversations` (version 2, the host site): two
/// `member_ids` and no title is their direct conversation; a `title` and 2
/// or more `member_ids` a new group.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConversationRequest {
    pub member_ids: Vec<i64>,
    #[serde(default)]
    pub title: Option<String>,
}

impl ServerConversationRequest {
    /// Who creates it (the first member, on whose behalf a direct
    /// conversation is opened) and what.
    pub fn parse(self) -> Result<(UserId, NewConversation), String> {
        let members = member_ids(&self.member_ids)?;
        let Some(&first) = members.first() else {
            return Err("member_ids must not be empty".into());
        };
        match self.title {
            None => match members.as_slice() {
                [a, b] if a != b => Ok((*a, NewConversation::Direct { peer: *b })),
                _ => Err(
                    "a direct conversation has two different member_ids (give a title for a group)"
                        .into(),
                ),
            },
            Some(title) => Ok((first, NewConversation::group(title, members)?)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConversationList {
    pub conversations: Vec<Conversation>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessagePage {
    pub messages: Vec<Message>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// With `rate_limited`: how long to wait before trying again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_error_code_is_written_as_serde_writes_it() {
        for code in super::ErrorCode::ALL {
            let wire = serde_json::to_string(&code).unwrap();
            assert_eq!(wire, format!("\"{}\"", code.as_str()));
        }
    }

    use super::*;
    use insta::assert_snapshot;

    fn uid(n: i64) -> UserId {
        UserId::new(n).unwrap_or_else(|_| unreachable!())
    }

    fn sample_message() -> Message {
        Message {
            id: MessageId(7_261_523_957_214_822_400),
            conversation_id: ConversationId::new(12).unwrap_or_else(|_| unreachable!()),
            seq: 57,
            sender_id: uid(42).into(),
            client_msg_id: ClientMsgId::try_from("b7c1".to_owned())
                .unwrap_or_else(|_| unreachable!()),
            body: "xin chào".into(),
            created_at: time::parse("2026-11-26T12:00:00.123Z").unwrap_or_default(),
            kind: MessageKind::User,
            card: None,
        }
    }

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap_or_default()
    }

    #[test]
    fn message_object_matches_the_contract() {
        assert_snapshot!(json(&sample_message()), @r#"{"id":"7261523957214822400","conversation_id":12,"seq":57,"sender_id":42,"client_msg_id":"b7c1","body":"xin chào","created_at":"2026-11-26T12:00:00.123Z"}"#);
    }

    #[test]
    fn a_system_message_with_a_card_says_so() {
        let card: Card =
            serde_json::from_str(r#"{"title":"Căn hộ 2PN, Quận 7","url":"https://mapmo.vn/l/1"}"#)
                .unwrap_or_else(|_| unreachable!());
        let message = Message {
            sender_id: SenderId::SYSTEM,
            kind: MessageKind::of(SenderId::SYSTEM),
            card: Some(card),
            ..sample_message()
        };
        assert_snapshot!(json(&message), @r#"{"id":"7261523957214822400","conversation_id":12,"seq":57,"sender_id":0,"client_msg_id":"b7c1","body":"xin chào","created_at":"2026-11-26T12:00:00.123Z","kind":"system","card":{"title":"Căn hộ 2PN, Quận 7","url":"https://mapmo.vn/l/1"}}"#);
        let back: Message =
            serde_json::from_str(&json(&message)).unwrap_or_else(|_| unreachable!());
        assert_eq!(back, message);
    }

    #[test]
    fn server_frames_match_the_contract() {
        let hello = ServerFrame::Hello {
            user_id: uid(42),
            session_id: "s1".into(),
            heartbeat_ms: 30000,
            max_body_chars: 4000,
        };
        assert_snapshot!(json(&hello), @r#"{"type":"hello","user_id":42,"session_id":"s1","heartbeat_ms":30000,"max_body_chars":4000}"#);
        let m = sample_message();
        let ack = ServerFrame::Ack {
            client_msg_id: m.client_msg_id.clone(),
            message: m,
        };
        assert_snapshot!(json(&ack), @r#"{"type":"ack","client_msg_id":"b7c1","message":{"id":"7261523957214822400","conversation_id":12,"seq":57,"sender_id":42,"client_msg_id":"b7c1","body":"xin chào","created_at":"2026-11-26T12:00:00.123Z"}}"#);
        let err = ServerFrame::Error {
            code: ErrorCode::Unavailable,
            message: "try again".into(),
            client_msg_id: Some("b7c1".into()),
            retry_after_ms: None,
        };
        assert_snapshot!(json(&err), @r#"{"type":"error","code":"unavailable","message":"try again","client_msg_id":"b7c1"}"#);
        assert_snapshot!(json(&ServerFrame::Pong), @r#"{"type":"pong"}"#);
        let presence = ServerFrame::Presence {
            user_id: uid(7),
            status: PresenceStatus::Offline,
            last_seen: None,
        };
        assert_snapshot!(json(&presence), @r#"{"type":"presence","user_id":7,"status":"offline","last_seen":null}"#);
        let user = ServerFrame::User {
            user: User {
                id: uid(7),
                name: Some("Lan Nguyễn".into()),
                avatar_url: None,
            },
        };
        assert_snapshot!(json(&user), @r#"{"type":"user","user":{"id":7,"name":"Lan Nguyễn","avatar_url":null}}"#);
    }

    #[test]
    fn client_frames_parse_as_the_contract_writes_them() {
        let send = ClientFrame::parse(
            r#"{"type":"send","conversation_id":12,"client_msg_id":"b7","body":"hi"}"#,
        );
        assert!(matches!(send, Ok(ClientFrame::Send(SendFrame { ref body, .. })) if body == "hi"));
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping)
        );
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"typing","conversation_id":12,"state":"start"}"#),
            Ok(ClientFrame::Typing {
                state: TypingState::Start,
                ..
            })
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"read","conversation_id":12,"seq":57}"#),
            Ok(ClientFrame::Read { seq: 57, .. })
        ));
    }

    #[test]
    fn a_refused_frame_keeps_its_client_msg_id() {
        let err = ClientFrame::parse(
            r#"{"type":"send","conversation_id":"x","client_msg_id":"c9","body":"hi"}"#,
        );
        let err = err.err().map(|e| (e.code, e.client_msg_id));
        assert_eq!(err, Some((ErrorCode::BadRequest, Some("c9".into()))));
        let not_json = ClientFrame::parse("{oops").err().map(|e| e.code);
        assert_eq!(not_json, Some(ErrorCode::BadRequest));
        let unknown = ClientFrame::parse(r#"{"type":"dance"}"#)
            .err()
            .map(|e| e.code);
        assert_eq!(unknown, Some(ErrorCode::BadRequest));
    }

    #[test]
    fn an_overlong_body_is_too_large_and_an_empty_one_bad_request() {
        let frame = SendFrame {
            conversation_id: ConversationId::new(1).unwrap_or_else(|_| unreachable!()),
            client_msg_id: ClientMsgId::try_from("c".to_owned()).unwrap_or_else(|_| unreachable!()),
            body: "a".repeat(11),
            card: None,
        };
        assert_eq!(
            frame.body(10).err().map(|e| e.code),
            Some(ErrorCode::TooLarge)
        );
        let empty = SendFrame {
            body: String::new(),
            ..frame
        };
        assert_eq!(
            empty.body(10).err().map(|e| e.code),
            Some(ErrorCode::BadRequest)
        );
    }

    #[test]
    fn create_conversation_requests_are_checked() {
        let me = uid(42);
        let direct = CreateConversationRequest {
            peer_id: Some(7),
            ..Default::default()
        };
        assert_eq!(
            direct.parse(me),
            Ok(NewConversation::Direct { peer: uid(7) })
        );
        let myself = CreateConversationRequest {
            peer_id: Some(42),
            ..Default::default()
        };
        assert!(myself.parse(me).is_err());
        let zero = CreateConversationRequest {
            peer_id: Some(0),
            ..Default::default()
        };
        assert!(zero.parse(me).is_err());
        let group = CreateConversationRequest {
            title: Some(" Team ".into()),
            member_ids: Some(vec![7, 7, 9]),
            ..Default::default()
        };
        assert_eq!(
            group.parse(me),
            Ok(NewConversation::Group {
                title: "Team".into(),
                members: vec![uid(7), uid(9), uid(42)]
            })
        );
        let untitled = CreateConversationRequest {
            title: Some("".into()),
            member_ids: Some(vec![7]),
            ..Default::default()
        };
        assert!(untitled.parse(me).is_err());
        let nul = CreateConversationRequest {
            title: Some("a\0b".into()),
            member_ids: Some(vec![7]),
            ..Default::default()
        };
        assert!(nul.parse(me).is_err());
        let crowd = CreateConversationRequest {
            title: Some("crowd".into()),
            member_ids: Some((1..=1001).collect()),
            ..Default::default()
        };
        assert!(crowd.parse(me).is_err());
    }
}

/// Arbitrary input at the socket: never a panic, and what is accepted means
/// the same when written back.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Text that is often almost a frame: JSON objects with the frame
    /// fields, values of the wrong kinds, and plain garbage.
    fn frame_like() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            Just("null".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| f.to_string()),
            ".{0,12}".prop_map(|s| serde_json::Value::String(s).to_string()),
            Just(r#"{"a":[1,2]}"#.to_owned()),
        ];
        let key = prop_oneof![
            Just("type"),
            Just("conversation_id"),
            Just("client_msg_id"),
            Just("body"),
            Just("state"),
            Just("seq"),
            Just("token"),
        ];
        let kind = prop_oneof![
            Just("send"),
            Just("typing"),
            Just("read"),
            Just("ping"),
            Just("auth"),
            Just("other"),
        ];
        prop_oneof![
            (kind, proptest::collection::vec((key, value), 0..6)).prop_map(|(kind, fields)| {
                let mut text = format!(r#"{{"type":"{kind}""#);
                for (k, v) in fields {
                    text.push_str(&format!(r#","{k}":{v}"#));
                }
                text.push('}');
                text
            }),
            ".{0,64}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parsing_any_text_never_panics_and_accepted_frames_round_trip(text in frame_like()) {
            if let Ok(frame) = ClientFrame::parse(&text) {
                let written = serde_json::to_string(&frame).unwrap();
                prop_assert_eq!(ClientFrame::parse(&written), Ok(frame));
            }
        }

        #[test]
        fn arbitrary_bytes_as_text_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = ClientFrame::parse(&text);
        }
    }
}
