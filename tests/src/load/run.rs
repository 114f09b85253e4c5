//! The measured part: an open-loop sender (message i is due at i / rate
//! seconds, whatever the server does, so a slow server cannot slow the
//! offered load and hide its latency), and one reader per connection that
//! timestamps acks and deliveries against the time each message was due.

use super::Scenario;
use super::setup::Socket;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::json;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Who talks where: `conversation_of[user index]`, and each conversation's members.
pub struct Plan {
    pub conversation_of: Vec<i64>,
    pub members: HashMap<i64, Vec<usize>>,
}

/// Counters the progress line reads while the run goes on.
#[derive(Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub errors: AtomicU64,
    pub delivered: AtomicU64,
}

/// A message the server acknowledged.
pub struct Acked {
    pub id: String,
    pub conversation: i64,
    pub client_msg_id: String,
}

/// What one connection saw.
pub struct ReaderResult {
    pub user: usize,
    pub ack_us: Histogram<u64>,
    pub delivery_us: Histogram<u64>,
    pub acked: Vec<Acked>,
    /// Message id -> how many times it arrived as a `message` frame.
    pub received: HashMap<String, u32>,
    pub errors: BTreeMap<String, u64>,
    /// When the last counted ack / delivery arrived (us since the start).
    pub last_ack_us: u64,
    pub last_delivery_us: u64,
}

pub struct RunResult {
    pub readers: Vec<ReaderResult>,
    pub sent: u64,
    pub measured_sent: u64,
    /// How late the generator handed each measured message to its socket.
    pub lateness_us: Histogram<u64>,
    pub elapsed: Duration,
}

fn histogram() -> Histogram<u64> {
    // 1 us .. 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3)
        .unwrap_or_else(|e| panic!("histogram bounds: {e}"))
}

/// The body carries when the message was due (us since the start) and
/// whether it counts (after the warm-up): "<due_us> <m|w>".
fn body(due_us: u64, measured: bool) -> String {
    format!("{due_us} {}", if measured { 'm' } else { 'w' })
}

/// The parts of an `ack` or `message` frame the readers look at, borrowed
/// from the text (the generator shares the CPU with the system it measures:
/// a frame is read without building a whole JSON tree).
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    message: Option<FrameMessage<'a>>,
}

/// Any other frame (an `error`'s `message` is text, not a message).
#[derive(Deserialize)]
struct OtherFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct FrameMessage<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    conversation_id: i64,
    #[serde(borrow)]
    client_msg_id: Cow<'a, str>,
    #[serde(borrow)]
    body: Cow<'a, str>,
}

fn parse_body(body: &str) -> Option<(u64, bool)> {
    let (due, kind) = body.split_once(' ')?;
    Some((due.parse().ok()?, kind == "m"))
}

