//! The HTTP API: conversations, the dev login, health, readiness, metrics.

use chat_tests::TestSystem;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_conversation_of_a_pair_is_the_same_every_time() {
    let system = TestSystem::start_with(2, 0, |_| {}).await;
    let an = system.token(1).await;
    let binh = system.token(2).await;
    let (created, first) = system
        .post(0, "/api/conversations", Some(&an), json!({"peer_id": 2}))
        .await;
    let (again, second) = system
        .post(1, "/api/conversations", Some(&binh), json!({"peer_id": 1}))
        .await;
    assert_eq!((created, again), (201, 200));
    assert_eq!(first["id"], second["id"]);
    assert_eq!(first["kind"], "direct");
    assert_eq!(first["member_ids"], json!([1, 2]));
    assert_eq!(first["last_seq"], 0);
    assert_eq!(first["unread_count"], 0);
    assert!(first["last_message"].is_null());
    assert!(first["title"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_conversation_requests_get_400() {
    let system = TestSystem::start_with(1, 0, |_| {}).await;
    let an = system.token(1).await;
    for body in [
        json!({"peer_id": 1}),
        json!({"peer_id": 0}),
        json!({"peer_id": -5}),
        json!({"title": "", "member_ids": [2]}),
        json!({"title": "alone", "member_ids": []}),
        json!({"title": "both", "member_ids": [2], "peer_id": 2}),
        json!("not an object"),
    ] {
        let (status, answer) = system
            .post(0, "/api/conversations", Some(&an), body.clone())
            .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "bad_request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conversation_list_shows_the_last_message_and_unread_count_most_recent_first() {
    let system = TestSystem::start().await;
    let older = system.direct(1, 2).await;
    let newer = system.group(1, &[2, 3]).await;
    let mut binh = system.connect(0, 2).await;
    binh.send_and_ack(older, "o-1", "first").await;
    let last = binh.send_and_ack(older, "o-2", "second").await;

    let token = system.token(1).await;
    let (status, body) = system.get(1, "/api/conversations", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let list = body["conversations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ids: Vec<_> = list
        .iter()
        .map(|c| c["id"].as_i64().unwrap_or_default())
        .collect();
    assert_eq!(ids, vec![older, newer], "most recent activity first");
    assert_eq!(list[0]["last_message"], last);
    assert_eq!(list[0]["last_seq"], 2);
    assert_eq!(list[0]["unread_count"], 2);
    assert_eq!(list[1]["kind"], "group");
    assert_eq!(list[1]["title"], "group");

    // Binh's own messages are never unread for Binh.
    let token = system.token(2).await;
    let (_, body) = system
        .get(0, "/api/conversations?limit=1", Some(&token))
        .await;
    assert_eq!(body["conversations"][0]["unread_count"], 0);
    assert_eq!(body["conversations"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_of_someone_elses_conversation_is_403_and_of_none_404() {
    let system = TestSystem::start_with(1, 0, |_| {}).await;
    let theirs = system.direct(2, 3).await;
    let token = system.token(1).await;
    let (status, body) = system
        .get(
            0,
            &format!("/api/conversations/{theirs}/messages"),
            Some(&token),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, body) = system
        .get(0, "/api/conversations/987654/messages", Some(&token))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_login_exists_only_when_configured() {
    let system = TestSystem::start_with(1, 0, |s| s.auth.dev_login = false).await;
    let (status, body) = system
        .post(0, "/api/dev/token", None, json!({"user_id": 1}))
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics_answer() {
    let system = TestSystem::start().await;
    assert_eq!(system.get(0, "/health", None).await.0, 200);
    let (status, body) = system.get(0, "/ready", None).await;
    assert_eq!(status, 200, "{body}");

    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    an.send_and_ack(conversation, "m", "counted").await;
    let text = system.gateway_metrics(0).await;
    assert!(
        text.contains("gateway_connections_opened_total 1"),
        "{text}"
    );
    assert!(text.contains("gateway_connections_active 1"), "{text}");
    assert!(text.contains("gateway_sends_received_total 1"), "{text}");
    assert!(text.contains("gateway_acks_sent_total 1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_says_503_when_the_database_is_unreachable() {
    let system = TestSystem::start_with(1, 0, |s| {
        // Port 1: nothing listens there.
        let (server, database) = s.database.url.rsplit_once('/').unwrap();
        let (host, _port) = server.rsplit_once(':').unwrap();
        s.database.url = format!("{host}:1/{database}");
        s.database.connect_timeout = Duration::from_millis(500);
    })
    .await;
    let (status, body) = system.get(0, "/ready", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_persister_and_gateway_report_batches_and_broker_work_on_metrics() {
    let system = TestSystem::start_with(2, 1, |_| {}).await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    an.send_and_ack(conversation, "m", "counted").await;

    let (status, metrics) = system
        .get_url(&format!("http://{}/metrics", system.persister_metrics[0]))
        .await;
    assert_eq!(status, 200);
    let text = metrics.as_str().unwrap_or_default();
    assert!(text.contains("persister_messages_stored_total 1"), "{text}");
    assert!(text.contains("persister_batches_total 1"), "{text}");
    assert!(text.contains("persister_batch_size_count 1"), "{text}");
    // BEGIN, existing lookup, members, seq bump, insert, the contact the
    // pair's first direct message makes (version 2), COMMIT.
    assert!(text.contains("persister_statements_total 7"), "{text}");
    // The next message of the pair: the contact is known, 6 statements.
    an.send_and_ack(conversation, "m2", "counted again").await;
    let (_, metrics) = system
        .get_url(&format!("http://{}/metrics", system.persister_metrics[0]))
        .await;
    let text = metrics.as_str().unwrap_or_default();
    assert!(text.contains("persister_statements_total 13"), "{text}");

    let text = system.gateway_metrics(0).await;
    assert!(text.contains("gateway_persist_publishes_total 2"), "{text}");
    assert!(
        text.contains("gateway_persist_confirm_seconds_count 2"),
        "{text}"
    );
    assert!(text.contains("gateway_session_queued_frames 0"), "{text}");
}
