//! Version 2's structured content: a `card` shown with a message (a listing,
//! a place), and the `https://` URLs it and a profile's avatar are made of.
//! Parsed at the boundary: a `Card` or an `HttpsUrl` that exists is valid,
//! wherever it came from (a frame, the server API, the bus, a row).

use crate::ids::InvalidValue;
use serde::{Deserialize, Serialize};

/// An `https://` URL of at most [`HttpsUrl::MAX_CHARS`] characters, without
/// white space or control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, format = "uri")]
pub struct HttpsUrl(String);

impl HttpsUrl {
    pub const MAX_CHARS: usize = 500;

    pub fn parse(raw: &str, what: &'static str) -> Result<Self, InvalidValue> {
        if raw.chars().nth(Self::MAX_CHARS).is_some() {
            return Err(InvalidValue::TooLong {
                what,
                max: Self::MAX_CHARS,
            });
        }
        let rest = raw
            .strip_prefix("https://")
            .ok_or(InvalidValue::NotHttps(what))?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(InvalidValue::NotHttps(what));
        }
        if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(InvalidValue::Control(what));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HttpsUrl {
    type Error = InvalidValue;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw, "url")
    }
}

impl From<HttpsUrl> for String {
    fn from(url: HttpsUrl) -> String {
        url.0
    }
}

/// `{"title", "subtitle", "url", "image_url"}`: title 1 to 200 characters,
/// subtitle 0 to 200, neither with control characters; the URLs optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "RawCard")]
pub struct Card {
    #[schema(min_length = 1, max_length = 200)]
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 200)]
    pub subtitle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<HttpsUrl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<HttpsUrl>,
}

/// A card as it arrives, before its rules are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCard {
    title: String,
    #[serde(default)]
    subtitle: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    image_url: Option<String>,
}

impl Card {
    pub const MAX_CHARS: usize = 200;
}

/// `raw` as a card text of at most [`Card::MAX_CHARS`] characters.
fn text(raw: String, what: &'static str, min: usize) -> Result<String, InvalidValue> {
    let count = raw.chars().take(Card::MAX_CHARS + 1).count();
    if count < min {
        return Err(InvalidValue::Empty(what));
    }
    if count > Card::MAX_CHARS {
        return Err(InvalidValue::TooLong {
            what,
            max: Card::MAX_CHARS,
        });
    }
    if raw.chars().any(char::is_control) {
        return Err(InvalidValue::Control(what));
    }
    Ok(raw)
}

impl TryFrom<RawCard> for Card {
    type Error = InvalidValue;
    fn try_from(raw: RawCard) -> Result<Self, Self::Error> {
        Ok(Self {
            title: text(raw.title, "card.title", 1)?,
            subtitle: raw
                .subtitle
                .map(|s| text(s, "card.subtitle", 0))
                .transpose()?,
            url: raw
                .url
                .map(|u| HttpsUrl::parse(&u, "card.url"))
                .transpose()?,
            image_url: raw
                .image_url
                .map(|u| HttpsUrl::parse(&u, "card.image_url"))
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn card(value: serde_json::Value) -> Result<Card, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    #[test]
    fn a_listing_card_round_trips() {
        let listing = json!({
            "title": "Căn hộ 2PN, Quận 7",
            "subtitle": "3,2 tỷ",
            "url": "https://mapmo.vn/l/123",
            "image_url": "https://img.mapmo.vn/123.jpg"
        });
        let parsed = card(listing.clone()).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), listing);
        let bare = card(json!({"title": "Nhà phố"})).unwrap();
        assert_eq!(
            serde_json::to_value(&bare).unwrap(),
            json!({"title": "Nhà phố"})
        );
    }

    #[test]
    fn a_card_that_breaks_a_rule_is_refused() {
        for bad in [
            json!({}),
            json!({"title": ""}),
            json!({"title": "x".repeat(201)}),
            json!({"title": "a\nb"}),
            json!({"title": "t", "subtitle": "x".repeat(201)}),
            json!({"title": "t", "subtitle": "a\u{7}"}),
            json!({"title": "t", "url": "http://mapmo.vn"}),
            json!({"title": "t", "url": "javascript:alert(1)"}),
            json!({"title": "t", "url": "https://"}),
            json!({"title": "t", "url": "https:///x"}),
            json!({"title": "t", "url": "https://a b"}),
            json!({"title": "t", "image_url": format!("https://{}", "a".repeat(500))}),
            json!({"title": "t", "price": 3}),
            json!("a card"),
        ] {
            assert!(card(bad.clone()).is_err(), "{bad}");
        }
        assert!(card(json!({"title": "t", "subtitle": ""})).is_ok());
        assert!(card(json!({"title": "ư".repeat(200)})).is_ok());
    }

    #[test]
    fn urls_are_https_and_at_most_500_characters() {
        let longest = format!("https://{}", "a".repeat(492));
        assert!(HttpsUrl::parse(&longest, "url").is_ok());
        assert!(HttpsUrl::parse(&format!("{longest}a"), "url").is_err());
        assert!(HttpsUrl::parse("HTTPS://x", "url").is_err());
    }
}
