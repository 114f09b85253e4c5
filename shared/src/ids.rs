//! Typed ids and validated values. Everything that crosses a boundary (a frame,
//! an HTTP body, a JWT, a bus event) is parsed into these before it is used, so
//! the rest of the code cannot hold an invalid one.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Why a value from outside was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    #[error("{0} must be a positive integer")]
    NotPositive(&'static str),
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("{what} is longer than {max} characters")]
    TooLong { what: &'static str, max: usize },
    #[error("{0} must not contain NUL characters")]
    Nul(&'static str),
    #[error("{0} must not contain control characters")]
    Control(&'static str),
    #[error("{0} must be an https:// URL")]
    NotHttps(&'static str),
}

macro_rules! positive_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            pub fn new(raw: i64) -> Result<Self, InvalidValue> {
                if raw > 0 { Ok(Self(raw)) } else { Err(InvalidValue::NotPositive($what)) }
            }
            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Self::new(i64::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

positive_id!(
    /// A user of the host site (the JWT `sub`).
    UserId,
    "user id"
);
positive_id!(
    /// A conversation, direct or group.
    ConversationId,
    "conversation id"
);

/// Who sent a message: a user, or the system (`0` on the wire and in
/// Postgres: a message the host site posted with no sender, version 2's
/// server API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct SenderId(i64);

impl SenderId {
    pub const SYSTEM: Self = Self(0);

    pub fn new(raw: i64) -> Result<Self, InvalidValue> {
        if raw >= 0 {
            Ok(Self(raw))
        } else {
            Err(InvalidValue::NotPositive("sender id"))
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }

    /// The user who sent it; `None` for the system.
    pub fn user(self) -> Option<UserId> {
        UserId::new(self.0).ok()
    }

    pub fn is_system(self) -> bool {
        self == Self::SYSTEM
    }
}

impl From<UserId> for SenderId {
    fn from(user: UserId) -> Self {
        Self(user.get())
    }
}

impl PartialEq<UserId> for SenderId {
    fn eq(&self, user: &UserId) -> bool {
        self.0 == user.get()
    }
}

impl<'de> Deserialize<'de> for SenderId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(i64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for SenderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A stored message's system-wide id. Written as a string on the wire because
/// it may exceed 2^53, which JavaScript numbers cannot hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, utoipa::ToSchema)]
#[schema(value_type = String, example = "1234567890123")]
pub struct MessageId(pub i64);

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map(MessageId).map_err(serde::de::Error::custom)
    }
}

/// The sender's idempotency key: 1 to 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String)]
pub struct ClientMsgId(String);

impl ClientMsgId {
    pub const MAX_CHARS: usize = 64;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClientMsgId {
    type Error = InvalidValue;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        let chars = raw.chars().count();
        if chars == 0 {
            Err(InvalidValue::Empty("client_msg_id"))
        } else if raw.contains('\0') {
            Err(InvalidValue::Nul("client_msg_id"))
        } else if chars > Self::MAX_CHARS {
            Err(InvalidValue::TooLong {
                what: "client_msg_id",
                max: Self::MAX_CHARS,
            })
        } else {
            Ok(Self(raw))
        }
    }
}

impl From<ClientMsgId> for String {
    fn from(id: ClientMsgId) -> String {
        id.0
    }
}

/// A message body: 1 to `max_chars` characters (characters, not bytes, so a
/// Vietnamese body is held to the same limit as an English one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageBody(String);

impl MessageBody {
    pub fn parse(raw: String, max_chars: usize) -> Result<Self, InvalidValue> {
        if raw.is_empty() {
            return Err(InvalidValue::Empty("body"));
        }
        // Postgres text cannot hold NUL; refuse it here rather than fail a batch.
        if raw.contains('\0') {
            return Err(InvalidValue::Nul("body"));
        }
        // Count at most max_chars + 1 characters: enough to decide, bounded work.
        if raw.chars().take(max_chars + 1).count() > max_chars {
            return Err(InvalidValue::TooLong {
                what: "body",
                max: max_chars,
            });
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_positive() {
        assert!(UserId::new(0).is_err());
        assert!(UserId::new(-3).is_err());
        assert_eq!(UserId::new(42).map(UserId::get), Ok(42));
        assert!(serde_json::from_str::<ConversationId>("0").is_err());
    }

    #[test]
    fn body_length_is_counted_in_characters() {
        let vietnamese = "xin chào".repeat(500); // 4000 characters, more bytes
        assert!(MessageBody::parse(vietnamese.clone(), 4000).is_ok());
        assert_eq!(
            MessageBody::parse(format!("{vietnamese}!"), 4000),
            Err(InvalidValue::TooLong {
                what: "body",
                max: 4000
            })
        );
        assert_eq!(
            MessageBody::parse(String::new(), 4000),
            Err(InvalidValue::Empty("body"))
        );
        assert_eq!(
            MessageBody::parse("a\0b".into(), 4000),
            Err(InvalidValue::Nul("body"))
        );
    }

    #[test]
    fn client_msg_id_is_one_to_sixty_four_characters() {
        assert!(ClientMsgId::try_from(String::new()).is_err());
        assert!(ClientMsgId::try_from("é".repeat(64)).is_ok());
        assert!(ClientMsgId::try_from("a".repeat(65)).is_err());
    }

    #[test]
    fn message_id_travels_as_a_string() {
        let id = MessageId(7_261_523_957_214_822_400_i64 / 2);
        let json = serde_json::to_string(&id).unwrap_or_default();
        assert_eq!(json, "\"3630761978607411200\"");
        assert_eq!(serde_json::from_str::<MessageId>(&json).ok(), Some(id));
    }
}
