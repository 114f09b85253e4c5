//! The load generator, run small against the real system: what the
//! benchmarks rely on (every acked message delivered once, history gapless)
//! is checked by the same code the benchmarks run.

use chat_tests::TestSystem;
use chat_tests::load::resilient as chaos;
use chat_tests::load::{self, Scenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_load_run_over_both_gateways_verifies_every_message() {
    let system = TestSystem::start().await;
    let scenario = Scenario {
        urls: vec![system.url(0, ""), system.url(1, "")],
        users: 20,
        group_size: 4,
        rate: 200.0,
        warmup_secs: 0.5,
        duration_secs: 1.0,
        drain_secs: 10.0,
        skip_history: false,
    };
    let (summary, verdict) = load::execute(&scenario)
        .await
        .unwrap_or_else(|e| panic!("chat-load run: {e:#}"));
    assert!(verdict.ok(), "{summary}");
    assert!(verdict.history_checked);
    assert_eq!(summary["sent"], 300);
    assert_eq!(summary["acked"], 300, "{summary}");
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");
    // 200 measured messages, each to the 3 other members of its group.
    assert_eq!(summary["delivery_latency"]["count"], 600, "{summary}");
    assert_eq!(summary["ack_latency"]["count"], 200, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_like_clients_lose_nothing_when_a_gateway_is_killed_mid_run_and_each_of_its_users_moves_and_catches_up()
 {
    let mut system = TestSystem::start_with(1, 1, |_| {}).await;
    let mut doomed = system.spawn_gateway_process().await;
    let urls = vec![
        format!("http://{}", doomed.addr),
        system.url(0, "").trim_end_matches('/').to_owned(),
    ];
    let started = std::sync::Arc::new(tokio::sync::Notify::new());
    let scenario = chaos::ChaosScenario {
        urls,
        users: 20,
        rate: 100.0,
        duration_secs: 4.0,
        drain_secs: 20.0,
        // Signed here, as against a production gateway without dev login.
        jwt_secret: Some(system.settings.auth.jwt_secret.expose().to_owned()),
        // The first 10 users on the doomed gateway, the other 10 beside.
        pinned: 10,
        id_offset: 0,
        deliveries_out: None,
        load_started: Some(started.clone()),
    };
    // A second into the load (the set-up before it takes a while on a busy
    // machine, and a move before the load is not the storm's).
    let kill = async {
        started.notified().await;
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
        doomed.kill_9().await;
    };
    let (report, ()) = tokio::join!(chaos::execute(&scenario), kill);
    let report = report.unwrap();
    let s = &report.summary;
    assert_eq!(s["ok"], true, "{s}");
    assert_eq!(s["acked"], 400, "{s}");
    assert_eq!(s["acked_lost"], 0, "{s}");
    assert_eq!(s["duplicates_in_history"], 0, "{s}");
    // Every user of the killed gateway moved and caught up; none of the others did.
    let storm = &s["storm"];
    assert_eq!(storm["users_moved"], 10, "{s}");
    assert_eq!(storm["others"]["users"], 10, "{s}");
    assert!(s["reconnects"].as_u64().unwrap() >= 10, "{s}");
    assert!(
        storm["others"]["delivery_during_ms"]["count"].is_u64(),
        "{s}"
    );
    assert!(s["delivery_ms"]["count"].as_u64().unwrap() > 0, "{s}");
    system.stop_gateway(0);
}
