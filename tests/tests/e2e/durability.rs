//! What the broker has accepted is stored, even when no persister is there
//! to take it at the time.

use chat_tests::TestSystem;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_made_while_no_persister_runs_are_stored_and_acked_when_one_starts() {
    let mut system = TestSystem::start_with(2, 0, |s| {
        s.gateway.send_timeout = Duration::from_millis(30_000)
    })
    .await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_quorum_queues_messages_and_typing_flow_and_the_shared_queues_are_quorum() {
    use chat_shared::amqp::Topology;
    use chat_shared::config::QueueType;
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable};
    use serde_json::json;

    let system = TestSystem::start_with(2, 1, |s| s.amqp.queue_type = QueueType::Quorum).await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;
    for i in 1..=3 {
        let stored = an
            .send_and_ack(conversation, &format!("q-{i}"), "nhân bản")
            .await;
        assert_eq!(stored["seq"], i);
        assert_eq!(binh.next_of("message").await["message"], stored);
    }
    // Typing travels through the presence queue.
    an.send_json(json!({"type": "typing", "conversation_id": conversation, "state": "start"}))
        .await;
    assert_eq!(binh.next_of("typing").await["user_id"], 1);

    // A queue cannot be declared again with another type: declaring each
    // shared queue with its own arguments but as a classic queue must be
    // refused (406) for its type, so each is quorum.
    let topo = Topology::new(&system.settings.amqp);
    let conn = lapin::Connection::connect(
        &system.settings.amqp.url,
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let text = |s: String| AMQPValue::LongString(s.into());
    let mut queues: Vec<(String, Vec<(&str, AMQPValue)>)> = (0..topo.partitions)
        .map(|p| {
            let args = vec![
                ("x-single-active-consumer", AMQPValue::Boolean(true)),
                ("x-dead-letter-exchange", text(topo.dead_letters())),
            ];
            (topo.persist_queue(p), args)
        })
        .collect();
    let drop_head = || text("drop-head".into());
    queues.push((
        topo.dead_letter_queue(),
        vec![
            (
                "x-max-length",
                AMQPValue::LongUInt(chat_shared::amqp::DEAD_LETTERS_MAX),
            ),
            ("x-overflow", drop_head()),
        ],
    ));
    queues.push((
        topo.presence_queue(),
        vec![
            ("x-single-active-consumer", AMQPValue::Boolean(true)),
            ("x-max-length", AMQPValue::LongUInt(100_000)),
            ("x-overflow", drop_head()),
        ],
    ));
    for (queue, args) in queues {
        let channel = conn.create_channel().await.unwrap();
        let mut classic = FieldTable::default();
        classic.insert("x-queue-type".into(), text("classic".into()));
        for (key, value) in args {
            classic.insert(key.into(), value);
        }
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let refused = channel
            .queue_declare(queue.clone().into(), options, classic)
            .await
            .expect_err("a quorum queue cannot be declared classic");
        assert!(
            refused.to_string().contains("x-queue-type"),
            "{queue}: {refused}"
        );
    }
}
