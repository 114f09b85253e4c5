//! Who may connect: tokens in the header or in the first frame, origins.

use chat_tests::client::Closed;
use chat_tests::{Client, TestSystem};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_without_a_valid_token_get_401_in_the_contract_shape() {
    let system = TestSystem::start_with(1, 0, |_| {}).await;
    for token in [None, Some("not-a-jwt"), Some("a.b.c")] {
        let (status, body) = system.get(0, "/api/conversations", token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert!(body["error"]["message"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_with_another_secret_is_refused() {
    let system = TestSystem::start_with(1, 0, |_| {}).await;
    let foreign =
        chat_gateway::auth::JwtKeys::new("a-different-secret-of-enough-length-000000").unwrap();
    let user = chat_shared::ids::UserId::new(1).unwrap();
    let token = foreign.issue(user, None, chat_gateway::auth::unix_now() + 60);
    let (status, _) = system.get(0, "/api/conversations", Some(&token)).await;
    assert_eq!(status, 401);
    let expired = chat_gateway::auth::JwtKeys::from_settings(&system.settings.auth)
        .unwrap()
        .issue(user, None, 1);
    let (status, body) = system.get(0, "/api/conversations", Some(&expired)).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_in_the_header_gets_401_and_no_upgrade() {
    let system = TestSystem::start_with(1, 0, |_| {}).await;
    let refused = Client::connect(system.gateways[0], Some("garbage"), None).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected HTTP 401, got {:?}", other.map(|_| "an upgrade")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_first_frame_authenticates() {
    let system = TestSystem::start_with(1, 0, |_| {}).await;
    let token = system.token(42).await;
    let mut client = Client::connect(system.gateways[0], None, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    client
        .send_json(json!({"type": "auth", "token": token}))
        .await;
    let client = client.authenticated().await;
    assert_eq!(client.user_id, 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_in_the_first_frame_closes_with_4001() {
    let system = TestSystem::start_with(1, 0, |_| {}).await;
    let mut client = Client::connect(system.gateways[0], None, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    client
        .send_json(json!({"type": "auth", "token": "nope"}))
        .await;
    assert_eq!(client.closed().await, Closed::Code(4001));
    let metrics = system.gateway_metrics(0).await;
    assert!(
        metrics.contains(r#"gateway_connections_refused_total{reason="auth_frame"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anything_but_auth_first_closes_with_4001() {
    let system = TestSystem::start_with(1, 0, |_| {}).await;
    let mut client = Client::connect(system.gateways[0], None, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    client.send_json(json!({"type": "ping"})).await;
    assert_eq!(client.closed().await, Closed::Code(4001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_instead_of_auth_closes_with_4001_after_the_timeout() {
    // The test profile sets auth.auth_timeout_ms to one second.
    let system = TestSystem::start_with(1, 0, |_| {}).await;
    let mut client = Client::connect(system.gateways[0], None, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(client.closed().await, Closed::Code(4001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_origin_must_be_on_the_allow_list() {
    let system = TestSystem::start_with(1, 0, |_| {}).await;
    let token = system.token(1).await;
    let refused = Client::connect(
        system.gateways[0],
        Some(&token),
        Some("http://evil.example"),
    )
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected HTTP 403, got {:?}", other.map(|_| "an upgrade")),
    }
    let metrics = system.gateway_metrics(0).await;
    assert!(
        metrics.contains(r#"gateway_connections_refused_total{reason="origin"} 1"#),
        "{metrics}"
    );
    let allowed = Client::connect(
        system.gateways[0],
        Some(&token),
        Some("http://allowed.example"),
    )
    .await;
    let client = allowed
        .unwrap_or_else(|e| panic!("allowed origin refused: {e}"))
        .authenticated()
        .await;
    assert_eq!(client.user_id, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_client_served_by_the_gateway_may_open_a_socket_there() {
    let system = TestSystem::start_with(1, 0, |_| {}).await;
    let token = system.token(1).await;
    let gateway = system.gateways[0];
    // The page at http://<host>/ opens ws://<host>/ws: the same origin.
    let own = format!("http://{gateway}");
    let client = Client::connect(gateway, Some(&token), Some(&own))
        .await
        .unwrap_or_else(|e| panic!("the gateway's own origin refused: {e}"))
        .authenticated()
        .await;
    assert_eq!(client.user_id, 1);
    // Same address, another port: another origin.
    let other_port = format!("http://{}:{}", gateway.ip(), gateway.port() ^ 1);
    match Client::connect(gateway, Some(&token), Some(&other_port)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected HTTP 403, got {:?}", other.map(|_| "an upgrade")),
    }
}
