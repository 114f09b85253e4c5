//! Groups change (version 2): any member adds people, a member leaves; every
//! member hears of it at once, and one who left hears nothing more.

use chat_tests::{TestSystem, eventually_within};
use serde_json::{Value, json};
use std::time::Duration;

async fn add(system: &TestSystem, by: i64, group: i64, users: Value) -> (u16, Value) {
    let token = system.token(by).await;
    let path = format!("/api/conversations/{group}/members");
    system
        .post(1, &path, Some(&token), json!({"user_ids": users}))
        .await
}

async fn leave(system: &TestSystem, who: i64, conversation: i64) -> (u16, Value) {
    let token = system.token(who).await;
    let path = format!("/api/conversations/{conversation}/leave");
    system.post(0, &path, Some(&token), json!({})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_member_adds_people_and_every_member_old_and_new_hears_of_it() {
    let system = TestSystem::start().await;
    let group = system.group(1, &[2, 3]).await;
    let mut an = system.connect(0, 1).await;
    let mut dung = system.connect(1, 4).await;

    let (status, body) = add(&system, 2, group, json!([4, 4, 1])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["member_ids"], json!([1, 2, 3, 4]));
    for client in [&mut an, &mut dung] {
        let frame = client.next_of("conversation").await;
        assert_eq!(frame["conversation"]["id"], group);
        assert_eq!(frame["conversation"]["member_ids"], json!([1, 2, 3, 4]));
    }
    // The new member receives the group's messages from now on.
    an.send_and_ack(group, "after-add", "chào Dũng").await;
    assert_eq!(
        dung.next_of("message").await["message"]["body"],
        "chào Dũng"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_add_to_groups_of_at_most_a_thousand() {
    let system = TestSystem::start().await;
    let group = system.group(1, &[2, 3]).await;
    let direct = system.direct(1, 2).await;
    let (status, body) = add(&system, 9, group, json!([9])).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(add(&system, 1, direct, json!([3])).await.0, 400);
    assert_eq!(add(&system, 1, 999_999, json!([3])).await.0, 404);
    for bad in [json!([]), json!([0]), json!("4")] {
        assert_eq!(add(&system, 1, group, bad.clone()).await.0, 400, "{bad}");
    }
    let others: Vec<i64> = (2..=1000).collect();
    let full = system.group(1, &others).await;
    let (status, body) = add(&system, 1, full, json!([1001])).await;
    assert_eq!(status, 400, "{body}");
    // Nothing was added by the refusal.
    let (_, body) = add(&system, 1, full, json!([2])).await;
    assert_eq!(body["member_ids"].as_array().unwrap().len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_leaves_hears_nothing_more_and_gets_403_on_history() {
    let system = TestSystem::start().await;
    let group = system.group(1, &[2, 3]).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;
    let mut chi = system.connect(1, 3).await;
    // Binh's session knows it is a member (its typing passed the gate).
    binh.send_json(json!({"type": "typing", "conversation_id": group, "state": "start"}))
        .await;
    an.next_of("typing").await;
    chi.next_of("typing").await;

    let (status, body) = leave(&system, 2, group).await;
    assert_eq!(status, 204, "{body}");
    for client in [&mut an, &mut binh] {
        let frame = client.next_of("conversation").await;
        assert_eq!(frame["conversation"]["member_ids"], json!([1, 3]));
    }
    an.send_and_ack(group, "after-leave", "Bình đi rồi").await;
    assert_eq!(
        chi.next_of("message").await["message"]["body"],
        "Bình đi rồi"
    );
    binh.send_json(json!({"type": "typing", "conversation_id": group, "state": "start"}))
        .await;
    let left: Vec<Value> = binh.drain().await;
    assert!(
        left.iter().all(|f| f["type"] != "message"),
        "nothing of the group reaches one who left: {left:?}"
    );
    // (The lapse of the start made before leaving may still say "stop".)
    assert!(
        an.drain()
            .await
            .iter()
            .all(|f| !(f["type"] == "typing" && f["state"] == "start")),
        "one who left types to nobody"
    );
    let token = system.token(2).await;
    let history = format!("/api/conversations/{group}/messages");
    assert_eq!(system.get(0, &history, Some(&token)).await.0, 403);
    // Leaving again, or a direct conversation, is refused.
    assert_eq!(leave(&system, 2, group).await.0, 403);
    let direct = system.direct(1, 2).await;
    assert_eq!(leave(&system, 1, direct).await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_is_enforced_by_the_other_gateway_within_a_second() {
    let system = TestSystem::start().await;
    let group = system.group(1, &[2, 3]).await;
    let mut binh = system.connect(1, 2).await;
    let typing = json!({"type": "typing", "conversation_id": group, "state": "start"});
    // Gateway 1's membership gate now remembers Binh as a member.
    binh.send_json(typing.clone()).await;
    let frames = binh.drain().await;
    assert!(frames.iter().all(|f| f["type"] != "error"), "{frames:?}");

    assert_eq!(leave(&system, 2, group).await.0, 204); // through gateway 0
    eventually_within(Duration::from_secs(1), async || {
        binh.send_json(typing.clone()).await;
        let frames = binh.drain().await;
        let refused = frames
            .iter()
            .any(|f| f["type"] == "error" && f["code"] == "forbidden");
        refused
            .then_some(())
            .ok_or_else(|| format!("gateway 1 still lets Binh type: {frames:?}"))
    })
    .await;
}
