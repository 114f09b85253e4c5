//! What the broker has accepted is stored, even when no persister is there
//! to take it at the time.

use chat_tests::TestSystem;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_made_while_no_persister_runs_are_stored_and_acked_when_one_starts() {
    let mut system = TestSystem::start_with(2, 0, |s| s.gateway.send_timeout_ms = 30_000).await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;
    for i in 0..5 {
        an.send_message(
            conversation,
            &format!("queued-{i}"),
            "waiting in the broker",
        )
        .await;
    }
    assert!(
        an.drain().await.is_empty(),
        "no ack before anything is stored"
    );

    system.start_persister().await;

    for i in 0..5 {
        let ack = an.next_of("ack").await;
        assert_eq!(ack["client_msg_id"], format!("queued-{i}"));
        assert_eq!(ack["message"]["seq"], i + 1);
        assert_eq!(binh.next_of("message").await["message"], ack["message"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_persistent_sends_on_messages_are_stored_acked_and_delivered_the_same() {
    let system = TestSystem::start_with(2, 1, |s| s.amqp.persistent_sends = true).await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;
    for i in 1..=3 {
        let stored = an
            .send_and_ack(conversation, &format!("p-{i}"), "bền vững")
            .await;
        assert_eq!(stored["seq"], i);
        assert_eq!(binh.next_of("message").await["message"], stored);
    }
}
