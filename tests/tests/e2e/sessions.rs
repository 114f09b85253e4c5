//! Bad input gets a clear error on a connection that stays usable, and
//! shutdown behaves as the contract says: the wiring of the session's rules
//! (each rule is unit-tested in gateway/src/ws/).

use chat_tests::TestSystem;
use chat_tests::client::Closed;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_bad_request_and_the_connection_stays_usable() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;

    // Every frame rule is unit-tested (gateway/src/ws/frames.rs); here, that
    // the socket carries the answers and stays usable after them.
    an.send_raw("not json").await;
    let error = an.next_of("error").await;
    assert_eq!(error["code"], "bad_request", "{error}");
    an.send_raw(r#"{"type":"send","conversation_id":1,"client_msg_id":"k2","body":""}"#)
        .await;
    let error = an.next_of("error").await;
    assert_eq!(error["client_msg_id"], "k2", "{error}");
    an.send_binary(vec![1, 2, 3]).await;
    assert_eq!(an.next_of("error").await["code"], "bad_request");

    let stored = an
        .send_and_ack(conversation, "after-errors", "still here")
        .await;
    assert_eq!(stored["seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_to_a_conversation_you_are_not_in_is_forbidden() {
    let system = TestSystem::start().await;
    let theirs = system.direct(2, 3).await;
    let mut intruder = system.connect(0, 1).await;
    let mut member = system.connect(1, 2).await;

    intruder.send_message(theirs, "sneak", "hi").await;
    let error = intruder.next_of("error").await;
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["client_msg_id"], "sneak");

    intruder.send_message(999_999, "nowhere", "hi").await;
    assert_eq!(intruder.next_of("error").await["code"], "not_found");

    // The member's next message is seq 1: nothing was stored.
    let stored = member.send_and_ack(theirs, "real", "hello").await;
    assert_eq!(stored["seq"], 1);
    assert!(
        intruder.drain().await.is_empty(),
        "the intruder hears nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_shutting_down_closes_its_sessions_with_1012() {
    let mut system = TestSystem::start_with(2, 0, |_| {}).await;
    let mut leaving = system.connect(0, 1).await;
    let mut staying = system.connect(1, 2).await;
    system.stop_gateway(0);
    assert_eq!(leaving.closed().await, Closed::Code(1012));
    assert!(
        staying.drain().await.is_empty(),
        "the other gateway's sessions are untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_persister_a_send_gets_unavailable_not_a_false_ack() {
    // No persister runs: the broker takes the message, nobody stores it, and
    // the send times out into `unavailable` (the test profile: 5 s).
    let system = TestSystem::start_with(1, 0, |s| {
        s.gateway.send_timeout = Duration::from_millis(1000)
    })
    .await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    an.send_message(conversation, "lonely", "anyone?").await;
    let error = an.next_of("error").await;
    assert_eq!(error["code"], "unavailable");
    assert_eq!(error["client_msg_id"], "lonely");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_announces_the_body_limit_the_gateway_enforces() {
    let system = TestSystem::start_with(1, 1, |s| s.gateway.max_body_chars = 100).await;
    let conversation = system.direct(1, 2).await;
    let token = system.token(1).await;
    let mut an = chat_tests::Client::connect(system.gateways[0], Some(&token), None)
        .await
        .expect("connects");
    let hello = an.next().await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["max_body_chars"], 100);
    an.send_message(conversation, "over", &"ệ".repeat(101))
        .await;
    assert_eq!(an.next_of("error").await["code"], "too_large");
    let fits = an
        .send_and_ack(conversation, "fits", &"ệ".repeat(100))
        .await;
    assert_eq!(fits["seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_shutting_down_stops_accepting_and_answers_sends_in_flight_before_1012() {
    // No persister yet: the send waits in the broker while the gateway drains.
    let mut system = TestSystem::start_with(1, 0, |s| {
        s.gateway.shutdown_grace = Duration::from_millis(5000)
    })
    .await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    an.send_message(conversation, "in-flight", "gửi lúc tắt máy")
        .await;
    an.drain().await;
    system.stop_gateway(0);
    chat_tests::eventually("still accepting connections", async || {
        tokio::net::TcpStream::connect(system.gateways[0])
            .await
            .is_err()
    })
    .await;
    system.start_persister().await;
    let ack = an.next_of("ack").await;
    assert_eq!(ack["client_msg_id"], "in-flight");
    assert_eq!(an.closed().await, Closed::Code(1012));
}
