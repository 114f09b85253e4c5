//! What a persister holds in memory is bounded in bytes
//! (`persister.max_inflight_bytes`, issue 22), whatever the size of the
//! messages waiting for it: a backlog of large messages is taken in, stored
//! and acked a bounded slice at a time.
//!
//! A test binary of its own, not one of `e2e`'s: it moves 640 MB through
//! the gateway, the broker, a persister and Postgres, and `cargo test` runs
//! test binaries one after another, so it never loads the machine beside
//! the end-to-end tests that measure time (the drain's spread, the bind
//! timeouts). Run through `deploy/test.sh` (the servers), or alone:
//! `cargo test -p chat-tests --test memory -- --nocapture`.

use chat_tests::{TestSystem, eventually_within};
use std::time::Duration;

/// The memory limit of a persister pod in k8s/ (`k8s/base/persister.yaml`).
const POD_LIMIT_BYTES: u64 = 512 << 20;
/// 40,000 sends of 16 KB, 640 MB: more than the pod limit, so a persister
/// that took in the whole backlog would be killed (20,000, the issue's
/// figure, fit in 428 MiB even with no bound: see docs/reliability.md).
const USERS: i64 = 200;
const SENDS_EACH: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persister_catches_up_on_40000_sends_of_16_kb_within_its_pod_memory_limit() {
    // 40,000 sends of 16 KB (4,000 four-byte characters, the longest body)
    // pile up while no persister runs: 640 MB in the broker.
    let system = TestSystem::start_with(1, 0, |s| {
        s.gateway.send_timeout = Duration::from_secs(600);
    })
    .await;
    let body = "😀".repeat(4000);
    let mut conversations = Vec::new();
    let mut senders = Vec::new();
    for user in 1..=USERS {
        let conversation = system.direct(user, user + 1000).await;
        conversations.push(conversation);
        let mut client = system.connect(0, user).await;
        let body = body.clone();
        senders.push(tokio::spawn(async move {
            for n in 0..SENDS_EACH {
                client
                    .send_message(conversation, &format!("m{n}"), &body)
                    .await;
            }
            client
        }));
    }
    let mut clients = Vec::new();
    for sender in senders {
        clients.push(sender.await.expect("a sending client"));
    }
    let total = USERS as u64 * SENDS_EACH as u64;
    eventually_within(Duration::from_secs(120), async || {
        let metrics = system.gateway_metrics(0).await;
        let commands = metric(&metrics, "gateway_persist_commands_total");
        let published = metric(&metrics, "gateway_persist_publishes_total");
        let answered = metric(&metrics, "gateway_persist_confirm_seconds_count");
        if commands == total && answered == published {
            Ok(())
        } else {
            Err(format!(
                "{commands} of {total} sends published, {answered} of {published} messages confirmed"
            ))
        }
    })
    .await;
    // Nobody reads the acks and deliveries to come.
    drop(clients);

    // A persister process of its own, with the default settings of the
    // test profile (max_inflight_bytes 128 MiB), so its memory is its own.
    let mut persister = system
        .service_process("chat-persister")
        .env("CHAT_PERSISTER__METRICS_LISTEN", "127.0.0.1:0")
        .spawn()
        .expect("spawning chat-persister");
    let pid = persister.id().expect("the persister's pid");
    let started = std::time::Instant::now();
    let mut db = system.database_connection().await;
    let mut peak = 0;
    eventually_within(Duration::from_secs(300), async || {
        peak = peak.max(peak_rss_bytes(pid));
        if let Ok(Some(status)) = persister.try_wait() {
            panic!("the persister ended ({status}) with a peak RSS of {peak} bytes");
        }
        let stored: i64 = sqlx_count(&mut db, &conversations).await;
        if stored as u64 == total {
            Ok(())
        } else {
            Err(format!("{stored} of {total} stored"))
        }
    })
    .await;
    peak = peak.max(peak_rss_bytes(pid));
    eprintln!(
        "persister peak RSS while catching up on {total} sends of 16 KB: {} MiB (caught up in {:.1} s)",
        peak >> 20,
        started.elapsed().as_secs_f64()
    );
    assert!(
        peak < POD_LIMIT_BYTES,
        "peak RSS {} MiB, over the pod limit of {} MiB",
        peak >> 20,
        POD_LIMIT_BYTES >> 20
    );
}

/// The process's peak resident set (VmHWM), in bytes; 0 once it is gone.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

async fn sqlx_count(db: &mut sea_orm::sqlx::PgConnection, conversations: &[i64]) -> i64 {
    sea_orm::sqlx::query_scalar("SELECT count(*) FROM messages WHERE conversation_id = ANY($1)")
        .bind(conversations)
        .fetch_one(db)
        .await
        .unwrap_or(0)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
