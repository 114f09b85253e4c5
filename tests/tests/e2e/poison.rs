//! Poison and overload on the bus: what no persister can read or store
//! costs only itself. Nothing else waits for it, and it leaves a trace (a
//! log line, a metric, a dead letter); so does what an overfull gateway
//! queue drops.

use chat_shared::amqp::{self, Topology};
use chat_shared::bus::{self, PersistCommand, SendCommand};
use chat_shared::ids::{ClientMsgId, ConversationId, UserId};
use chat_tests::{DEADLINE, TestSystem, eventually_within};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sea_orm::sqlx::{self, Connection as _};
use std::time::Duration;

fn send(conversation: i64, sender: i64, client_msg_id: &str, body: &str) -> PersistCommand {
    PersistCommand::Send(SendCommand {
        session_id: "no-session".into(),
        reply_to: "no-gateway".into(),
        conversation_id: ConversationId::new(conversation).expect("a conversation id"),
        sender_id: UserId::new(sender).expect("a user id").into(),
        client_msg_id: ClientMsgId::try_from(client_msg_id.to_owned()).expect("a client_msg_id"),
        body: body.into(),
        card: None,
        reply_when_stored: false,
        trace: None,
        received_at_us: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_command_is_dead_lettered_and_its_neighbours_are_stored() {
    let system = TestSystem::start_with(1, 1, |_| {}).await;
    let conversation = system.direct(1, 2).await;
    // One AMQP message as a newer gateway might coalesce it: a command this
    // persister does not know between two it does.
    let good =
        |id: &str| String::from_utf8(bus::encode(&[send(conversation, 1, id, "ok")])).unwrap();
    let (first, second) = (good("first"), good("second"));
    let payload = format!(
        r#"[{},{{"command":"from_the_future","x":1}},{}]"#,
        &first[1..first.len() - 1],
        &second[1..second.len() - 1]
    );
    let topo = Topology::new(&system.settings.amqp);
    let conn = Connection::connect(&system.settings.amqp.url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let partition = bus::partition_of(ConversationId::new(conversation).unwrap(), topo.partitions);
    channel
        .basic_publish(
            topo.persist_exchange().into(),
            partition.to_string().into(),
            BasicPublishOptions::default(),
            payload.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();

    eventually_within(DEADLINE, async || {
        let stored = system.history(0, 1, conversation, "").await;
        if stored.len() != 2 {
            return Err(format!("stored: {stored:?}"));
        }
        assert_eq!(stored[0]["client_msg_id"], "first");
        assert_eq!(stored[1]["client_msg_id"], "second");
        Ok(())
    })
    .await;
    assert_eq!(
        depth(&channel, &topo.dead_letter_queue()).await,
        1,
        "the unknown command is a dead letter"
    );
    let letter = channel
        .basic_get(
            topo.dead_letter_queue().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the dead letter");
    assert_eq!(
        String::from_utf8_lossy(&letter.delivery.data),
        r#"{"command":"from_the_future","x":1}"#
    );
    let reason = letter
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| match h.inner().get("x-chat-reason") {
            Some(lapin::types::AMQPValue::LongString(text)) => Some(text.to_string()),
            _ => None,
        })
        .unwrap_or_default();
    assert!(
        reason.starts_with("undecodable: unknown variant"),
        "{reason}"
    );
    let metrics = system.persister_metrics_text(0).await;
    assert!(
        metrics.contains("persister_dead_lettered_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_fails_every_time_is_refused_and_does_not_stall_the_others() {
    let system = TestSystem::start_with(1, 1, |_| {}).await;
    // A database that refuses one body forever with a "retry me" error
    // (unique_violation is what a lost race looks like).
    let mut db = sqlx::PgConnection::connect(&system.settings.database.url)
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.body = 'poison' THEN RAISE unique_violation USING MESSAGE = 'poison'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER poison BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION poison();",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let poisoned = system.direct(1, 2).await;
    let healthy = system.direct(3, 4).await;
    let mut an = system.connect(0, 1).await;
    let mut chi = system.connect(0, 3).await;
    an.send_message(poisoned, "bad", "poison").await;
    chi.send_message(healthy, "good", "fine").await;

    let refused = an.next_of("error").await;
    assert_eq!(refused["client_msg_id"], "bad");
    assert_eq!(refused["code"], "internal");
    assert_eq!(chi.next_of("ack").await["client_msg_id"], "good");
    // The poison is gone from the path: the next send goes straight through.
    an.send_and_ack(poisoned, "after", "xin chào").await;
    let metrics = system.persister_metrics_text(0).await;
    assert!(
        metrics.contains("persister_commands_refused_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_another_bus_layout_than_the_others_refuses_to_start() {
    let system = TestSystem::start_with(1, 0, |_| {}).await;
    let mut other = system.settings.clone();
    other.amqp.partitions = other.amqp.partitions.saturating_add(1);
    let refused = chat_gateway::Gateway::build(other).await;
    let error = format!(
        "{:#}",
        refused.err().expect("the gateway must refuse to start")
    );
    assert!(error.contains("amqp.partitions"), "{error}");
    let mut other = system.settings.clone();
    other.amqp.route_shards = other.amqp.route_shards.saturating_add(1);
    let refused = chat_persister::Persister::build(other).await;
    let error = format!(
        "{:#}",
        refused.err().expect("the persister must refuse to start")
    );
    assert!(error.contains("amqp.route_shards"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_persist_queue_refuses_sends_at_once_instead_of_growing() {
    // No persister: sends pile up in the persist queue. deploy/services.sh
    // bounds every persist queue by policy (1,000,000); this test's own
    // prefix gets a bound of 2, with a higher priority.
    let system = TestSystem::start_with(1, 0, |s| {
        s.gateway.send_timeout = Duration::from_millis(60_000)
    })
    .await;
    let prefix = &system.settings.amqp.prefix;
    let policy = format!("{prefix}-bound");
    let services = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/services.sh");
    let set = std::process::Command::new(services)
        .args([
            "rabbitmqctl",
            "test",
            "-q",
            "set_policy",
            "--apply-to",
            "queues",
        ])
        .args(["--priority", "10", &policy])
        .arg(format!(r"^{prefix}\.persist\.[0-9]+$"))
        .arg(r#"{"max-length":2,"overflow":"reject-publish"}"#)
        .output()
        .expect("deploy/services.sh runs");
    assert!(set.status.success(), "set_policy: {set:?}");

    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    // The policy applies within moments; until then sends queue.
    let mut n = 0;
    let refused = eventually_within(DEADLINE, async || {
        n += 1;
        an.send_message(conversation, &format!("m{n}"), "xin chào")
            .await;
        let answer = tokio::time::timeout(Duration::from_millis(300), an.next_of("error")).await;
        answer.map_err(|_| format!("the queue took {n} sends"))
    })
    .await;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert!(n >= 3, "two sends fit in the queue: {n}");
    let _ = std::process::Command::new(services)
        .args(["rabbitmqctl", "test", "-q", "clear_policy", &policy])
        .output();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persister_holds_at_most_its_byte_budget_and_still_stores_everything() {
    // Sends pile up while no persister runs; then one with room for 4 KB
    // at a time takes them all, 4 KB at a time at most (one delivery larger
    // than that alone at most).
    let mut system = TestSystem::start_with(1, 0, |_| {}).await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    for n in 0..150 {
        an.send_message(conversation, &format!("m{n}"), "xin chào")
            .await;
    }
    let mut settings = system.settings.clone();
    settings.persister.max_inflight_bytes = std::num::NonZeroUsize::new(4096).unwrap();
    settings.persister.batch_max = std::num::NonZeroUsize::new(10).unwrap();
    settings.persister.linger_from = 2;
    settings.persister.linger_until = 10;
    system.start_persister_with(settings).await;
    let mut acked = 0;
    while acked < 150 {
        let frame = an.next().await;
        assert_ne!(frame["type"], "error", "{frame}");
        if frame["type"] == "ack" {
            acked += 1;
        }
    }
    let metrics = system.persister_metrics_text(0).await;
    let held: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("persister_bytes_in_memory "))
        .and_then(|v| v.trim().parse().ok())
        .expect("persister_bytes_in_memory");
    assert!(
        (1..=4096).contains(&held),
        "{held} bytes held at the last batch"
    );
    assert_eq!(
        system.history(0, 1, conversation, "?limit=200").await.len(),
        150
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_a_full_gateway_queue_drops_is_counted() {
    use chat_gateway::inbox;
    use chat_gateway::metrics::Metrics;
    use lapin::options::ConfirmSelectOptions;
    use std::sync::Arc;

    let system = TestSystem::start_services(0, 0, false, |_| {}).await;
    let conn = Connection::connect(&system.settings.amqp.url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let queue = format!("{}.gw.overfull", system.settings.amqp.prefix);
    amqp::declare_gateway_queue(&channel, &queue, 3)
        .await
        .unwrap();
    // Ten AMQP messages of two events each, and nobody consuming yet: the
    // queue keeps the newest three messages and drops seven, 14 events.
    let publisher = conn.create_channel().await.unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for _ in 0..10 {
        let payload = br#"[{"event":"from_the_future"},{"event":"from_the_future"}]"#;
        publisher
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                payload,
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let metrics = Arc::new(Metrics::new());
    let dropped = inbox::consume(&channel, &amqp::gateway_dropped_queue(&queue))
        .await
        .unwrap();
    tokio::spawn(inbox::count_dropped(
        dropped,
        queue.clone(),
        metrics.clone(),
    ));
    chat_tests::eventually("the 14 dropped events were never counted", || async {
        metrics.drops("queue_full") >= 14
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(metrics.drops("queue_full"), 14);
    assert!(
        metrics
            .render()
            .contains(r#"gateway_events_dropped_total{reason="queue_full"} 14"#)
    );
    assert_eq!(
        depth(&channel, &queue).await,
        3,
        "the newest three are kept"
    );
}

/// How many messages `queue` holds.
async fn depth(channel: &lapin::Channel, queue: &str) -> u32 {
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("{queue}: {e}"))
        .message_count()
}
