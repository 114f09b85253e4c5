//! Bad input gets a clear error on a connection that stays usable, and
//! shutdown behaves as the contract says: the wiring of the session's rules
//! (each rule is unit-tested in gateway/src/ws/).

use chat_tests::TestSystem;
use chat_tests::client::Closed;
use futures_util::future::join_all;
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

/// When a gateway goes, all its sessions reconnect to the others within a
/// fraction of a second: a connection that finds the accept queue full loses
/// its SYN and retries 1, 3, 7 s later. So the public port's queue is as
/// long as `gateway.listen_backlog` (`TcpListener::bind` asks for 128), up to the host's
/// `net.core.somaxconn`; `ss` shows a listening socket's queue as Send-Q.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_port_queues_as_many_connections_as_the_listen_backlog_says() {
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("/proc/sys/net/core/somaxconn")
        .trim()
        .parse()
        .unwrap();
    assert!(
        somaxconn >= 2000,
        "this host caps listen queues at {somaxconn}: raise net.core.somaxconn to run this test"
    );
    let system = TestSystem::start_with(1, 0, |s| {
        s.gateway.listen_backlog = std::num::NonZeroU32::new(2000).unwrap();
    })
    .await;
    let port = system.gateways[0].port();
    let ss = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss (Debian's iproute2) must be installed");
    let listing = String::from_utf8_lossy(&ss.stdout);
    // State Recv-Q Send-Q Local-Address:Port Peer-Address:Port
    let queue: Vec<&str> = listing.split_whitespace().collect();
    assert_eq!(queue.get(2), Some(&"2000"), "ss -ltn: {listing}");
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

/// Lame duck (`gateway.drain_ms`): a stopping gateway closes its 2,000
/// sessions one after another over its 4 s drain window, not at once, so
/// their clients' reconnects reach the other gateway at most (2,000 / 4) x
/// 1.5 = 750 in any second; a send in flight when it begins is acked and
/// stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_spreads_its_sessions_reconnects_over_the_drain_window() {
    const SESSIONS: i64 = 2_000;
    let drain = Duration::from_secs(4);
    // Gateway 1 drains; gateway 0 (which mints the tests' tokens) stays.
    // No presence service: 4,000 sessions coming and going would load the
    // servers every test shares with its presence work, for nothing here.
    let system = TestSystem::start_services(2, 1, false, |s| {
        s.gateway.drain = drain;
        s.gateway.limits.connections_per_ip =
            std::num::NonZeroUsize::new(10_000).expect("non-zero");
    })
    .await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(1, 1).await;
    let mut clients = Vec::new();
    let users: Vec<i64> = (1_000..1_000 + SESSIONS).collect();
    for chunk in users.chunks(100) {
        let connected = join_all(chunk.iter().map(|u| system.connect(1, *u))).await;
        clients.extend(chunk.iter().copied().zip(connected));
    }
    // Read by the session (the pong comes after it), maybe not yet acked.
    an.send_message(conversation, "in-flight", "vẫn gửi được")
        .await;
    let mut before = an.drain().await;
    let mut system = system;
    let started = tokio::time::Instant::now();
    system.stop_gateway(1);
    before.retain(|f| f["type"] == "ack");
    let ack = match before.pop() {
        Some(ack) => ack,
        None => an.next_of("ack").await,
    };

    let system = &system;
    let closed_at: Vec<Duration> =
        join_all(clients.into_iter().map(|(user, mut client)| async move {
            assert_eq!(client.closed().await, Closed::Code(1012), "user {user}");
            let at = started.elapsed();
            drop(system.connect(0, user).await);
            at
        }))
        .await;

    let first = closed_at.iter().min().copied().unwrap_or_default();
    let last = closed_at.iter().max().copied().unwrap_or_default();
    assert!(
        last - first >= drain.mul_f64(0.8),
        "closes spread over {:?} only",
        last - first
    );
    let most_in_a_second = (0..=last.as_secs())
        .map(|s| closed_at.iter().filter(|t| t.as_secs() == s).count())
        .max()
        .unwrap_or_default();
    let allowed = (SESSIONS as f64 / drain.as_secs_f64() * 1.5) as usize;
    assert!(
        most_in_a_second <= allowed,
        "{most_in_a_second} reconnects in one second (at most {allowed})"
    );
    let history = system.history(0, 2, conversation, "").await;
    assert_eq!(history, vec![ack["message"].clone()]);
}
