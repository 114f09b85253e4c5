//! History pages both ways, the limit cap, and read-your-writes.

use chat_tests::{TestSystem, seqs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_backwards_and_forwards_and_caps_at_two_hundred() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    for i in 0..250 {
        an.send_message(conversation, &format!("h-{i}"), "x").await;
    }
    for _ in 0..250 {
        an.next_of("ack").await;
    }

    let newest = system.history(1, 2, conversation, "").await;
    assert_eq!(
        seqs(&newest),
        (201..=250).collect::<Vec<_>>(),
        "default: the newest 50, ascending"
    );

    let before = system
        .history(1, 2, conversation, "?before_seq=201&limit=10")
        .await;
    assert_eq!(seqs(&before), (191..=200).collect::<Vec<_>>());

    let after = system
        .history(1, 2, conversation, "?after_seq=5&limit=3")
        .await;
    assert_eq!(seqs(&after), vec![6, 7, 8]);

    let capped = system.history(1, 2, conversation, "?limit=1000").await;
    assert_eq!(capped.len(), 200, "limit is capped at 200");

    let caught_up = system.history(1, 2, conversation, "?after_seq=250").await;
    assert!(caught_up.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_request_right_after_an_ack_finds_the_message() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    for i in 0..20 {
        let stored = an
            .send_and_ack(conversation, &format!("ryw-{i}"), "x")
            .await;
        // Through the other gateway, at once.
        let seq = stored["seq"].as_i64().unwrap_or_default();
        let page = system
            .history(1, 1, conversation, &format!("?after_seq={}", seq - 1))
            .await;
        assert_eq!(page.first(), Some(&stored));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_refuses_bad_parameters() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let token = system.token(1).await;
    for query in ["?limit=0", "?limit=abc", "?before_seq=5&after_seq=1"] {
        let path = format!("/api/conversations/{conversation}/messages{query}");
        let (status, body) = system.get(0, &path, Some(&token)).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
}
