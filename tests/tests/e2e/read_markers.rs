//! Read markers: stored, never backwards, never past the last seq, relayed to
//! the other members, and reflected in unread counts.

use chat_tests::{Client, TestSystem};
use serde_json::json;

async fn read(client: &mut Client, conversation: i64, seq: i64) {
    client
        .send_json(json!({"type": "read", "conversation_id": conversation, "seq": seq}))
        .await;
}

async fn unread(system: &TestSystem, user: i64, conversation: i64) -> i64 {
    let token = system.token(user).await;
    let (_, body) = system.get(0, "/api/conversations", Some(&token)).await;
    body["conversations"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["id"] == conversation))
        .and_then(|c| c["unread_count"].as_i64())
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_moves_the_marker_relays_it_and_lowers_the_unread_count() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;
    for i in 1..=3 {
        binh.send_and_ack(conversation, &format!("b-{i}"), "news")
            .await;
    }
    assert_eq!(unread(&system, 1, conversation).await, 3);

    read(&mut an, conversation, 2).await;
    let relayed = binh.next_of("read").await;
    assert_eq!(
        relayed,
        json!({"type": "read", "conversation_id": conversation, "user_id": 1, "seq": 2})
    );
    assert_eq!(unread(&system, 1, conversation).await, 1);
    assert!(
        an.drain().await.iter().all(|f| f["type"] != "read"),
        "the reader is not told"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_read_does_not_move_the_marker_back_and_is_not_relayed() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;
    for i in 1..=3 {
        binh.send_and_ack(conversation, &format!("b-{i}"), "news")
            .await;
    }
    read(&mut an, conversation, 2).await;
    assert_eq!(binh.next_of("read").await["seq"], 2);

    read(&mut an, conversation, 1).await;
    read(&mut an, conversation, 3).await;
    assert_eq!(
        binh.next_of("read").await["seq"],
        3,
        "the stale read was not relayed"
    );
    assert_eq!(unread(&system, 1, conversation).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_past_the_last_message_stops_at_the_last_seq() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;
    binh.send_and_ack(conversation, "b-1", "one").await;
    binh.send_and_ack(conversation, "b-2", "two").await;

    read(&mut an, conversation, 99).await;
    assert_eq!(binh.next_of("read").await["seq"], 2, "clamped to last_seq");

    binh.send_and_ack(conversation, "b-3", "three").await;
    assert_eq!(
        unread(&system, 1, conversation).await,
        1,
        "the new message is unread"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_in_a_conversation_you_are_not_in_changes_nothing() {
    let system = TestSystem::start().await;
    let theirs = system.direct(2, 3).await;
    let mut intruder = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;
    let mut carol = system.connect(0, 3).await;
    carol.send_and_ack(theirs, "c-1", "hi").await;

    read(&mut intruder, theirs, 1).await;
    read(&mut binh, theirs, 1).await;
    let relayed = carol.next_of("read").await;
    assert_eq!(
        relayed["user_id"], 2,
        "only the member's read is relayed: {relayed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_read_is_a_bad_request_and_the_session_goes_on() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    read(&mut an, conversation, -1).await;
    assert_eq!(an.next_of("error").await["code"], "bad_request");
    let stored = an.send_and_ack(conversation, "after", "still fine").await;
    assert_eq!(stored["seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_answers_how_far_the_other_members_read_for_members_only() {
    let system = TestSystem::start().await;
    let group = system.group(1, &[2, 3]).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;
    for i in 1..=3 {
        an.send_and_ack(group, &format!("a-{i}"), "tin").await;
        binh.next_of("message").await;
    }
    read(&mut binh, group, 2).await;
    an.next_of("read").await; // stored and relayed
    read(&mut an, group, 3).await;
    binh.next_of("read").await;

    let token = system.token(1).await;
    let path = format!("/api/conversations/{group}/reads");
    let (status, body) = system.get(0, &path, Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    // The caller's own marker and a member who read nothing are left out.
    assert_eq!(body, json!({"reads": [{"user_id": 2, "seq": 2}]}));

    let stranger = system.token(9).await;
    let (status, body) = system.get(0, &path, Some(&stranger)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let missing = "/api/conversations/999999/reads";
    assert_eq!(system.get(0, missing, Some(&token)).await.0, 404);
    assert_eq!(system.get(0, &path, None).await.0, 401);
}
