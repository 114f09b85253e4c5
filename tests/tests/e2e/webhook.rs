//! The unread webhook (version 2): a message that stays unread by an
//! offline recipient for `notify.delay_ms` (1.2 s in the test profile) is
//! POSTed to the site, signed, once per recipient and conversation; read,
//! online, left and blocked suppress it; failures are retried with the same
//! event id, and nothing pending is lost when the notifier restarts.

use chat_shared::config::Settings;
use chat_tests::webhook::{Hook, Receiver};
use chat_tests::{TestSystem, eventually, eventually_within};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::time::Duration;

fn with_webhook(url: &str) -> impl FnOnce(&mut Settings) + '_ {
    move |s: &mut Settings| s.notify.webhook_url = url.to_owned()
}

/// The events received, once `n` have come.
async fn received(receiver: &Receiver, n: usize) -> Vec<Hook> {
    eventually_within(Duration::from_secs(15), async || {
        let hooks = receiver.hooks();
        if hooks.len() >= n {
            Ok(hooks)
        } else {
            Err(format!("{} of {n} webhook requests so far", hooks.len()))
        }
    })
    .await
}

/// The recipients the events name, ascending (each once, if `dedup`).
fn recipients(hooks: &[Hook], dedup: bool) -> Vec<i64> {
    let mut users: Vec<i64> = hooks
        .iter()
        .filter_map(|h| h.json["user_id"].as_i64())
        .collect();
    users.sort_unstable();
    if dedup {
        users.dedup();
    }
    users
}

