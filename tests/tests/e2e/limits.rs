//! What one client may consume, and how it is told: every limit answers
//! `rate_limited` with `retry_after_ms`, an HTTP 429, or a close code, and
//! nobody else notices. Limits are set low per test through the settings.

use chat_tests::client::Closed;
use chat_tests::{Client, DEADLINE, TestSystem, eventually, eventually_within};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads what the server sends until it closes the connection (or the
/// deadline passes, which fails the test).
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("the server did not close the connection")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The next `ack` or `error`; the session's copies of its user's messages
/// sent from other sessions are skipped.
async fn next_answer(client: &mut Client) -> Value {
    loop {
        let frame = client.next().await;
        if frame["type"] == "ack" || frame["type"] == "error" {
            return frame;
        }
    }
}

fn refused(frame: &Value, code: &str) -> bool {
    frame["type"] == "error" && frame["code"] == code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_beyond_the_session_rate_are_rate_limited_and_can_be_resent() {
    let system = TestSystem::start_with(1, 1, |s| {
        s.gateway.limits.sends_per_second = 1.0;
        s.gateway.limits.sends_burst = 3;
    })
    .await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    for n in 0..5 {
        an.send_message(conversation, &format!("m{n}"), "xin chào")
            .await;
    }
    let mut acked = Vec::new();
    let mut limited = Vec::new();
    while acked.len() + limited.len() < 5 {
        let frame = an.next().await;
        let id = frame["client_msg_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if frame["type"] == "ack" {
            acked.push(id);
        } else {
            assert!(refused(&frame, "rate_limited"), "{frame}");
            let wait = frame["retry_after_ms"].as_u64().unwrap_or_default();
            assert!((1..=1000).contains(&wait), "{frame}");
            limited.push((id, wait));
        }
    }
    acked.sort();
    assert_eq!(acked, ["m0", "m1", "m2"]);
    assert_eq!(limited.len(), 2);

    // After the wait it names, the same send goes through.
    let (id, wait) = limited[0].clone();
    tokio::time::sleep(Duration::from_millis(wait)).await;
    an.send_and_ack(conversation, &id, "xin chào").await;
    let stored = system.history(0, 1, conversation, "").await;
    assert_eq!(stored.len(), 4, "nothing refused was stored: {stored:?}");
    let metrics = system.gateway_metrics(0).await;
    assert!(
        metrics.contains(r#"gateway_limit_refusals_total{limit="sends_per_second"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gateway_sends_refused_total{reason="rate_limited"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gateway_sends_refused_total{reason="forbidden"} 0"#),
        "every code's series exists from the start: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_or_typing_from_a_non_member_is_refused_at_the_gateway() {
    let system = TestSystem::start_with(1, 1, |_| {}).await;
    let conversation = system.direct(1, 2).await;
    let mut stranger = system.connect(0, 3).await;
    stranger
        .send_json(json!({"type": "read", "conversation_id": conversation, "seq": 1}))
        .await;
    stranger
        .send_json(json!({"type": "typing", "conversation_id": conversation, "state": "start"}))
        .await;
    let frames = stranger.drain().await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(frames.iter().all(|f| refused(f, "forbidden")), "{frames:?}");
    // Nothing of it went down the persist path.
    assert!(
        system
            .gateway_metrics(0)
            .await
            .contains("gateway_persist_commands_total 0"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_beyond_the_user_rate_get_429_with_retry_after() {
    let system = TestSystem::start_with(1, 0, |s| {
        s.gateway.limits.http_per_second = 0.5;
        s.gateway.limits.http_burst = 3;
    })
    .await;
    let token = system.token(1).await;
    let other = system.token(2).await;
    let mut statuses = Vec::new();
    let mut last = Value::Null;
    for _ in 0..4 {
        let (status, body) = system.get(0, "/api/conversations", Some(&token)).await;
        statuses.push(status);
        last = body;
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(last["error"]["code"], "rate_limited");
    assert!(last["error"]["retry_after_ms"].as_u64().unwrap_or_default() > 0);
    // Another user is not affected.
    assert_eq!(
        system.get(0, "/api/conversations", Some(&other)).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_user_beyond_the_limit_are_refused() {
    let system = TestSystem::start_with(1, 0, |s| {
        s.gateway.limits.connections_per_user = std::num::NonZeroUsize::new(2).unwrap();
    })
    .await;
    let token = system.token(1).await;
    let _one = system.connect(0, 1).await;
    let two = system.connect(0, 1).await;
    // With the token in the header: 429 before the upgrade.
    match Client::connect(system.gateways[0], Some(&token), None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429)
        }
        other => panic!("expected HTTP 429, got {:?}", other.map(|_| "an upgrade")),
    }
    // With the token in the first frame: close code 4029.
    let mut third = Client::connect(system.gateways[0], None, None)
        .await
        .unwrap();
    third
        .send_json(json!({"type": "auth", "token": token}))
        .await;
    assert_eq!(third.closed().await, Closed::Code(4029));
    // A slot frees when a session closes.
    two.close().await;
    eventually("the slot was not freed", || async {
        Client::connect(system.gateways[0], Some(&token), None)
            .await
            .is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_counted_from_the_accept_before_any_request() {
    let system = TestSystem::start_with(1, 0, |s| {
        s.gateway.limits.connections_per_ip = std::num::NonZeroUsize::new(3).unwrap();
    })
    .await;
    let gateway = system.gateways[0];
    // Three sockets that never send a byte hold every slot of 127.0.0.1.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(gateway).await.unwrap());
    }
    let mut fourth = TcpStream::connect(gateway).await.unwrap();
    let answer = read_until_closed(&mut fourth).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains(r#""code":"rate_limited""#), "{answer}");
    // Closing one frees its slot.
    drop(silent.pop());
    eventually("the slot was not freed", || async {
        let mut next = TcpStream::connect(gateway).await.unwrap();
        next.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        read_until_closed(&mut next)
            .await
            .starts_with("HTTP/1.1 200")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_never_ends_is_cut_off() {
    let system = TestSystem::start_with(1, 0, |s| {
        s.gateway.http_header_timeout = Duration::from_millis(300);
    })
    .await;
    let mut slow = TcpStream::connect(system.gateways[0]).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // The rest of the head never comes; the gateway hangs up.
    let answer = read_until_closed(&mut slow).await;
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_body_over_the_limit_gets_413() {
    let system = TestSystem::start_with(1, 0, |s| {
        s.gateway.http_body_bytes = 1024;
    })
    .await;
    let token = system.token(1).await;
    let members: Vec<i64> = (2..400).collect();
    let body = json!({"title": "x".repeat(100), "member_ids": members});
    let (status, _) = system
        .post(0, "/api/conversations", Some(&token), body)
        .await;
    assert_eq!(status, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_titles_with_nul_get_400_and_group_creation_is_limited_per_hour() {
    let system = TestSystem::start_with(1, 0, |s| {
        s.gateway.limits.groups_per_hour = 2;
    })
    .await;
    let token = system.token(1).await;
    let create = |title: &str| json!({"title": title, "member_ids": [2, 3]});
    let (status, body) = system
        .post(0, "/api/conversations", Some(&token), create("a\u{0}b"))
        .await;
    assert_eq!(status, 400, "{body}");
    for n in 0..2 {
        let (status, body) = system
            .post(
                0,
                "/api/conversations",
                Some(&token),
                create(&format!("g{n}")),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = system
        .post(
            0,
            "/api/conversations",
            Some(&token),
            create("one too many"),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    // Direct conversations are not groups.
    let (status, _) = system
        .post(0, "/api/conversations", Some(&token), json!({"peer_id": 9}))
        .await;
    assert_eq!(status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_answers_only_about_users_who_share_a_conversation() {
    let system = TestSystem::start().await;
    system.direct(1, 2).await;
    system.direct(3, 4).await;
    let _two = system.connect(0, 2).await;
    let _four = system.connect(0, 4).await;
    let token = system.token(1).await;
    eventually_within(DEADLINE, async || {
        let (status, body) = system
            .get(0, "/api/presence?user_ids=2,4", Some(&token))
            .await;
        assert_eq!(status, 200, "{body}");
        let stranger = &body["presence"][1];
        assert_eq!(stranger["user_id"], 4);
        assert_eq!(
            stranger["status"], "offline",
            "user 4 shares nothing with 1: {body}"
        );
        assert!(stranger["last_seen"].is_null(), "{body}");
        if body["presence"][0]["status"] == "online" {
            Ok(())
        } else {
            Err(format!("partner never online: {body}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_port_does_not_serve_metrics() {
    let system = TestSystem::start_with(1, 0, |_| {}).await;
    let (status, _) = system.get(0, "/metrics", None).await;
    assert_eq!(status, 404);
    assert!(
        system
            .gateway_metrics(0)
            .await
            .contains("gateway_connections_active")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_closed_with_4001_when_its_token_expires() {
    let system = TestSystem::start_with(1, 0, |_| {}).await;
    let keys = chat_gateway::auth::JwtKeys::from_settings(&system.settings.auth).unwrap();
    let user = chat_shared::ids::UserId::new(5).unwrap();
    let token = keys.issue(user, None, chat_gateway::auth::unix_now() + 2);
    let mut client = Client::connect(system.gateways[0], Some(&token), None)
        .await
        .unwrap()
        .authenticated()
        .await;
    assert_eq!(client.closed().await, Closed::Code(4001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_closes_with_1007_and_an_oversized_frame_with_1009() {
    let system = TestSystem::start_with(1, 0, |_| {}).await;
    let mut client = system.connect(0, 1).await;
    client.send_invalid_utf8_text().await;
    assert_eq!(client.closed().await, Closed::Code(1007));

    let mut client = system.connect(0, 1).await;
    let big = "x".repeat(system.settings.gateway.max_frame_bytes + 1);
    client.send_raw(&big).await;
    assert_eq!(client.closed().await, Closed::Code(1009));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_goes_offline() {
    let system = TestSystem::start_with(1, 1, |s| {
        s.gateway.write_timeout = Duration::from_millis(500);
        // Big enough that the write deadline, not the queue, ends it.
        s.gateway.session_queue = std::num::NonZeroUsize::new(100_000).unwrap();
        s.gateway.limits.sends_per_second = 10_000.0;
        s.gateway.limits.sends_burst = 10_000;
        s.gateway.limits.user_sends_per_second = 10_000.0;
        s.gateway.limits.user_sends_burst = 10_000;
    })
    .await;
    let conversation = system.direct(1, 2).await;
    let mut sender = system.connect(0, 1).await;
    // User 2 connects and then never reads again.
    let _deaf = system.connect(0, 2).await;
    // About 24 MB of messages, far more than the kernel buffers hold.
    let body = "ệ".repeat(4000);
    let mut sent = 0;
    eventually_within(DEADLINE * 3, async || {
        let metrics = system.gateway_metrics(0).await;
        if metrics.contains(r#"gateway_sessions_closed_total{reason="write_timeout"} 1"#) {
            return Ok(());
        }
        let not_yet = format!("the deaf session was never closed ({sent} sent)");
        for _ in 0..50 {
            sender
                .send_message(conversation, &format!("m{sent}"), &body)
                .await;
            sent += 1;
        }
        let _ = sender.drain().await;
        Err(not_yet)
    })
    .await;
    // Its slot is free; the sender never noticed and goes on.
    assert!(
        system
            .gateway_metrics(0)
            .await
            .contains("gateway_connections_active 1\n")
    );
    let mut again = system.connect(0, 1).await;
    again
        .send_message(conversation, "after", "still here")
        .await;
    loop {
        let frame = next_answer(&mut again).await;
        if frame["client_msg_id"] == "after" {
            assert_eq!(frame["type"], "ack", "{frame}");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_load_balancer_connections_count_per_forwarded_client() {
    let system = TestSystem::start_with(1, 0, |s| {
        s.gateway.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        s.gateway.limits.connections_per_ip = std::num::NonZeroUsize::new(2).unwrap();
    })
    .await;
    let token = system.token(1).await;
    let connect = |client_ip: &'static str| {
        let url = format!("ws://{}/ws", system.gateways[0]);
        let token = token.clone();
        async move {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut request = url.into_client_request().unwrap();
            let headers = request.headers_mut();
            headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
            headers.insert(
                "x-forwarded-for",
                format!("198.51.100.1, {client_ip}").parse().unwrap(),
            );
            tokio_tungstenite::connect_async(request).await
        }
    };
    let _a = connect("203.0.113.5").await.unwrap();
    let _b = connect("203.0.113.5").await.unwrap();
    match connect("203.0.113.5").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429)
        }
        other => panic!("expected HTTP 429, got {:?}", other.map(|_| "an upgrade")),
    }
    // Another client behind the same balancer has slots of its own.
    assert!(connect("203.0.113.6").await.is_ok());
}
