//! The same client_msg_id from the same sender is stored once, whenever and
//! wherever it is sent again.

use chat_tests::TestSystem;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_on_the_other_gateway_after_other_messages_returns_the_original() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut first = system.connect(0, 1).await;
    let original = first.send_and_ack(conversation, "same-id", "once").await;
    first.send_and_ack(conversation, "other-1", "later").await;
    first
        .send_and_ack(conversation, "other-2", "even later")
        .await;
    first.close().await;

    let mut second = system.connect(1, 1).await;
    let again = second.send_and_ack(conversation, "same-id", "once").await;
    assert_eq!(again, original);

    let history = system.history(0, 1, conversation, "").await;
    assert_eq!(history.len(), 3, "nothing new was stored: {history:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_is_not_delivered_to_the_other_members_again() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;
    let original = an.send_and_ack(conversation, "once", "hi").await;
    assert_eq!(binh.next_of("message").await["message"], original);

    assert_eq!(an.send_and_ack(conversation, "once", "hi").await, original);
    let after = an.send_and_ack(conversation, "twice", "second").await;
    // Binh sees the second message next, not a repeat of the first.
    assert_eq!(binh.next_of("message").await["message"], after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_twice_back_to_back_is_stored_once() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    an.send_message(conversation, "dup", "hi").await;
    an.send_message(conversation, "dup", "hi").await;
    let first = an.next_of("ack").await;
    let second = an.next_of("ack").await;
    assert_eq!(first["message"], second["message"]);
    assert_eq!(system.history(0, 1, conversation, "").await.len(), 1);
}
