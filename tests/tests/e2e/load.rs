//! The load generator, run small against the real system: what the
//! benchmarks rely on (every acked message delivered once, history gapless)
//! is checked by the same code the benchmarks run.

use chat_tests::TestSystem;
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
