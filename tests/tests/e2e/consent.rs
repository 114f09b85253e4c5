//! Consent (version 2): privacy settings, blocks, and what they hide and
//! refuse, on every gateway within a second. Users 1 (An), 2 (Bình), 3
//! (Chi), 4 (Dũng).

use chat_tests::{Client, TestSystem};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn set_privacy(system: &TestSystem, gateway: usize, user: i64, change: Value) -> Value {
    let token = system.token(user).await;
    let (status, body) = system
        .put(gateway, "/api/me/privacy", Some(&token), change)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn block(system: &TestSystem, gateway: usize, blocker: i64, blocked: i64) {
    let token = system.token(blocker).await;
    let path = format!("/api/blocks/{blocked}");
    let (status, body) = system.put(gateway, &path, Some(&token), json!({})).await;
    assert_eq!(status, 204, "{body}");
}

async fn unblock(system: &TestSystem, gateway: usize, blocker: i64, blocked: i64) {
    let token = system.token(blocker).await;
    let path = format!("/api/blocks/{blocked}");
    let (status, body) = system.delete(gateway, &path, Some(&token)).await;
    assert_eq!(status, 204, "{body}");
}

/// `asker`'s view of `user`'s presence: (status, last_seen).
async fn presence(system: &TestSystem, asker: i64, user: i64) -> (String, Value) {
    let token = system.token(asker).await;
    let path = format!("/api/presence?user_ids={user}");
    let (status, body) = system.get(1, &path, Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let p = &body["presence"][0];
    (
        p["status"].as_str().unwrap_or_default().to_owned(),
        p["last_seen"].clone(),
    )
}

async fn post_as(system: &TestSystem, user: i64, path: &str, body: Value) -> (u16, Value) {
    let token = system.token(user).await;
    system.post(0, path, Some(&token), body).await
}

fn code(body: &Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

/// The frames `client` received until now, of any of `kinds`, about `user`.
async fn received(client: &mut Client, kinds: &[&str], user: i64) -> Vec<Value> {
    let frames = client.drain_all().await;
    frames
        .into_iter()
        .filter(|f| kinds.iter().any(|k| f["type"] == *k) && f["user_id"] == user)
        .collect()
}

/// The answer to a send: the next `ack` or `error` (other frames skipped).
async fn answer(client: &mut Client) -> Value {
    loop {
        let frame = client.next().await;
        if frame["type"] == "ack" || frame["type"] == "error" {
            return frame;
        }
    }
}

/// Waits for a `presence` frame about `user` with `status`.
async fn presence_frame(client: &mut Client, user: i64, status: &str) -> Value {
    loop {
        let frame = client.next_presence_of(user).await;
        if frame["status"] == status {
            return frame;
        }
    }
}

/// How long a change may take to reach every gateway: the contract's second
/// (it takes milliseconds: the change is pushed, where the gates' memory
/// alone would keep the old answer for a minute).
const PUSHED_WITHIN: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_settings_default_to_version_one_and_change_field_by_field() {
    let system = TestSystem::start().await;
    let token = system.token(1).await;
    let (status, body) = system.get(0, "/api/me/privacy", Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"presence": "everyone", "read_receipts": true, "groups": "everyone"})
    );
    let after = set_privacy(&system, 0, 1, json!({"presence": "contacts"})).await;
    assert_eq!(
        after,
        json!({"presence": "contacts", "read_receipts": true, "groups": "everyone"})
    );
    let after = set_privacy(
        &system,
        1,
        1,
        json!({"read_receipts": false, "groups": "contacts"}),
    )
    .await;
    assert_eq!(
        after,
        json!({"presence": "contacts", "read_receipts": false, "groups": "contacts"})
    );
    for bad in [
        json!({"presence": "friends"}),
        json!({"groups": "nobody"}),
        json!({"read_receipts": "no"}),
        json!({"presense": "nobody"}),
    ] {
        let (status, body) = system
            .put(0, "/api/me/privacy", Some(&token), bad.clone())
            .await;
        assert_eq!((status, code(&body)), (400, Some("bad_request")), "{bad}");
    }
    let (_, body) = system.get(1, "/api/me/privacy", Some(&token)).await;
    assert_eq!(body, after, "nothing changed by the refusals");
    let (status, _) = system.get(0, "/api/me/privacy", None).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_for_contacts_reaches_only_those_the_user_has_written_to() {
    let system = TestSystem::start().await;
    let with_binh = system.direct(1, 2).await;
    let with_chi = system.direct(1, 3).await;
    let mut binh = system.connect(1, 2).await;
    let mut chi = system.connect(1, 3).await;
    {
        let mut an = system.connect(0, 1).await;
        // Bình wrote to An (that makes An no contact of Bình's: only what An
        // sends counts); An wrote to Chi.
        binh.send_and_ack(with_binh, "b-1", "chào An").await;
        an.next_of("message").await;
        an.send_and_ack(with_chi, "a-1", "chào Chi").await;
        set_privacy(&system, 0, 1, json!({"presence": "contacts"})).await;
        an.close().await;
    }
    presence_frame(&mut chi, 1, "offline").await; // after the grace
    binh.drain_all().await;

    let mut an = system.connect(0, 1).await;
    presence_frame(&mut chi, 1, "online").await;
    // Both are on gateway 1: Chi's frame came, Bình's would have with it.
    assert_eq!(
        received(&mut binh, &["presence"], 1).await,
        Vec::<Value>::new()
    );
    assert_eq!(presence(&system, 3, 1).await.0, "online");
    assert_eq!(
        presence(&system, 2, 1).await,
        ("offline".to_owned(), Value::Null),
        "as a user never seen"
    );
    // Once An writes to Bình, Bình sees An online at once.
    an.send_and_ack(with_binh, "a-2", "chào Bình").await;
    presence_frame(&mut binh, 1, "online").await;
    assert_eq!(presence(&system, 2, 1).await.0, "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privacy_change_tells_who_may_no_longer_see_at_once_and_who_may_again() {
    let system = TestSystem::start().await;
    system.direct(1, 2).await;
    let mut binh = system.connect(1, 2).await;
    let _an = system.connect(0, 1).await;
    assert_eq!(binh.next_presence_of(1).await["status"], "online");

    let changed = Instant::now();
    set_privacy(&system, 0, 1, json!({"presence": "nobody"})).await;
    let hidden = binh.next_presence_of(1).await;
    assert!(changed.elapsed() < PUSHED_WITHIN, "{:?}", changed.elapsed());
    assert_eq!(
        hidden,
        json!({"type": "presence", "user_id": 1, "status": "offline", "last_seen": null})
    );
    assert_eq!(
        presence(&system, 2, 1).await,
        ("offline".to_owned(), Value::Null)
    );

    set_privacy(&system, 0, 1, json!({"presence": "everyone"})).await;
    assert_eq!(binh.next_presence_of(1).await["status"], "online");
    assert_eq!(presence(&system, 2, 1).await.0, "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_refuses_sends_both_ways_within_a_second_and_stores_nothing() {
    let system = TestSystem::start().await;
    let direct = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;
    // Bình's gateway has looked at the pair's blocks: it must hear of the
    // block, not merely ask afterwards.
    binh.send_and_ack(direct, "before", "chào").await;
    an.next_of("message").await;

    let blocked_at = Instant::now();
    block(&system, 0, 1, 2).await;
    // At the block each hears the other go offline, as for a user never seen.
    // (Frames sent before the block, e.g. Bình's first message showing Bình
    // to An, may come first.)
    for (client, other) in [(&mut an, 2), (&mut binh, 1)] {
        assert_eq!(
            presence_frame(client, other, "offline").await,
            json!({"type": "presence", "user_id": other, "status": "offline", "last_seen": null})
        );
    }
    let mut attempt = 0;
    let refusal = loop {
        attempt += 1;
        let id = format!("after-{attempt}");
        binh.send_message(direct, &id, "alo?").await;
        let answer = answer(&mut binh).await;
        if answer["type"] == "error" {
            assert_eq!(answer["client_msg_id"], id.as_str());
            break answer;
        }
        assert!(
            blocked_at.elapsed() < PUSHED_WITHIN,
            "still stored: {answer}"
        );
    };
    assert_eq!(refusal["code"], "blocked");
    an.send_message(direct, "a-after", "hết").await;
    assert_eq!(answer(&mut an).await["code"], "blocked", "the blocker too");
    let stored = system.history(0, 1, direct, "").await;
    assert!(
        stored.iter().all(|m| m["client_msg_id"] != "a-after"),
        "nothing refused was stored: {stored:?}"
    );

    let token = system.token(1).await;
    let (_, list) = system.get(1, "/api/blocks", Some(&token)).await;
    assert_eq!(list["blocked"][0]["id"], 2, "{list}");
    block(&system, 1, 1, 2).await; // idempotent
    unblock(&system, 1, 1, 2).await;
    let (_, list) = system.get(0, "/api/blocks", Some(&token)).await;
    assert_eq!(list, json!({"blocked": []}));
    let unblocked_at = Instant::now();
    for attempt in 1.. {
        binh.send_message(direct, &format!("again-{attempt}"), "lại")
            .await;
        let answer = answer(&mut binh).await;
        if answer["type"] == "ack" {
            break;
        }
        assert!(
            unblocked_at.elapsed() < PUSHED_WITHIN,
            "still refused: {answer}"
        );
    }
    // Blocking oneself, or no user: 400.
    for bad in ["1", "0", "x"] {
        let (status, _) = system
            .put(0, &format!("/api/blocks/{bad}"), Some(&token), json!({}))
            .await;
        assert_eq!(status, 400, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_forbids_new_direct_conversations_and_adds_but_a_shared_group_still_talks() {
    let system = TestSystem::start().await;
    block(&system, 0, 1, 2).await;
    for (who, peer) in [(2, 1), (1, 2)] {
        let (status, body) =
            post_as(&system, who, "/api/conversations", json!({"peer_id": peer})).await;
        assert_eq!(
            (status, code(&body)),
            (403, Some("blocked")),
            "{who} -> {peer}"
        );
    }
    let (status, body) = post_as(
        &system,
        2,
        "/api/conversations",
        json!({"title": "hội", "member_ids": [1, 4]}),
    )
    .await;
    assert_eq!((status, code(&body)), (403, Some("blocked")));
    let own = system.group(2, &[4]).await;
    let path = format!("/api/conversations/{own}/members");
    let (status, body) = post_as(&system, 2, &path, json!({"user_ids": [1]})).await;
    assert_eq!((status, code(&body)), (403, Some("blocked")));

    // A third member may put them in one group; messages flow to everyone,
    // typing and read markers not across the block.
    let group = system.group(3, &[1, 2]).await;
    let mut an = system.connect(0, 1).await;
    let mut chi = system.connect(0, 3).await;
    let mut binh = system.connect(1, 2).await;
    let message = binh.send_and_ack(group, "g-1", "chào cả nhà").await;
    assert_eq!(
        an.next_of("message").await["message"]["body"],
        "chào cả nhà"
    );
    chi.next_of("message").await;

    binh.send_json(json!({"type": "typing", "conversation_id": group, "state": "start"}))
        .await;
    binh.send_json(json!({"type": "read", "conversation_id": group, "seq": message["seq"]}))
        .await;
    // Typing goes through the presence service, the read marker through
    // the persister: either may come first.
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let frame = chi.next().await;
        if frame["type"] == "typing" || frame["type"] == "read" {
            assert_eq!(frame["user_id"], 2, "{frame}");
            kinds.push(frame["type"].as_str().unwrap_or_default().to_owned());
        }
    }
    kinds.sort();
    assert_eq!(kinds, ["read", "typing"]);
    // An and Chi share a gateway: An's frames would have come with Chi's.
    assert_eq!(
        received(&mut an, &["typing", "read"], 2).await,
        Vec::<Value>::new()
    );

    let reads = |user: i64| {
        let system = &system;
        async move {
            let token = system.token(user).await;
            let path = format!("/api/conversations/{group}/reads");
            system.get(0, &path, Some(&token)).await.1["reads"].clone()
        }
    };
    assert_eq!(reads(3).await, json!([{"user_id": 2, "seq": 1}]));
    assert_eq!(reads(1).await, json!([]), "not across the block");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_for_contacts_lets_only_those_the_user_wrote_to_add_them() {
    let system = TestSystem::start().await;
    set_privacy(&system, 0, 1, json!({"groups": "contacts"})).await;
    let create = |by: i64| {
        let system = &system;
        async move {
            post_as(
                system,
                by,
                "/api/conversations",
                json!({"title": "hội", "member_ids": [1]}),
            )
            .await
        }
    };
    let (status, body) = create(2).await;
    assert_eq!((status, code(&body)), (403, Some("forbidden")), "{body}");
    // An writes to Bình: Bình is An's contact from then on.
    let direct = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    an.send_and_ack(direct, "a-1", "chào Bình").await;
    assert_eq!(create(2).await.0, 201);
    let group = system.group(3, &[4]).await;
    let path = format!("/api/conversations/{group}/members");
    let (status, body) = post_as(&system, 3, &path, json!({"user_ids": [1]})).await;
    assert_eq!(
        (status, code(&body)),
        (403, Some("forbidden")),
        "Chi is no contact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_off_relays_none_and_leaves_the_reader_out_of_reads() {
    let system = TestSystem::start().await;
    let direct = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;
    for i in 1..=2 {
        an.send_and_ack(direct, &format!("a-{i}"), "tin").await;
    }
    set_privacy(&system, 1, 2, json!({"read_receipts": false})).await;
    binh.send_json(json!({"type": "read", "conversation_id": direct, "seq": 1}))
        .await;
    let token = system.token(2).await;
    chat_tests::eventually("Bình's own unread count follows", async || {
        let (_, body) = system.get(0, "/api/conversations", Some(&token)).await;
        body["conversations"][0]["unread_count"] == 1
    })
    .await;
    let token = system.token(1).await;
    let path = format!("/api/conversations/{direct}/reads");
    assert_eq!(
        system.get(0, &path, Some(&token)).await.1,
        json!({"reads": []})
    );

    set_privacy(&system, 1, 2, json!({"read_receipts": true})).await;
    binh.send_json(json!({"type": "read", "conversation_id": direct, "seq": 2}))
        .await;
    // The relays keep their order: had the first been relayed, it came first.
    assert_eq!(an.next_of("read").await["seq"], 2);
    assert_eq!(
        system.get(0, &path, Some(&token)).await.1,
        json!({"reads": [{"user_id": 2, "seq": 2}]})
    );
}
