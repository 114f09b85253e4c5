//! The web client (gateway/web/, docs/client.md), served at `/` of the
//! public entry point. The files are embedded at build time (build.rs), so
//! a gateway in a container serves them with nothing mounted;
//! `gateway.web_dir` serves them from a folder instead, for working on the
//! client without rebuilding.
//!
//! Every answer carries a Content-Security-Policy that allows only our own
//! origin: no CDN, no inline script, no framing. Images are the exception:
//! people's avatars are `https://` URLs of the host site's (the contract's
//! User object), so `img-src` also allows `https:`.

use super::error::ApiError;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: https:; connect-src 'self'; manifest-src 'self'; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the client's page.
pub async fn index(state: State<AppState>) -> Response {
    asset(state, Path("index.html".to_owned())).await
}

/// `GET /app/{name}`: one of the client's files.
pub async fn asset(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let Some(content_type) = AssetName::parse(&name).map(AssetName::content_type) else {
        return ApiError::not_found("no such file").into_response();
    };
    // The built-in files are served from the binary as they are, no copy.
    let body: Body = match &state.settings.gateway.web_dir {
        Some(dir) => match tokio::fs::read(dir.join(&name)).await {
            Ok(bytes) => Body::from(bytes),
            Err(_) => return ApiError::not_found("no such file").into_response(),
        },
        None => match WEB_ASSETS.iter().find(|(file, _)| *file == name) {
            Some((_, bytes)) => Body::from(*bytes),
            None => return ApiError::not_found("no such file").into_response(),
        },
    };
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
            // Small files: revalidate each time, so a deploy shows at once.
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
            (
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

/// A file name the client may ask for: one plain name (letters, digits,
/// `-`, `_`, one `.` before a known extension), never a path.
struct AssetName<'a> {
    extension: &'a str,
}

impl<'a> AssetName<'a> {
    fn parse(name: &'a str) -> Option<Self> {
        let (stem, extension) = name.rsplit_once('.')?;
        let plain = !stem.is_empty()
            && stem
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let known = Self::type_of(extension).is_some();
        (plain && known).then_some(Self { extension })
    }

    fn type_of(extension: &str) -> Option<&'static str> {
        Some(match extension {
            "html" => "text/html; charset=utf-8",
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "svg" => "image/svg+xml",
            "png" => "image/png",
            "ico" => "image/x-icon",
            "webmanifest" => "application/manifest+json",
            _ => return None,
        })
    }

    fn content_type(self) -> &'static str {
        Self::type_of(self.extension).unwrap_or("application/octet-stream")
    }
}

#[cfg(test)]
mod tests {
    use super::AssetName;

    #[test]
    fn only_plain_names_with_known_extensions_are_served() {
        for good in [
            "index.html",
            "app.js",
            "chat-view.js",
            "style.css",
            "icon_1.svg",
        ] {
            assert!(AssetName::parse(good).is_some(), "{good}");
        }
        for bad in [
            "../Cargo.toml",
            "..%2fsecret.js",
            "a/b.js",
            ".js",
            "app.js.map",
            "app.exe",
            "app",
            "/etc/passwd.html",
            "app..js",
        ] {
            assert!(AssetName::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_client_is_embedded() {
        assert!(
            super::WEB_ASSETS
                .iter()
                .any(|(name, _)| *name == "index.html"),
            "gateway/web/index.html is embedded"
        );
        for (name, _) in super::WEB_ASSETS {
            assert!(AssetName::parse(name).is_some(), "{name} can be served");
        }
    }
}
