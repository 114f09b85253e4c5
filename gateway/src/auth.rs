//! JWT (HS256) as protocol.md defines it, verified by `jsonwebtoken`: the
//! algorithm is pinned (a token that names any other `alg`, `none` included,
//! is refused), `exp` is required and checked without leeway, `iss` and `aud`
//! are checked when configured, and `sub` is a positive user id written as a
//! plain decimal string (`"42"`; not `"+42"`, `"042"`, `"4.2e1"` or a number).

use chat_shared::config::AuthSettings;
use chat_shared::ids::UserId;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

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
    #[error("token has the wrong issuer or audience")]
    WrongIssuerOrAudience,
}

/// The HS256 secret cannot be used (it is empty).
#[derive(Debug, thiserror::Error)]
#[error("the JWT secret cannot be used as an HS256 key")]
pub struct InvalidSecret;

/// Who a verified token says the caller is, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub user_id: UserId,
    pub name: Option<String>,
    /// The token's `exp` (unix seconds): a session ends then (close 4001).
    pub expires_at: i64,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

/// The keys and rules of one deployment. Cheap to clone.
#[derive(Clone)]
pub struct JwtKeys {
    inner: Arc<Inner>,
}

struct Inner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
}

impl JwtKeys {
    /// Keys for `secret`, with no `iss` or `aud` rule.
    pub fn new(secret: &str) -> Result<Self, InvalidSecret> {
        Self::build(secret, "", "")
    }

    pub fn from_settings(auth: &AuthSettings) -> Result<Self, InvalidSecret> {
        Self::build(auth.jwt_secret.expose(), &auth.issuer, &auth.audience)
    }

    fn build(secret: &str, issuer: &str, audience: &str) -> Result<Self, InvalidSecret> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        let issuer = (!issuer.is_empty()).then(|| issuer.to_owned());
        let audience = (!audience.is_empty()).then(|| audience.to_owned());
        let mut required = vec!["exp", "sub"];
        required.extend(issuer.as_ref().map(|_| "iss"));
        required.extend(audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        if let Some(iss) = &issuer {
            validation.set_issuer(&[iss]);
        }
        match &audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Self {
            inner: Arc::new(Inner {
                encoding: EncodingKey::from_secret(secret.as_bytes()).map_err(|_| InvalidSecret)?,
                decoding: DecodingKey::from_secret(secret.as_bytes()).map_err(|_| InvalidSecret)?,
                validation,
                issuer,
                audience,
            }),
        })
    }

    /// Verifies `token` against the current time.
    pub fn verify(&self, token: &str) -> Result<AuthUser, AuthError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.inner.decoding, &self.inner.validation)
                .map_err(|e| match e.kind() {
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        AuthError::WrongAlgorithm
                    }
                    ErrorKind::InvalidSignature => AuthError::BadSignature,
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
                        AuthError::WrongIssuerOrAudience
                    }
                    ErrorKind::MissingRequiredClaim(claim) if claim == "iss" || claim == "aud" => {
                        AuthError::WrongIssuerOrAudience
                    }
                    _ => AuthError::Malformed,
                })?;
        let claims = data.claims;
        Ok(AuthUser {
            user_id: parse_subject(&claims.sub).ok_or(AuthError::BadSubject)?,
            name: claims.name,
            expires_at: claims.exp,
        })
    }

    /// Mints a token (the dev login, and tests), with this deployment's
    /// `iss` and `aud` when it has them.
    pub fn issue(&self, user: UserId, name: Option<String>, exp: i64) -> String {
        let claims = Claims {
            sub: user.to_string(),
            exp,
            name,
            iss: self.inner.issuer.clone(),
            aud: self.inner.audience.clone(),
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.inner.encoding,
        )
        .unwrap_or_default()
    }
}

/// A positive user id in canonical decimal: digits only, no sign, no
/// leading zero, within i64.
fn parse_subject(sub: &str) -> Option<UserId> {
    let canonical =
        !sub.is_empty() && sub.bytes().all(|b| b.is_ascii_digit()) && !sub.starts_with('0');
    if !canonical {
        return None;
    }
    sub.parse::<i64>().ok().and_then(|n| UserId::new(n).ok())
}

pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::{Value, json};

    const SECRET: &str = "a-secret-that-is-long-enough-for-hs256-0123";

    fn keys() -> JwtKeys {
        JwtKeys::new(SECRET).unwrap()
    }

    fn user(n: i64) -> UserId {
        UserId::new(n).unwrap()
    }

    /// A token with exactly these claims, signed with `alg` and `secret`.
    fn raw_token(alg: Algorithm, secret: &str, claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn later() -> i64 {
        unix_now() + 60
    }

    #[test]
    fn a_token_it_issued_verifies() {
        let exp = later();
        let token = keys().issue(user(42), Some("An".into()), exp);
        assert_eq!(
            keys().verify(&token),
            Ok(AuthUser {
                user_id: user(42),
                name: Some("An".into()),
                expires_at: exp,
            })
        );
    }

    #[test]
    fn expired_tokens_are_refused_without_leeway() {
        let token = keys().issue(user(42), None, unix_now() - 1);
        assert_eq!(keys().verify(&token), Err(AuthError::Expired));
    }

    #[test]
    fn another_secret_is_a_bad_signature() {
        let token = JwtKeys::new("some-other-secret-also-long-enough-0123456")
            .unwrap()
            .issue(user(42), None, later());
        assert_eq!(keys().verify(&token), Err(AuthError::BadSignature));
    }

    #[test]
    fn the_algorithm_is_pinned_to_hs256() {
        let hs512 = raw_token(
            Algorithm::HS512,
            SECRET,
            json!({"sub": "42", "exp": later()}),
        );
        assert_eq!(keys().verify(&hs512), Err(AuthError::WrongAlgorithm));
        // alg "none", no signature.
        let b64 = |v: Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap());
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"sub": "42", "exp": later()}))
        );
        assert!(keys().verify(&none).is_err());
    }

    #[test]
    fn exp_and_sub_are_required() {
        let no_exp = raw_token(Algorithm::HS256, SECRET, json!({"sub": "42"}));
        assert_eq!(keys().verify(&no_exp), Err(AuthError::Malformed));
        let no_sub = raw_token(Algorithm::HS256, SECRET, json!({"exp": later()}));
        assert_eq!(keys().verify(&no_sub), Err(AuthError::Malformed));
    }

    #[test]
    fn sub_must_be_a_positive_id_in_plain_decimal() {
        for sub in [
            "-1",
            "0",
            "+42",
            "007",
            "4.2",
            "42.0",
            "4e1",
            " 42",
            "42 ",
            "",
            "9223372036854775808",
            "18446744073709551616",
        ] {
            let token = raw_token(
                Algorithm::HS256,
                SECRET,
                json!({"sub": sub, "exp": later()}),
            );
            assert_eq!(keys().verify(&token), Err(AuthError::BadSubject), "{sub:?}");
        }
        let numeric = raw_token(Algorithm::HS256, SECRET, json!({"sub": 42, "exp": later()}));
        assert_eq!(keys().verify(&numeric), Err(AuthError::Malformed));
        let max = raw_token(
            Algorithm::HS256,
            SECRET,
            json!({"sub": "9223372036854775807", "exp": later()}),
        );
        assert_eq!(keys().verify(&max).map(|u| u.user_id.get()), Ok(i64::MAX));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let strict = JwtKeys::build(SECRET, "mapmo.vn", "chat").unwrap();
        assert!(strict.verify(&strict.issue(user(7), None, later())).is_ok());
        // A token of the same secret without iss/aud, or with others, is refused.
        assert_eq!(
            strict.verify(&keys().issue(user(7), None, later())),
            Err(AuthError::WrongIssuerOrAudience)
        );
        let other = JwtKeys::build(SECRET, "evil.example", "chat").unwrap();
        assert_eq!(
            strict.verify(&other.issue(user(7), None, later())),
            Err(AuthError::WrongIssuerOrAudience)
        );
        let other = JwtKeys::build(SECRET, "mapmo.vn", "admin").unwrap();
        assert_eq!(
            strict.verify(&other.issue(user(7), None, later())),
            Err(AuthError::WrongIssuerOrAudience)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        for token in ["", "abc", "a.b.c", "a.b.c.d", "....", "\u{0}"] {
            assert_eq!(keys().verify(token), Err(AuthError::Malformed), "{token:?}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            #[test]
            fn any_text_as_a_token_is_refused_without_a_panic(token in ".{0,300}") {
                prop_assert!(keys().verify(&token).is_err());
            }

            #[test]
            fn three_parts_of_base64_garbage_are_refused(
                parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 3)
            ) {
                let token: Vec<String> = parts.iter().map(|p| URL_SAFE_NO_PAD.encode(p)).collect();
                prop_assert!(keys().verify(&token.join(".")).is_err());
            }

            #[test]
            fn every_issued_token_verifies_to_its_user(id in 1..=i64::MAX, name in proptest::option::of(".{0,40}")) {
                let user = UserId::new(id).unwrap();
                let token = keys().issue(user, name.clone(), later());
                let verified = keys().verify(&token).unwrap();
                prop_assert_eq!(verified.user_id, user);
                prop_assert_eq!(verified.name, name);
            }
        }
    }
}
