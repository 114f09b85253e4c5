//! Timestamps on the wire: RFC 3339, UTC, milliseconds (`2026-11-26T12:00:00.123Z`).

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serializer};

pub type Timestamp = DateTime<Utc>;

/// Now, truncated to the millisecond the wire can carry, so what is stored is
/// exactly what clients see.
pub fn now_millis() -> Timestamp {
    Utc::now().trunc_subsecs(3)
}

pub fn format(t: &Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn parse(raw: &str) -> Result<Timestamp, chrono::ParseError> {
    DateTime::parse_from_rfc3339(raw).map(|t| t.with_timezone(&Utc))
}

/// `#[serde(with = "crate::time::rfc3339")]`
pub mod rfc3339 {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let raw = String::deserialize(d)?;
        parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// The same for `Option<Timestamp>`.
pub mod rfc3339_opt {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&format(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|raw| parse(&raw).map_err(serde::de::Error::custom))
            .transpose()
    }
}
