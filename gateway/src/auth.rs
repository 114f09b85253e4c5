//! JWT (HS256) as protocol.md defines it: the algorithm is pinned (a token
//! that names any other `alg`, `none` included, is refused), `exp` is
//! required, `sub` is a positive user id written as a decimal string.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chat_shared::ids::UserId;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm must be HS256")]
    WrongAlgorithm,
    #[error("bad token signature")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token has no valid sub")]
    BadSubject,
}

/// Who a verified token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub user_id: UserId,
    pub name: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

#[derive(Clone)]
pub struct JwtKeys {
    secret: Vec<u8>,
}

impl JwtKeys {
    pub fn new(secret: &str) -> Self {
        Self {
            secret: secret.as_bytes().to_vec(),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!())
    }

    /// Verifies `token` at unix time `now`.
    pub fn verify(&self, token: &str, now: i64) -> Result<AuthUser, AuthError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header: Header = decode_part(header)?;
        if header.alg != "HS256" {
            return Err(AuthError::WrongAlgorithm);
        }
        let signature = B64.decode(signature).map_err(|_| AuthError::Malformed)?;
        let signed = &token[..token.len() - signature_len(token)];
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)?;
        let claims: Claims = decode_part(payload)?;
        if claims.exp <= now {
            return Err(AuthError::Expired);
        }
        let user_id = claims
            .sub
            .parse::<i64>()
            .ok()
            .and_then(|raw| UserId::new(raw).ok())
            .ok_or(AuthError::BadSubject)?;
        Ok(AuthUser {
            user_id,
            name: claims.name,
        })
    }

    /// Mints a token (the dev login, and tests).
    pub fn issue(&self, user: UserId, name: Option<String>, exp: i64) -> String {
        let header = Header {
            alg: "HS256".into(),
            typ: Some("JWT".into()),
        };
        let claims = Claims {
            sub: user.to_string(),
            exp,
            name,
        };
        let signed = format!("{}.{}", encode_part(&header), encode_part(&claims));
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        let signature = B64.encode(mac.finalize().into_bytes());
        format!("{signed}.{signature}")
    }
}

/// Length of ".<signature>" at the end of the token.
fn signature_len(token: &str) -> usize {
    token.rsplit('.').next().map_or(0, |s| s.len() + 1)
}

fn decode_part<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, AuthError> {
    let bytes = B64.decode(part).map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

fn encode_part<T: Serialize>(value: &T) -> String {
    B64.encode(serde_json::to_vec(value).unwrap_or_default())
}

pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn keys() -> JwtKeys {
        JwtKeys::new("a-secret-that-is-long-enough-for-hs256-0123")
    }

    fn user(n: i64) -> UserId {
        UserId::new(n).unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn a_token_it_issued_verifies() {
        let token = keys().issue(user(42), Some("An".into()), NOW + 60);
        assert_eq!(
            keys().verify(&token, NOW),
            Ok(AuthUser {
                user_id: user(42),
                name: Some("An".into())
            })
        );
    }

    #[test]
    fn expired_tokens_are_refused() {
        let token = keys().issue(user(42), None, NOW);
        assert_eq!(keys().verify(&token, NOW), Err(AuthError::Expired));
    }

    #[test]
    fn another_secret_is_a_bad_signature() {
        let token = JwtKeys::new("some-other-secret-also-long-enough-0123456").issue(
            user(42),
            None,
            NOW + 60,
        );
        assert_eq!(keys().verify(&token, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn the_algorithm_is_pinned_to_hs256() {
        let header = encode_part(&Header {
            alg: "none".into(),
            typ: None,
        });
        let claims = encode_part(&Claims {
            sub: "42".into(),
            exp: NOW + 60,
            name: None,
        });
        assert_eq!(
            keys().verify(&format!("{header}.{claims}."), NOW),
            Err(AuthError::WrongAlgorithm)
        );
    }

    #[test]
    fn exp_is_required_and_sub_must_be_a_positive_id() {
        let header = encode_part(&Header {
            alg: "HS256".into(),
            typ: None,
        });
        let no_exp = B64.encode(br#"{"sub":"42"}"#);
        let signed = format!("{header}.{no_exp}");
        let mut mac = keys().mac();
        mac.update(signed.as_bytes());
        let token = format!("{signed}.{}", B64.encode(mac.finalize().into_bytes()));
        assert_eq!(keys().verify(&token, NOW), Err(AuthError::Malformed));

        let bad_sub = Claims {
            sub: "-1".into(),
            exp: NOW + 60,
            name: None,
        };
        let signed = format!("{header}.{}", encode_part(&bad_sub));
        let mut mac = keys().mac();
        mac.update(signed.as_bytes());
        let token = format!("{signed}.{}", B64.encode(mac.finalize().into_bytes()));
        assert_eq!(keys().verify(&token, NOW), Err(AuthError::BadSubject));
    }

    #[test]
    fn garbage_is_malformed() {
        assert_eq!(keys().verify("abc", NOW), Err(AuthError::Malformed));
        assert_eq!(keys().verify("a.b.c.d", NOW), Err(AuthError::Malformed));
    }
}
