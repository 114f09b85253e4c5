//! The OpenAPI 3.1 document of every HTTP route, user and server, served at
//! `GET /api/openapi.json` so the host site can generate its client.
//!
//! It cannot drift from the code: each route is registered once, with
//! `utoipa_axum::routes!`, from its handler's `#[utoipa::path]` (method,
//! path, parameters, answers), and the router the gateway serves is the one
//! that registration builds (`super::router`); the bodies are the wire types
//! themselves (`ToSchema`). The routes that are not part of the API (the web
//! client's files, the conformance echo, this document) are the
//! [`UNDOCUMENTED`] ones, and a test fails on any other route added outside
//! `routes!`.

use crate::state::AppState;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use chat_shared::protocol::ErrorBody;
use std::sync::LazyLock;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{self, OpenApi as Document};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

/// The routes served outside the document, each with why.
pub const UNDOCUMENTED: [(&str, &str); 5] = [
    ("/", "the web client's page (docs/client.md)"),
    ("/app/{name}", "the web client's files"),
    ("/ws/echo", "the Autobahn conformance echo, off by default"),
    ("/api/openapi.json", "this document"),
    ("/metrics", "the internal port's Prometheus endpoint"),
];

/// The errors an API route answers, each as `{"error": {"code", "message"}}`
/// (docs/protocol.md lists which route answers which, and why).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description of answers, never built
pub enum ApiErrors {
    #[response(
        status = 400,
        description = "`bad_request`: a parameter or the body breaks a rule"
    )]
    BadRequest(ErrorBody),
    #[response(
        status = 401,
        description = "`unauthorized`: no credentials, or not these routes' kind"
    )]
    Unauthorized(ErrorBody),
    #[response(
        status = 403,
        description = "`forbidden`, or `blocked` (a block between the two users)"
    )]
    Forbidden(ErrorBody),
    #[response(status = 404, description = "`not_found`: no such conversation")]
    NotFound(ErrorBody),
    #[response(
        status = 413,
        description = "`too_large`: over the body or message limit"
    )]
    TooLarge(ErrorBody),
    #[response(
        status = 429,
        description = "`rate_limited`, with `retry_after_ms` (and a `Retry-After` header)"
    )]
    RateLimited(ErrorBody),
    #[response(
        status = 503,
        description = "`unavailable`: try again (a send: with the same `client_msg_id`)"
    )]
    Unavailable(ErrorBody),
}

/// The security scheme names the handlers' `security(...)` refer to.
pub const USER_TOKEN: &str = "user_token";
pub const SERVER_KEY: &str = "server_key";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mapmo-chat",
        description = "The HTTP API of mapmo-chat: the user routes (a user's \
            token, `Authorization: Bearer <jwt>`) and the host site's server API \
            (`Authorization: ApiKey <id>:<secret>`). The WebSocket protocol of \
            `GET /ws` is described in docs/protocol.md; docs/integration.md walks \
            a site through the whole integration.",
        license(name = "MIT OR Apache-2.0")
    ),
    tags(
        (name = "conversations", description = "A user's conversations and their history"),
        (name = "people", description = "Profiles, presence, privacy and blocks"),
        (name = "server", description = "The host site's backend (`ApiKey`); in production on \
            the gateway's internal port (`gateway.server_api_listen`), not the public one"),
        (name = "operations", description = "Sessions, health, readiness and the dev login"),
    ),
    components(schemas(ErrorBody)),
    modifiers(&Security)
)]
struct ApiDoc;

/// The two ways a caller is authenticated.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            USER_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A user's HS256 token, minted by the host site"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            SERVER_KEY,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`ApiKey <id>:<secret>`, one of `auth.server_api_keys`",
            ))),
        );
    }
}

/// Every documented route, user and server, as one router: what
/// [`document`] describes. (The gateway serves the two halves on their own
/// listeners; each half is registered once, in `super::user_routes` and
/// `super::server::routes`.)
fn every_route() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(super::user_routes())
        .merge(super::server::routes())
}

/// The document, built once.
pub fn document() -> &'static Document {
    static DOCUMENT: LazyLock<Document> = LazyLock::new(|| every_route().split_for_parts().1);
    &DOCUMENT
}

/// `GET /api/openapi.json`.
pub async fn serve() -> impl IntoResponse {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        document()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    });
    ([(CONTENT_TYPE, "application/json")], JSON.as_str())
}

/// The `(method, path)` of every operation in the document, sorted.
pub fn operations(doc: &Document) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (path, item) in &doc.paths.paths {
        let methods = [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
        ];
        for (method, operation) in methods {
            if operation.is_some() {
                found.push((method.to_owned(), path.clone()));
            }
        }
    }
    found.sort();
    found
}