/// A `notify_*` counter of presence service `index`.
async fn counter(system: &TestSystem, index: usize, series: &str) -> u64 {
    let text = system.presence_metrics_text(index).await;
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Checks `X-Chat-Signature` as a receiver would (HMAC-SHA256 of
/// "<t>.<body>" with the test profile's secret).
fn signed_right(system: &TestSystem, hook: &Hook) -> bool {
    let Some((t, v1)) = hook
        .signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
    else {
        return false;
    };
    let secret = system.settings.notify.webhook_secret.expose().as_bytes();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(format!("{t}.{}", hook.body).as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    expected == v1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_recipient_gets_one_signed_event_with_the_newest_message_and_the_count() {
    let receiver = Receiver::start().await;
    let system = TestSystem::start_with(2, 1, with_webhook(&receiver.url)).await;
    let conversation = system.direct(1, 2).await;
    let token = system.token_named(1, "An").await;
    let mut an = chat_tests::Client::connect(system.gateways[0], Some(&token), None)
        .await
        .unwrap()
        .authenticated()
        .await;
    for i in 1..=3 {
        an.send_and_ack(conversation, &format!("a-{i}"), &format!("tin {i}"))
            .await;
    }
    let hooks = received(&receiver, 1).await;
    let event = &hooks[0].json;
    assert_eq!(event["type"], "message.unread");
    assert_eq!(
        (
            &event["user_id"],
            &event["conversation_id"],
            &event["unread_count"]
        ),
        (&json!(2), &json!(conversation), &json!(3)),
        "{event}"
    );
    assert_eq!(
        (&event["message"]["seq"], &event["message"]["body"]),
        (&json!(3), &json!("tin 3"))
    );
    assert_eq!(
        event["sender"],
        json!({"id": 1, "name": "An", "avatar_url": null})
    );
    assert!(
        event["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("evt_"))
    );
    assert_eq!(hooks[0].event_id, event["id"].as_str().unwrap());
    assert!(
        signed_right(&system, &hooks[0]),
        "signature {}",
        hooks[0].signature
    );
    // One event for the three messages; a newer message, another delay,
    // another event.
    an.send_and_ack(conversation, "a-4", "tin 4").await;
    let hooks = received(&receiver, 2).await;
    assert_eq!(hooks[1].json["unread_count"], 4);
    assert_ne!(hooks[1].json["id"], hooks[0].json["id"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.hooks().len(), 2, "nothing more was sent");
    // An, the sender, was online throughout: nothing for An.
    assert!(receiver.hooks().iter().all(|h| h.json["user_id"] == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_when_the_recipient_read_came_online_left_or_blocked_the_sender() {
    let receiver = Receiver::start().await;
    let system = TestSystem::start_with(2, 1, with_webhook(&receiver.url)).await;
    let with_binh = system.direct(1, 2).await;
    let with_chi = system.direct(1, 3).await;
    let group = system.group(1, &[4]).await;
    let with_em = system.direct(1, 5).await;
    let mut an = system.connect(0, 1).await;
    for (conversation, id) in [
        (with_binh, "b"),
        (with_chi, "c"),
        (group, "d"),
        (with_em, "e"),
    ] {
        an.send_and_ack(conversation, id, "alo").await;
    }
    eventually("four scheduled", async || {
        counter(&system, 0, "notify_scheduled_total").await == 4
    })
    .await;
    // Within the delay: Bình reads (and leaves again), Chi comes online and
    // stays, Dũng leaves the group, Em blocks An.
    let mut binh = system.connect(1, 2).await;
    binh.send_json(json!({"type": "read", "conversation_id": with_binh, "seq": 1}))
        .await;
    binh.drain().await;
    binh.close().await;
    let _chi = system.connect(1, 3).await;
    let token = system.token(4).await;
    let (status, _) = system
        .post(
            0,
            &format!("/api/conversations/{group}/leave"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(status, 204);
    let token = system.token(5).await;
    system
        .put(0, "/api/blocks/1", Some(&token), json!({}))
        .await;

    eventually("all four suppressed", async || {
        let mut total = 0;
        for reason in ["read", "online", "left", "blocked"] {
            total += counter(
                &system,
                0,
                &format!("notify_suppressed_total{{reason=\"{reason}\"}}"),
            )
            .await;
        }
        total == 4
    })
    .await;
    for reason in ["read", "online", "left", "blocked"] {
        let series = format!("notify_suppressed_total{{reason=\"{reason}\"}}");
        assert_eq!(counter(&system, 0, &series).await, 1, "{reason}");
    }
    assert!(receiver.hooks().is_empty(), "{:?}", receiver.hooks());
    assert_eq!(counter(&system, 0, "notify_scheduled_total").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_the_same_event_again_until_it_answers() {
    let receiver = Receiver::start().await;
    receiver.fail_next(2, 500);
    let system = TestSystem::start_with(2, 1, with_webhook(&receiver.url)).await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    an.send_and_ack(conversation, "a-1", "alo").await;
    let hooks = received(&receiver, 3).await;
    assert!(
        hooks
            .windows(2)
            .all(|w| w[0].event_id == w[1].event_id && w[0].body == w[1].body)
    );
    assert!(hooks.iter().all(|h| signed_right(&system, h)));
    eventually("counted as sent after two retries", async || {
        counter(&system, 0, "notify_sent_total").await == 1
    })
    .await;
    assert_eq!(counter(&system, 0, "notify_retried_total").await, 2);
    assert_eq!(counter(&system, 0, "notify_failed_total").await, 2);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(receiver.hooks().len(), 3, "nothing after the 2xx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_then_up_gets_everything() {
    // Nothing listens on the webhook's port at first (held, not listening).
    let (socket, port) = Receiver::reserve();
    let url = format!("http://127.0.0.1:{port}/hooks/chat");
    let system = TestSystem::start_with(2, 1, with_webhook(&url)).await;
    let with_binh = system.direct(1, 2).await;
    let with_chi = system.direct(1, 3).await;
    let mut an = system.connect(0, 1).await;
    an.send_and_ack(with_binh, "b", "alo Bình").await;
    an.send_and_ack(with_chi, "c", "alo Chi").await;
    eventually("attempts refused", async || {
        counter(&system, 0, "notify_failed_total").await >= 4
    })
    .await;
    let receiver = Receiver::start_at(socket);
    let hooks = received(&receiver, 2).await;
    assert_eq!(recipients(&hooks, true), [2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_notifier_loses_nothing_pending_or_queued_and_sends_each_once() {
    let receiver = Receiver::start().await;
    let mut system = TestSystem::start_services(2, 1, false, with_webhook(&receiver.url)).await;
    let settings = system.settings.clone();
    let first = system.start_presence_with(settings.clone()).await;
    let with_binh = system.direct(1, 2).await;
    let with_chi = system.direct(1, 3).await;
    let mut an = system.connect(0, 1).await;
    an.send_and_ack(with_binh, "b", "alo Bình").await;
    eventually("scheduled", async || {
        counter(&system, first, "notify_scheduled_total").await == 1
    })
    .await;
    // Stopped before it was due; a message stored while no notifier runs
    // waits in the notify queue.
    system.stop_presence(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    an.send_and_ack(with_chi, "c", "alo Chi").await;
    assert!(receiver.hooks().is_empty());
    let second = system.start_presence_with(settings).await;
    let hooks = received(&receiver, 2).await;
    assert_eq!(recipients(&hooks, false), [2, 3], "one event each");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.hooks().len(), 2, "each once");
    assert_eq!(counter(&system, second, "notify_sent_total").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_keeps_failing_is_dead_lettered_after_retry_for() {
    let receiver = Receiver::start().await;
    receiver.fail_next(usize::MAX, 503);
    let url = receiver.url.clone();
    let system = TestSystem::start_with(2, 1, move |s| {
        s.notify.webhook_url = url;
        s.notify.retry_for = Duration::from_millis(1500);
    })
    .await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    an.send_and_ack(conversation, "a-1", "alo").await;
    eventually("dead-lettered", async || {
        counter(&system, 0, "notify_dead_lettered_total").await == 1
    })
    .await;
    let attempts = receiver.hooks().len();
    assert!(attempts >= 2, "{attempts}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        receiver.hooks().len(),
        attempts,
        "no attempt after the dead letter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_webhook_there_is_no_notify_queue_and_no_event() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    an.send_and_ack(conversation, "a-1", "alo").await;
    let conn = lapin::Connection::connect(
        &system.settings.amqp.url,
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let topo = chat_shared::amqp::Topology::new(&system.settings.amqp);
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(topo.notify_queue().into(), passive, Default::default())
        .await;
    assert!(declared.is_err(), "the notify queue exists: {declared:?}");
    let text: Value = system.presence_metrics_text(0).await.into();
    assert!(
        !text
            .as_str()
            .unwrap_or_default()
            .contains("notify_scheduled")
    );
}