pub async fn run(scenario: &Scenario, plan: &Plan, sockets: Vec<Socket>) -> RunResult {
    let base = Instant::now();
    let live = Arc::new(Live::default());
    let (stop_tx, stop) = watch::channel(false);
    let mut writers = Vec::with_capacity(sockets.len());
    let mut readers = Vec::with_capacity(sockets.len());
    for (user, socket) in sockets.into_iter().enumerate() {
        let (mut sink, stream) = socket.split();
        // Unbounded on purpose: the offered load must not wait for the server.
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if sink.send(WsMessage::Text(frame.into())).await.is_err() {
                    break;
                }
            }
        });
        writers.push(tx);
        readers.push(tokio::spawn(read(
            stream,
            user,
            base,
            live.clone(),
            stop.clone(),
        )));
    }

    let users = writers.len() as u64;
    let total = ((scenario.warmup_secs + scenario.duration_secs) * scenario.rate) as u64;
    // The pacer is a thread of its own that sleeps until each message is
    // due (tokio's timer ticks in whole milliseconds, which alone added up to
    // a millisecond to every latency at 1,000 msg/s).
    let pacer = {
        let pace = Pace {
            rate: scenario.rate,
            warmup_us: scenario.warmup_secs * 1e6,
            total,
            conversation_of: plan.conversation_of.clone(),
        };
        let live = live.clone();
        tokio::task::spawn_blocking(move || pace.run(base, &writers, &live))
    };
    let (measured_sent, lateness_us) = match pacer.await {
        Ok(paced) => paced,
        Err(e) => panic!("the pacer thread failed: {e}"),
    };
    let mut last_progress = Instant::now();

    // Wait for the stragglers: every send answered, every delivery in.
    let expected_deliveries: u64 = (0..total)
        .map(|i| {
            plan.members
                .get(&plan.conversation_of[(i % users) as usize])
                .map_or(0, |m| m.len() as u64 - 1)
        })
        .sum();
    let drain_until = Instant::now() + Duration::from_secs_f64(scenario.drain_secs);
    while Instant::now() < drain_until {
        let answered = live.acked.load(Ordering::Relaxed) + live.errors.load(Ordering::Relaxed);
        if answered >= total && live.delivered.load(Ordering::Relaxed) >= expected_deliveries {
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            progress(base, &live);
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress(base, &live);
    let elapsed = base.elapsed();
    let _ = stop_tx.send(true);
    let mut results = Vec::with_capacity(readers.len());
    for reader in readers {
        if let Ok(result) = reader.await {
            results.push(result);
        }
    }
    RunResult {
        readers: results,
        sent: total,
        measured_sent,
        lateness_us,
        elapsed,
    }
}

/// The open-loop schedule: message `i` is due at `i / rate` seconds, from
/// user `i mod users`.
struct Pace {
    rate: f64,
    warmup_us: f64,
    total: u64,
    conversation_of: Vec<i64>,
}

impl Pace {
    /// Hands every message to its user's writer when it is due; returns how
    /// many were measured and how late the generator itself was (due -> handed
    /// over), which is part of every latency it reports.
    fn run(
        &self,
        base: Instant,
        writers: &[mpsc::UnboundedSender<String>],
        live: &Live,
    ) -> (u64, Histogram<u64>) {
        let users = writers.len() as u64;
        let mut lateness = histogram();
        let mut measured_sent = 0;
        let mut last_progress = Instant::now();
        for next in 0..self.total {
            let due_us = (next as f64 / self.rate * 1e6) as u64;
            let due = base + Duration::from_micros(due_us);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let measured = due_us as f64 >= self.warmup_us;
            let user = (next % users) as usize;
            let frame = json!({
                "type": "send",
                "conversation_id": self.conversation_of[user],
                "client_msg_id": format!("l{next}"),
                "body": body(due_us, measured),
            });
            let _ = writers[user].send(frame.to_string());
            live.sent.fetch_add(1, Ordering::Relaxed);
            if measured {
                measured_sent += 1;
                let late = (base.elapsed().as_micros() as u64).saturating_sub(due_us);
                let _ = lateness.record(late.max(1));
            }
            if last_progress.elapsed() >= Duration::from_secs(1) {
                progress(base, live);
                last_progress = Instant::now();
            }
        }
        (measured_sent, lateness)
    }
}

fn progress(base: Instant, live: &Live) {
    eprintln!(
        "t={:>6.1}s sent={} acked={} delivered={} errors={}",
        base.elapsed().as_secs_f64(),
        live.sent.load(Ordering::Relaxed),
        live.acked.load(Ordering::Relaxed),
        live.delivered.load(Ordering::Relaxed),
        live.errors.load(Ordering::Relaxed),
    );
}

async fn read(
    mut stream: futures_util::stream::SplitStream<Socket>,
    user: usize,
    base: Instant,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
) -> ReaderResult {
    let mut result = ReaderResult {
        user,
        ack_us: histogram(),
        delivery_us: histogram(),
        acked: Vec::new(),
        received: HashMap::new(),
        errors: BTreeMap::new(),
        last_ack_us: 0,
        last_delivery_us: 0,
    };
    loop {
        let frame = tokio::select! {
            _ = stop.changed() => break,
            frame = stream.next() => frame,
        };
        let Some(Ok(WsMessage::Text(text))) = frame else {
            if matches!(frame, None | Some(Err(_))) {
                break;
            }
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Frame>(&text) else {
            if let Ok(other) = serde_json::from_str::<OtherFrame>(&text)
                && other.kind == "error"
            {
                let code = other.code.as_deref().unwrap_or("?").to_owned();
                *result.errors.entry(code).or_insert(0) += 1;
                live.errors.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        };
        let now_us = base.elapsed().as_micros() as u64;
        let due = frame.message.as_ref().and_then(|m| parse_body(&m.body));
        match (&*frame.kind, frame.message) {
            ("ack", Some(message)) => {
                if let Some((due_us, true)) = due {
                    let _ = result.ack_us.record(now_us.saturating_sub(due_us).max(1));
                    result.last_ack_us = now_us;
                }
                result.acked.push(Acked {
                    id: message.id.into_owned(),
                    conversation: message.conversation_id,
                    client_msg_id: message.client_msg_id.into_owned(),
                });
                live.acked.fetch_add(1, Ordering::Relaxed);
            }
            ("message", Some(message)) => {
                let id = message.id.into_owned();
                let seen = result.received.entry(id).or_insert(0);
                *seen += 1;
                if *seen == 1
                    && let Some((due_us, true)) = due
                {
                    let _ = result
                        .delivery_us
                        .record(now_us.saturating_sub(due_us).max(1));
                    result.last_delivery_us = now_us;
                }
                live.delivered.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_frame_is_read_with_its_message() {
        let text = r#"{"type":"ack","client_msg_id":"l7","message":{"id":"901","conversation_id":3,"seq":1,"sender_id":4,"client_msg_id":"l7","body":"1500 m","created_at":"2026-11-26T12:00:00.000Z"}}"#;
        let frame: Frame = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(frame.kind, "ack");
        let message = frame.message.unwrap_or_else(|| panic!("no message"));
        assert_eq!(message.id, "901");
        assert_eq!(message.conversation_id, 3);
        assert_eq!(parse_body(&message.body), Some((1500, true)));
    }

    #[test]
    fn an_error_frame_is_read_by_the_fallback_with_its_code() {
        let text =
            r#"{"type":"error","code":"rate_limited","message":"slow down","retry_after_ms":100}"#;
        assert!(serde_json::from_str::<Frame>(text).is_err());
        let other: OtherFrame = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(other.kind, "error");
        assert_eq!(other.code.as_deref(), Some("rate_limited"));
    }

    #[test]
    fn frames_without_a_message_are_read_and_ignored() {
        let frame: Frame = serde_json::from_str(
            r#"{"type":"presence","user_id":2,"status":"online","last_seen":null}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(frame.kind, "presence");
        assert!(frame.message.is_none());
    }
}
