//! The server API's keys (`auth.server_api_keys`): each entry is
//! `<id>:<secret>`, so logs and metrics can name the key (its id) without
//! ever showing it. Several keys at once let a key be rotated without
//! downtime. A presented key is compared with every key, in constant time
//! (SHA-256 digests, compared without an early exit), so neither its
//! content nor its length is told by the time the answer takes.

use sha2::{Digest, Sha256};

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

struct Key {
    id: String,
    digest: [u8; 32],
}

pub struct ServerKeys {
    keys: Vec<Key>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "auth.server_api_keys entry {0}: expected <id>:<secret>, the id 1 to 64 of [A-Za-z0-9._-]"
    )]
    Shape(usize),
    #[error(
        "auth.server_api_keys entry {0} ({1}): the secret must be at least {MIN_SECRET_BYTES} bytes"
    )]
    Short(usize, String),
    #[error("auth.server_api_keys: the id {0} is used twice")]
    Repeated(String),
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl ServerKeys {
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, KeyError> {
        let mut keys: Vec<Key> = Vec::new();
        for (n, entry) in entries.into_iter().enumerate() {
            let (id, secret) = entry.split_once(':').ok_or(KeyError::Shape(n))?;
            let id_ok = (1..=64).contains(&id.len())
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !id_ok {
                return Err(KeyError::Shape(n));
            }
            if secret.len() < MIN_SECRET_BYTES {
                return Err(KeyError::Short(n, id.to_owned()));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyError::Repeated(id.to_owned()));
            }
            keys.push(Key {
                id: id.to_owned(),
                digest: digest(entry.as_bytes()),
            });
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The index of the key `presented` (the whole `<id>:<secret>`), after
    /// comparing it with every key.
    pub fn find(&self, presented: &str) -> Option<usize> {
        let presented = digest(presented.as_bytes());
        let mut found = None;
        for (index, key) in self.keys.iter().enumerate() {
            let difference = key
                .digest
                .iter()
                .zip(presented)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if std::hint::black_box(difference) == 0 {
                found = Some(index);
            }
        }
        found
    }

    /// The id of key `index` (for logs and metrics).
    pub fn id(&self, index: usize) -> &str {
        self.keys.get(index).map_or("?", |k| k.id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "site-2026:0123456789abcdef0123456789abcdef";
    const B: &str = "site-2027:fedcba9876543210fedcba9876543210";

    #[test]
    fn a_key_is_found_by_its_whole_text_and_named_by_its_id() {
        let keys = ServerKeys::parse([A, B]).unwrap();
        assert_eq!(keys.find(B), Some(1));
        assert_eq!(keys.id(1), "site-2027");
        assert_eq!(keys.find(A), Some(0));
        for wrong in [
            "",
            "site-2026",
            "site-2026:0123456789abcdef0123456789abcdeX",
            "site-2027:0123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(keys.find(wrong), None, "{wrong}");
        }
    }

    #[test]
    fn malformed_short_and_repeated_keys_are_refused_at_start() {
        assert_eq!(
            ServerKeys::parse(["nocolon"]).err(),
            Some(KeyError::Shape(0))
        );
        assert_eq!(
            ServerKeys::parse([":0123456789abcdef0123456789abcdef"]).err(),
            Some(KeyError::Shape(0))
        );
        assert_eq!(
            ServerKeys::parse(["a b:0123456789abcdef0123456789abcdef"]).err(),
            Some(KeyError::Shape(0))
        );
        assert_eq!(
            ServerKeys::parse([A, "k:short"]).err(),
            Some(KeyError::Short(1, "k".into()))
        );
        assert_eq!(
            ServerKeys::parse([A, A]).err(),
            Some(KeyError::Repeated("site-2026".into()))
        );
        assert!(ServerKeys::parse([]).unwrap().is_empty());
    }
}
