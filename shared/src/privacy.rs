//! Version 2 consent: who sees what about a user (`GET`/`PUT
//! /api/me/privacy`). The defaults keep version 1's behaviour. Stored in the
//! `users` table's `privacy_*` columns (a user without a row has the
//! defaults); the SQL that applies them is in [`crate::directory`].

use serde::{Deserialize, Serialize};

/// Who sees a user's presence (`online`, `offline`, `last_seen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PresenceAudience {
    /// Everyone who shares a conversation with them (version 1).
    #[default]
    Everyone,
    /// Their contacts: the users with whom they share a direct
    /// conversation in which they have sent a message.
    Contacts,
    Nobody,
}

/// Who may add a user to a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupsAudience {
    #[default]
    Everyone,
    Contacts,
}

/// A user's settings, as `GET /api/me/privacy` answers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Privacy {
    pub presence: PresenceAudience,
    pub read_receipts: bool,
    pub groups: GroupsAudience,
}

impl Default for Privacy {
    fn default() -> Self {
        Self {
            presence: PresenceAudience::Everyone,
            read_receipts: true,
            groups: GroupsAudience::Everyone,
        }
    }
}

/// The body of `PUT /api/me/privacy`: any of the fields; an unknown field or
/// value is refused (400), so a typo is not taken for a change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrivacyChange {
    pub presence: Option<PresenceAudience>,
    pub read_receipts: Option<bool>,
    pub groups: Option<GroupsAudience>,
}

impl PrivacyChange {
    /// The settings after this change.
    pub fn applied_to(self, before: Privacy) -> Privacy {
        Privacy {
            presence: self.presence.unwrap_or(before.presence),
            read_receipts: self.read_receipts.unwrap_or(before.read_receipts),
            groups: self.groups.unwrap_or(before.groups),
        }
    }
}

impl PresenceAudience {
    /// As stored in `users.privacy_presence`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Everyone => "everyone",
            Self::Contacts => "contacts",
            Self::Nobody => "nobody",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        [Self::Everyone, Self::Contacts, Self::Nobody]
            .into_iter()
            .find(|a| a.as_str() == stored)
    }
}

impl GroupsAudience {
    /// As stored in `users.privacy_groups`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Everyone => "everyone",
            Self::Contacts => "contacts",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        [Self::Everyone, Self::Contacts]
            .into_iter()
            .find(|a| a.as_str() == stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_keep_version_one() {
        let json = serde_json::to_value(Privacy::default()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"presence": "everyone", "read_receipts": true, "groups": "everyone"})
        );
    }

    #[test]
    fn a_change_sets_only_what_it_names() {
        let change: PrivacyChange = serde_json::from_str(r#"{"presence":"contacts"}"#).unwrap();
        let after = change.applied_to(Privacy::default());
        assert_eq!(after.presence, PresenceAudience::Contacts);
        assert!(after.read_receipts);
        assert_eq!(after.groups, GroupsAudience::Everyone);
    }

    #[test]
    fn unknown_values_and_fields_are_refused() {
        for bad in [
            r#"{"presence":"friends"}"#,
            r#"{"groups":"nobody"}"#,
            r#"{"read_receipts":"yes"}"#,
            r#"{"presense":"nobody"}"#,
            r#"[]"#,
        ] {
            assert!(serde_json::from_str::<PrivacyChange>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stored_values_read_back() {
        for a in [
            PresenceAudience::Everyone,
            PresenceAudience::Contacts,
            PresenceAudience::Nobody,
        ] {
            assert_eq!(PresenceAudience::parse(a.as_str()), Some(a));
        }
        for a in [GroupsAudience::Everyone, GroupsAudience::Contacts] {
            assert_eq!(GroupsAudience::parse(a.as_str()), Some(a));
        }
        assert_eq!(PresenceAudience::parse("all"), None);
    }
}
