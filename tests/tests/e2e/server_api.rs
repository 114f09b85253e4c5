//! The host site's server API (version 2): its own keys, names and avatars,
//! conversations opened for users, and messages posted on their behalf or
//! by the system, which take a user's path (broker, persister, fan-out).

use chat_tests::{SERVER_KEY, SERVER_KEY_B, TestSystem};
use reqwest::Method;
use serde_json::{Value, json};

fn code(body: &Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

async fn post_message(
    system: &TestSystem,
    gateway: usize,
    conversation: i64,
    body: Value,
) -> (u16, Value) {
    let path = format!("/api/server/conversations/{conversation}/messages");
    system
        .server_api(gateway, Method::POST, &path, Some(body))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_routes_take_only_keys_and_user_routes_only_tokens() {
    let system = TestSystem::start().await;
    let url = system.url(0, "/api/server/users/7");
    let body = || Some(json!({"name": "Lan"}));
    let token = system.token(7).await;
    for authorization in [
        None,
        Some(format!("Bearer {token}")),
        Some("ApiKey test-a:wrong-secret-of-the-right-length-00000".to_owned()),
        Some(format!("ApiKey{SERVER_KEY}")),
        Some(SERVER_KEY.to_owned()),
    ] {
        let (status, answer) = system
            .server_api_at(&url, authorization.as_deref(), Method::PUT, body())
            .await;
        assert_eq!(
            (status, code(&answer)),
            (401, Some("unauthorized")),
            "{authorization:?}"
        );
    }
    for key in [SERVER_KEY, SERVER_KEY_B] {
        let authorization = format!("ApiKey {key}");
        let (status, answer) = system
            .server_api_at(&url, Some(&authorization), Method::PUT, body())
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    // A key is no user token.
    let authorization = format!("ApiKey {SERVER_KEY}");
    let (status, answer) = system
        .server_api_at(
            &system.url(0, "/api/conversations"),
            Some(&authorization),
            Method::GET,
            None,
        )
        .await;
    assert_eq!((status, code(&answer)), (401, Some("unauthorized")));
    // Counted by the key's id, never the key.
    let metrics = system.gateway_metrics(0).await;
    assert!(
        metrics.contains(r#"gateway_server_api_requests_total{key="test-a",route="/api/server/users/{id}",status="200"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"key="none""#));
    assert!(
        !metrics.contains("not-a-secret"),
        "a key leaked into metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_names_its_users_and_their_partners_hear_of_it() {
    let system = TestSystem::start().await;
    system.direct(1, 2).await;
    let mut binh = system.connect(1, 2).await;
    let (status, user) = system
        .server_api(
            0,
            Method::PUT,
            "/api/server/users/1",
            Some(json!({"name": "Lan Nguye\u{302}\u{303}n", "avatar_url": "https://img.mapmo.vn/lan.jpg"})),
        )
        .await;
    assert_eq!(status, 200, "{user}");
    let expected =
        json!({"id": 1, "name": "Lan Nguyễn", "avatar_url": "https://img.mapmo.vn/lan.jpg"});
    assert_eq!(user, expected, "stored NFC-normalised");
    assert_eq!(binh.next_of("user").await["user"], expected);
    // A field left out is kept; a null avatar removes it.
    let (_, user) = system
        .server_api(
            0,
            Method::PUT,
            "/api/server/users/1",
            Some(json!({"avatar_url": null})),
        )
        .await;
    assert_eq!(
        user,
        json!({"id": 1, "name": "Lan Nguyễn", "avatar_url": null})
    );
    for bad in [
        json!({"name": ""}),
        json!({"name": "a\nb"}),
        json!({"name": "x".repeat(101)}),
        json!({"avatar_url": "http://img.mapmo.vn/a.jpg"}),
        json!({"avatar_url": format!("https://{}", "a".repeat(500))}),
        json!({"nickname": "Lan"}),
    ] {
        let (status, answer) = system
            .server_api(0, Method::PUT, "/api/server/users/1", Some(bad.clone()))
            .await;
        assert_eq!((status, code(&answer)), (400, Some("bad_request")), "{bad}");
    }
    let (status, _) = system
        .server_api(
            0,
            Method::PUT,
            "/api/server/users/0",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_opens_conversations_whatever_the_groups_setting_but_not_across_a_block() {
    let system = TestSystem::start().await;
    let token = system.token(1).await;
    system
        .put(
            0,
            "/api/me/privacy",
            Some(&token),
            json!({"groups": "contacts"}),
        )
        .await;
    let mut an = system.connect(1, 1).await;
    let create = |body: Value| {
        let system = &system;
        async move {
            system
                .server_api(0, Method::POST, "/api/server/conversations", Some(body))
                .await
        }
    };
    let (status, group) =
        create(json!({"title": "Căn hộ 2PN, Quận 7", "member_ids": [2, 1, 3]})).await;
    assert_eq!(status, 201, "{group}");
    assert_eq!(group["member_ids"], json!([1, 2, 3]));
    assert_eq!(
        an.next_of("conversation").await["conversation"]["id"],
        group["id"]
    );

    let (status, direct) = create(json!({"member_ids": [4, 2]})).await;
    assert_eq!(status, 201, "{direct}");
    assert_eq!(
        (direct["kind"].as_str(), &direct["member_ids"]),
        (Some("direct"), &json!([2, 4]))
    );
    let (status, again) = create(json!({"member_ids": [2, 4]})).await;
    assert_eq!((status, &again["id"]), (200, &direct["id"]));

    system
        .put(0, "/api/blocks/5", Some(&token), json!({}))
        .await;
    let (status, answer) = create(json!({"member_ids": [5, 1]})).await;
    assert_eq!((status, code(&answer)), (403, Some("blocked")));
    for bad in [
        json!({"member_ids": []}),
        json!({"member_ids": [1]}),
        json!({"member_ids": [1, 1]}),
        json!({"member_ids": [1, 2, 3]}),
        json!({"member_ids": [0, 2]}),
        json!({"title": " ", "member_ids": [1, 2]}),
        json!({"title": "solo", "member_ids": [1]}),
        json!({"peer_id": 2}),
    ] {
        let (status, answer) = create(bad.clone()).await;
        assert_eq!((status, code(&answer)), (400, Some("bad_request")), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_messages_take_the_users_path_gapless_and_idempotent() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    // Both members on gateway 0; the site posts through gateway 1, which
    // hosts neither: its answer comes all the same.
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(0, 2).await;
    an.send_and_ack(conversation, "a-1", "chào").await;
    binh.next_of("message").await;

    let on_behalf =
        json!({"client_msg_id": "listing-42", "body": "Mình quan tâm căn này", "sender_id": 2});
    let (status, posted) = post_message(&system, 1, conversation, on_behalf.clone()).await;
    assert_eq!(status, 200, "{posted}");
    let message = &posted["message"];
    assert_eq!(
        (message["seq"].as_i64(), message["sender_id"].as_i64()),
        (Some(2), Some(2))
    );
    assert!(message.get("kind").is_none(), "a user's message: {message}");
    assert_eq!(an.next_of("message").await["message"], *message);
    // The sender's own sessions get it too, as from another device.
    assert_eq!(
        binh.next_of("message").await["message"]["id"],
        message["id"]
    );
    // Again: the original, nothing new.
    let (status, again) = post_message(&system, 0, conversation, on_behalf).await;
    assert_eq!((status, &again["message"]), (200, message));

    let (status, notice) = post_message(
        &system,
        1,
        conversation,
        json!({"client_msg_id": "notice-1", "body": "Tin đăng đã được duyệt"}),
    )
    .await;
    assert_eq!(status, 200, "{notice}");
    let notice = &notice["message"];
    assert_eq!(
        (
            notice["seq"].as_i64(),
            notice["sender_id"].as_i64(),
            notice["kind"].as_str()
        ),
        (Some(3), Some(0), Some("system"))
    );
    assert_eq!(an.next_of("message").await["message"], *notice);
    let mine = an.send_and_ack(conversation, "a-2", "cảm ơn").await;
    assert_eq!(mine["seq"], 4);
    let history = system.history(0, 1, conversation, "").await;
    assert_eq!(chat_tests::seqs(&history), vec![1, 2, 3, 4]);
    assert_eq!(history[2]["kind"], "system");
    // A system message counts as unread for every member.
    let token = system.token(2).await;
    let (_, list) = system.get(0, "/api/conversations", Some(&token)).await;
    assert_eq!(list["conversations"][0]["unread_count"], 3, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_messages_are_refused_as_a_users_send_would_be() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let send = |id: &str, body: &str, sender: Option<i64>| {
        let mut post = json!({"client_msg_id": id, "body": body});
        if let Some(sender) = sender {
            post["sender_id"] = json!(sender);
        }
        post
    };
    let cases = [
        (conversation, send("k1", "hi", Some(3)), 403, "forbidden"),
        (999_999, send("k2", "hi", None), 404, "not_found"),
        (conversation, send("k3", "", Some(1)), 400, "bad_request"),
        (
            conversation,
            send("k4", &"x".repeat(4001), Some(1)),
            413,
            "too_large",
        ),
        (conversation, send("", "hi", Some(1)), 400, "bad_request"),
        (
            conversation,
            json!({"client_msg_id": "k5", "body": "hi", "sender_id": 0}),
            400,
            "bad_request",
        ),
    ];
    for (to, post, status, expected) in cases {
        let (got, answer) = post_message(&system, 0, to, post.clone()).await;
        assert_eq!((got, code(&answer)), (status, Some(expected)), "{post}");
    }
    let token = system.token(2).await;
    system
        .put(0, "/api/blocks/1", Some(&token), json!({}))
        .await;
    let (status, answer) = post_message(&system, 1, conversation, send("k6", "hi", Some(1))).await;
    assert_eq!((status, code(&answer)), (403, Some("blocked")));
    assert!(
        system.history(0, 1, conversation, "").await.is_empty(),
        "nothing stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cards_are_checked_stored_and_shown_everywhere() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;
    let card = json!({
        "title": "Căn hộ 2PN, Quận 7",
        "subtitle": "3,2 tỷ · 70 m²",
        "url": "https://mapmo.vn/l/42",
        "image_url": "https://img.mapmo.vn/42.jpg"
    });
    let (status, posted) = post_message(
        &system,
        0,
        conversation,
        json!({"client_msg_id": "card-1", "body": "Minh quan tâm: Căn hộ 2PN, Quận 7", "sender_id": 2, "card": card}),
    )
    .await;
    assert_eq!(status, 200, "{posted}");
    assert_eq!(posted["message"]["card"], card);
    assert_eq!(an.next_of("message").await["message"]["card"], card);
    binh.next_of("message").await;
    // A user's own send may carry one.
    binh.send_json(
        json!({"type": "send", "conversation_id": conversation, "client_msg_id": "b-card",
        "body": "đây", "card": {"title": "Nhà phố Quận 3"}}),
    )
    .await;
    let ack = binh.next_of("ack").await;
    assert_eq!(ack["message"]["card"], json!({"title": "Nhà phố Quận 3"}));
    let history = system.history(1, 1, conversation, "").await;
    assert_eq!(history[0]["card"], card);
    assert_eq!(history[1]["card"], json!({"title": "Nhà phố Quận 3"}));
    assert!(history.iter().all(|m| m.get("kind").is_none()));

    let bad_card = json!({"title": "x", "url": "http://mapmo.vn"});
    binh.send_json(
        json!({"type": "send", "conversation_id": conversation, "client_msg_id": "b-bad",
        "body": "đây", "card": bad_card}),
    )
    .await;
    let refused = binh.next_of("error").await;
    assert_eq!(
        (refused["code"].as_str(), refused["client_msg_id"].as_str()),
        (Some("bad_request"), Some("b-bad"))
    );
    let (status, answer) = post_message(
        &system,
        0,
        conversation,
        json!({"client_msg_id": "card-bad", "body": "x", "card": {"title": ""}}),
    )
    .await;
    assert_eq!((status, code(&answer)), (400, Some("bad_request")));
    assert_eq!(system.history(0, 1, conversation, "").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_apart_the_server_api_is_not_on_the_public_port() {
    let mut system = TestSystem::start_with(1, 1, |_| {}).await;
    let mut settings = system.settings.clone();
    settings.gateway.server_api_listen = Some("127.0.0.1:0".parse().unwrap());
    let apart = system.start_gateway_with(settings).await;
    let server_port = system.server_api[apart].expect("a server API address");
    let authorization = format!("ApiKey {SERVER_KEY}");
    let body = || Some(json!({"name": "Lan"}));
    let (status, _) = system
        .server_api_at(
            &system.url(apart, "/api/server/users/1"),
            Some(&authorization),
            Method::PUT,
            body(),
        )
        .await;
    assert_eq!(status, 404, "not on the public port");
    let url = format!("http://{server_port}/api/server/users/1");
    let (status, answer) = system
        .server_api_at(&url, Some(&authorization), Method::PUT, body())
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = system
        .server_api_at(
            &format!("http://{server_port}/api/conversations"),
            None,
            Method::GET,
            None,
        )
        .await;
    assert_eq!(status, 404, "and only the server API there");
}

/// `GET /api/openapi.json` describes every route, and every route it
/// describes is served: asked without credentials, each answers as a route
/// (401, or its own answer), never 404 as an unknown path does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_and_each_of_its_routes_exists() {
    let system = TestSystem::start().await;
    let http = chat_tests::http_client();
    let answer = http
        .get(system.url(0, "/api/openapi.json"))
        .send()
        .await
        .expect("GET /api/openapi.json");
    assert_eq!(answer.status(), 200);
    let doc: Value = answer.json().await.expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let mut asked = 0;
    for (path, item) in paths {
        for method in ["get", "put", "post", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let concrete = path.replace("{id}", "1").replace("{user_id}", "2");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let status = http
                .request(method.clone(), system.url(0, &concrete))
                .json(&json!({}))
                .send()
                .await
                .expect("request")
                .status()
                .as_u16();
            let expected: &[u16] = match path.as_str() {
                "/health" | "/ready" => &[200],
                "/ws" => &[400, 426],
                "/api/dev/token" => &[400],
                _ => &[401],
            };
            assert!(
                expected.contains(&status),
                "{method} {path}: {status}, expected one of {expected:?}"
            );
            asked += 1;
        }
    }
    assert!(asked >= 20, "only {asked} operations in the document");
    let unknown = http
        .get(system.url(0, "/api/no-such-route"))
        .send()
        .await
        .expect("request");
    assert_eq!(unknown.status(), 404);
}
