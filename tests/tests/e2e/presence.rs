//! Online status across gateways and after crashes; only conversation
//! partners hear of it. The test profile's timings: heartbeat 200 ms,
//! gateway TTL 1 s, offline grace 600 ms, sweep 100 ms.

use chat_tests::TestSystem;
use serde_json::Value;
use std::time::Instant;

async fn presence_of(system: &TestSystem, gateway: usize, asker: i64, ids: &str) -> Value {
    let token = system.token(asker).await;
    let (status, body) = system
        .get(
            gateway,
            &format!("/api/presence?user_ids={ids}"),
            Some(&token),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_online_on_one_gateway_is_seen_online_from_the_other() {
    let system = TestSystem::start().await;
    system.direct(1, 2).await;
    let mut binh = system.connect(1, 2).await;
    let _an = system.connect(0, 1).await;

    let frame = binh.next_presence_of(1).await;
    assert_eq!(frame["status"], "online");
    assert!(frame["last_seen"].is_string(), "{frame}");

    let body = presence_of(&system, 1, 2, "1,2,3").await;
    let statuses: Vec<(i64, String)> = body["presence"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            (
                p["user_id"].as_i64().unwrap_or_default(),
                p["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            (1, "online".into()),
            (2, "online".into()),
            (3, "offline".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_leaves_goes_offline_and_keeps_a_last_seen() {
    let system = TestSystem::start().await;
    system.direct(1, 2).await;
    let mut binh = system.connect(1, 2).await;
    let an = system.connect(0, 1).await;
    assert_eq!(binh.next_presence_of(1).await["status"], "online");
    an.close().await;

    let offline = binh.next_presence_of(1).await;
    assert_eq!(offline["status"], "offline");
    let body = presence_of(&system, 0, 2, "1").await;
    assert_eq!(body["presence"][0]["status"], "offline");
    assert_eq!(body["presence"][0]["last_seen"], offline["last_seen"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_process_takes_its_users_offline_within_the_bound() {
    let system = TestSystem::start().await;
    system.direct(1, 2).await;
    let mut binh = system.connect(0, 2).await;
    let mut doomed = system.spawn_gateway_process().await;
    let token = system.token(1).await;
    let _an = chat_tests::Client::connect(doomed.addr, Some(&token), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .authenticated()
        .await;
    assert_eq!(binh.next_presence_of(1).await["status"], "online");

    doomed.kill_9().await;
    let killed = Instant::now();
    let offline = binh.next_presence_of(1).await;
    let took = killed.elapsed();
    assert_eq!(offline["status"], "offline");
    let p = &system.settings.presence;
    let bound = p.gateway_ttl + p.sweep;
    println!("gateway killed -> user offline: {took:?} (bound {bound:?})");
    // The bound is the configured TTL plus one sweep; allow a noisy machine 3 s more.
    assert!(
        took < bound + std::time::Duration::from_secs(3),
        "took {took:?}, bound {bound:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_reload_shows_no_offline_online_flicker() {
    let system = TestSystem::start().await;
    system.direct(1, 2).await;
    system.direct(3, 2).await;
    let mut binh = system.connect(1, 2).await;
    let an = system.connect(0, 1).await;
    let carol = system.connect(0, 3).await;
    assert_eq!(binh.next_presence_of(1).await["status"], "online");
    assert_eq!(binh.next_presence_of(3).await["status"], "online");

    an.close().await;
    // The reload takes a moment: several sweeps long, well inside the grace.
    let p = &system.settings.presence;
    tokio::time::sleep(p.sweep * 3).await;
    let _an_again = system.connect(1, 1).await;
    // Carol leaves after An's reload: her offline is due after An's would be.
    carol.close().await;

    let next = binh.next_of("presence").await;
    assert_eq!(
        (next["user_id"].as_i64(), next["status"].as_str()),
        (Some(3), Some("offline")),
        "{next}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_conversation_partners_receive_presence_frames() {
    let system = TestSystem::start().await;
    system.direct(1, 2).await;
    let mut partner = system.connect(1, 2).await;
    let mut stranger = system.connect(1, 4).await;
    let _an = system.connect(0, 1).await;

    assert_eq!(partner.next_presence_of(1).await["status"], "online");
    for _ in 0..2 {
        let heard = stranger.drain_all().await;
        assert!(heard.is_empty(), "a stranger hears nothing: {heard:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_requests_need_one_to_two_hundred_positive_ids() {
    let system = TestSystem::start_with(1, 0, |_| {}).await;
    let token = system.token(1).await;
    let too_many = (1..=201)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    for ids in ["", "abc", "0", "-4", "1,,x", too_many.as_str()] {
        let (status, body) = system
            .get(0, &format!("/api/presence?user_ids={ids}"), Some(&token))
            .await;
        assert_eq!(status, 400, "{ids}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
    let (status, _) = system.get(0, "/api/presence?user_ids=1", None).await;
    assert_eq!(status, 401);
}
