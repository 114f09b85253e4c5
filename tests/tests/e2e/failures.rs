//! Dependencies that break mid-way: the service degrades, loses nothing, and
//! recovers by itself.

use chat_tests::TestSystem;
use chat_tests::chaos::ChaosProxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_persister_rides_out_a_database_outage_and_loses_nothing() {
    let mut system = TestSystem::start_with(2, 0, |s| s.gateway.send_timeout_ms = 60_000).await;
    let conversation = system.direct(1, 2).await;
    let postgres: std::net::SocketAddr = ([127, 0, 0, 1], 35432).into();
    let proxy = ChaosProxy::start(postgres).await;
    let mut persister = system.settings.clone();
    persister.database.url = persister
        .database
        .url
        .replace("127.0.0.1:35432", &proxy.addr.to_string());
    persister.database.connect_timeout_ms = 500;
    system.start_persister_with(persister).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;
    let first = an.send_and_ack(conversation, "before", "one").await;
    assert_eq!(binh.next_of("message").await["message"], first);

    proxy.cut();
    an.send_message(conversation, "during-1", "two").await;
    an.send_message(conversation, "during-2", "three").await;
    assert!(
        an.drain().await.is_empty(),
        "nothing is acked while the database is away"
    );

    proxy.restore();
    for (i, id) in ["during-1", "during-2"].iter().enumerate() {
        let ack = an.next_of("ack").await;
        assert_eq!(ack["client_msg_id"], *id);
        assert_eq!(ack["message"]["seq"], i as i64 + 2);
        assert_eq!(binh.next_of("message").await["message"], ack["message"]);
    }
    let history = system.history(0, 2, conversation, "").await;
    let seqs: Vec<i64> = history.iter().filter_map(|m| m["seq"].as_i64()).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_loses_its_broker_connection_delivers_again_once_it_is_back() {
    let mut system = TestSystem::start_with(1, 1, |_| {}).await;
    let conversation = system.direct(1, 2).await;
    let broker: std::net::SocketAddr = ([127, 0, 0, 1], 35672).into();
    let proxy = ChaosProxy::start(broker).await;
    let mut settings = system.settings.clone();
    settings.amqp.url = settings
        .amqp
        .url
        .replace("127.0.0.1:35672", &proxy.addr.to_string());
    let index = system.start_gateway_with(settings).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(index, 2).await;
    let first = an.send_and_ack(conversation, "before", "one").await;
    assert_eq!(binh.next_of("message").await["message"], first);

    proxy.cut();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    proxy.restore();

    let deadline = tokio::time::Instant::now() + chat_tests::DEADLINE;
    let mut i = 0;
    loop {
        i += 1;
        let sent = an
            .send_and_ack(conversation, &format!("after-{i}"), "again")
            .await;
        let got = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            binh.next_of("message"),
        )
        .await;
        if let Ok(frame) = got {
            assert_eq!(frame["message"]["seq"].as_i64().map(|s| s >= 2), Some(true));
            let _ = sent;
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery after the broker came back"
        );
    }
}