/// The OpenAPI version the document declares.
pub fn version(doc: &Document) -> &openapi::OpenApiVersion {
    &doc.openapi
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The HTTP routes of the contract (shared/protocol.md, versions 1 and 2,
    /// and docs/protocol.md's additions), each answered by the gateway.
    const CONTRACT: [(&str, &str); 20] = [
        ("DELETE", "/api/blocks/{user_id}"),
        ("GET", "/api/blocks"),
        ("GET", "/api/conversations"),
        ("GET", "/api/conversations/{id}/messages"),
        ("GET", "/api/conversations/{id}/reads"),
        ("GET", "/api/me/privacy"),
        ("GET", "/api/presence"),
        ("GET", "/api/users"),
        ("GET", "/health"),
        ("GET", "/ready"),
        ("GET", "/ws"),
        ("POST", "/api/conversations"),
        ("POST", "/api/conversations/{id}/leave"),
        ("POST", "/api/conversations/{id}/members"),
        ("POST", "/api/dev/token"),
        ("POST", "/api/server/conversations"),
        ("POST", "/api/server/conversations/{id}/messages"),
        ("PUT", "/api/blocks/{user_id}"),
        ("PUT", "/api/me/privacy"),
        ("PUT", "/api/server/users/{id}"),
    ];

    #[test]
    fn the_document_has_every_route_of_the_contract_and_no_other() {
        let mut expected: Vec<(String, String)> = CONTRACT
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        expected.sort();
        assert_eq!(operations(document()), expected);
    }

    /// A route added with `.route(...)` instead of `routes!` would be served
    /// but missing from the document: no source file of the gateway
    /// registers a path that is neither documented nor [`UNDOCUMENTED`].
    #[test]
    fn no_route_is_served_that_the_document_does_not_have_but_the_undocumented_ones() {
        let documented: Vec<String> = operations(document()).into_iter().map(|(_, p)| p).collect();
        let allowed: Vec<&str> = UNDOCUMENTED.iter().map(|(path, _)| *path).collect();
        let registered =
            registered_with_route(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
        for path in &registered {
            assert!(
                allowed.contains(&path.as_str()) || documented.contains(path),
                "{path} is served with .route() but not documented: register it with routes! and #[utoipa::path]"
            );
        }
        assert!(
            registered.len() >= 5,
            "the scan found the routes: {registered:?}"
        );
    }

    /// The paths of every `.route("...")` call in the `.rs` files under `dir`.
    fn registered_with_route(dir: &std::path::Path) -> Vec<String> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).expect("source dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(registered_with_route(&path));
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("openapi.rs") {
                let source = std::fs::read_to_string(&path).expect("source file");
                for (at, _) in source.match_indices(".route(") {
                    let rest = source[at + ".route(".len()..].trim_start();
                    if let Some(literal) = rest.strip_prefix('"') {
                        found.push(literal.split('"').next().unwrap_or_default().to_owned());
                    }
                }
            }
        }
        found
    }

    #[test]
    fn the_document_is_openapi_3_1_with_both_security_schemes() {
        let doc = document();
        assert!(matches!(version(doc), openapi::OpenApiVersion::Version31));
        let schemes = &doc
            .components
            .as_ref()
            .expect("components")
            .security_schemes;
        assert!(schemes.contains_key(USER_TOKEN) && schemes.contains_key(SERVER_KEY));
    }

    #[test]
    fn every_api_operation_names_its_security_and_its_error_body() {
        let json = serde_json::to_value(document()).expect("json");
        for (method, path) in operations(document()) {
            if !path.starts_with("/api/") || path == "/api/dev/token" {
                continue;
            }
            let op = &json["paths"][&path][method.to_lowercase()];
            let scheme = if path.starts_with("/api/server/") {
                SERVER_KEY
            } else {
                USER_TOKEN
            };
            assert!(
                op["security"][0].get(scheme).is_some(),
                "{method} {path} does not name {scheme}: {op}"
            );
            assert_eq!(
                op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{method} {path}'s 401"
            );
        }
    }

    #[test]
    fn a_message_is_described_as_the_wire_has_it() {
        let json = serde_json::to_value(document()).expect("json");
        let message = &json["components"]["schemas"]["Message"];
        let required: Vec<&str> = message["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        for field in [
            "id",
            "conversation_id",
            "seq",
            "sender_id",
            "client_msg_id",
            "body",
            "created_at",
        ] {
            assert!(required.contains(&field), "{field} required: {message}");
        }
        assert!(!required.contains(&"card") && !required.contains(&"kind"));
        assert_eq!(json["components"]["schemas"]["MessageId"]["type"], "string");
    }
}
