//! Typing: relayed to the other members on any gateway, never to the typist,
//! throttled, and lapsing into `stop`. The test profile: throttle 600 ms,
//! lapse 1 s.

use chat_tests::{Client, TestSystem};
use serde_json::{Value, json};

async fn typing(client: &mut Client, conversation: i64, state: &str) {
    client
        .send_json(json!({"type": "typing", "conversation_id": conversation, "state": state}))
        .await;
}

fn about(frame: &Value) -> (Option<i64>, Option<&str>) {
    (frame["user_id"].as_i64(), frame["state"].as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_relayed_to_the_other_members_and_never_to_the_typist() {
    let system = TestSystem::start().await;
    let group = system.group(1, &[2, 3]).await;
    let mut an = system.connect(0, 1).await;
    let mut an_elsewhere = system.connect(1, 1).await;
    let mut binh = system.connect(1, 2).await;
    let mut carol = system.connect(0, 3).await;

    typing(&mut an, group, "start").await;
    let to_binh = binh.next_of("typing").await;
    assert_eq!(to_binh["conversation_id"], group);
    assert_eq!(about(&to_binh), (Some(1), Some("start")));
    assert_eq!(
        about(&carol.next_of("typing").await),
        (Some(1), Some("start"))
    );

    typing(&mut an, group, "stop").await;
    assert_eq!(
        about(&binh.next_of("typing").await),
        (Some(1), Some("stop"))
    );
    let typist_heard: Vec<Value> = an_elsewhere.drain().await;
    assert!(
        typist_heard.iter().all(|f| f["type"] != "typing"),
        "{typist_heard:?}"
    );
    assert!(an.drain().await.iter().all(|f| f["type"] != "typing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_start_within_the_throttle_is_not_broadcast_again() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;

    typing(&mut an, conversation, "start").await;
    assert_eq!(
        about(&binh.next_of("typing").await),
        (Some(1), Some("start"))
    );
    typing(&mut an, conversation, "start").await;
    typing(&mut an, conversation, "stop").await;
    // The second start was swallowed: the stop comes next.
    assert_eq!(
        about(&binh.next_of("typing").await),
        (Some(1), Some("stop"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_without_renewal_lapses_into_stop() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;

    typing(&mut an, conversation, "start").await;
    assert_eq!(
        about(&binh.next_of("typing").await),
        (Some(1), Some("start"))
    );
    let lapsed = binh.next_of("typing").await;
    assert_eq!(about(&lapsed), (Some(1), Some("stop")));
    assert_eq!(lapsed["conversation_id"], conversation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_in_a_conversation_you_are_not_in_reaches_nobody() {
    let system = TestSystem::start().await;
    let theirs = system.direct(2, 3).await;
    let mine = system.direct(1, 2).await;
    let mut intruder = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;

    typing(&mut intruder, theirs, "start").await;
    typing(&mut intruder, mine, "start").await;
    // Binh hears the typing in the conversation they share, and only that.
    let frame = binh.next_of("typing").await;
    assert_eq!(frame["conversation_id"], mine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_ten_typing_frames_a_second_are_rate_limited() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    // Well over ten, so that a slow machine still sends more than ten in
    // a second (the exact rule is unit-tested in gateway/src/ws/frames.rs).
    for _ in 0..30 {
        typing(&mut an, conversation, "start").await;
    }
    let error = an.next_of("error").await;
    assert_eq!(error["code"], "rate_limited");
    assert!(
        error["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms <= 1000),
        "{error}"
    );
}
