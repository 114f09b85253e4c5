//! People: the User object of the contract (version 2, "People") and the
//! values it is made of, parsed at the boundary. A name comes from the host
//! site (a token's `name` claim, the server API) and is stored
//! NFC-normalised; a name that breaks the rules is refused, never trimmed
//! or cut.

use crate::ids::{InvalidValue, UserId};
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization as _;

/// A user's profile as every client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct User {
    pub id: UserId,
    /// Null when nobody ever gave one.
    pub name: Option<String>,
    pub avatar_url: Option<String>,
}

impl User {
    /// A user nobody ever named.
    pub fn unnamed(id: UserId) -> Self {
        Self {
            id,
            name: None,
            avatar_url: None,
        }
    }
}

/// A display name: NFC-normalised, 1 to 100 characters, not only white
/// space, without control characters (NUL, line breaks, the bidi controls
/// of Unicode's Cc category).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DisplayName(String);

impl DisplayName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        // Bounded work on hostile input: normalise at most a little more
        // than the longest name could need.
        if raw.chars().nth(Self::MAX_CHARS * 4).is_some() {
            return Err(Self::too_long());
        }
        let name: String = raw.nfc().collect();
        if name.trim().is_empty() {
            return Err(InvalidValue::Empty("name"));
        }
        if name.chars().any(char::is_control) {
            return Err(InvalidValue::Control("name"));
        }
        if name.chars().count() > Self::MAX_CHARS {
            return Err(Self::too_long());
        }
        Ok(Self(name))
    }

    fn too_long() -> InvalidValue {
        InvalidValue::TooLong {
            what: "name",
            max: Self::MAX_CHARS,
        }
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
    use proptest::prelude::*;

    #[test]
    fn a_name_is_stored_nfc_normalised() {
        // "Nguyễn" typed as e + combining marks becomes the composed form.
        let decomposed = "Nguye\u{302}\u{303}n";
        let name = DisplayName::parse(decomposed).unwrap();
        assert_eq!(name.as_str(), "Nguyễn");
        assert_eq!(name.as_str().chars().count(), 6);
    }

    #[test]
    fn empty_blank_controlled_and_overlong_names_are_refused() {
        assert_eq!(DisplayName::parse(""), Err(InvalidValue::Empty("name")));
        assert_eq!(DisplayName::parse(" \t "), Err(InvalidValue::Empty("name")));
        assert_eq!(DisplayName::parse("   "), Err(InvalidValue::Empty("name")));
        assert_eq!(
            DisplayName::parse("Lan\nNguyễn"),
            Err(InvalidValue::Control("name"))
        );
        assert_eq!(
            DisplayName::parse("a\0b"),
            Err(InvalidValue::Control("name"))
        );
        assert!(DisplayName::parse(&"ư".repeat(100)).is_ok());
        assert!(matches!(
            DisplayName::parse(&"ư".repeat(101)),
            Err(InvalidValue::TooLong { max: 100, .. })
        ));
        // Counted after normalisation: 100 composed characters typed as 200.
        assert!(DisplayName::parse(&"u\u{31b}".repeat(100)).is_ok());
        assert!(DisplayName::parse(&"x".repeat(10_000)).is_err());
    }

    proptest! {
        #[test]
        fn whatever_is_accepted_follows_the_rules(raw in any::<String>()) {
            if let Ok(name) = DisplayName::parse(&raw) {
                let s = name.as_str();
                prop_assert!(!s.trim().is_empty());
                prop_assert!(s.chars().count() <= DisplayName::MAX_CHARS);
                prop_assert!(!s.chars().any(char::is_control));
                // Stored normalised: normalising again changes nothing.
                prop_assert_eq!(s.nfc().collect::<String>(), s);
            }
        }

        #[test]
        fn plain_names_are_accepted_when_their_nfc_form_fits(
            raw in "[\\p{L}\\p{M}\\p{N} .'-]{1,100}"
        ) {
            prop_assume!(!raw.trim().is_empty());
            // NFC may lengthen (composition exclusions decompose): the
            // limit counts the stored, normalised form.
            let nfc: String = raw.nfc().collect();
            if nfc.chars().count() <= DisplayName::MAX_CHARS {
                prop_assert_eq!(DisplayName::parse(&raw).map(DisplayName::into_inner), Ok(nfc));
            } else {
                let too_long = matches!(DisplayName::parse(&raw), Err(InvalidValue::TooLong { .. }));
                prop_assert!(too_long);
            }
        }

        #[test]
        fn any_control_character_is_refused(
            before in "[a-z]{1,10}", control in "\\p{Cc}", after in "[a-z]{0,10}"
        ) {
            let raw = format!("{before}{control}{after}");
            prop_assert_eq!(DisplayName::parse(&raw), Err(InvalidValue::Control("name")));
        }
    }
}
