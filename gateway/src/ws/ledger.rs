//! The sends a session has queued for the broker and not seen answered:
//! the one place that decides whether a send still needs an answer, and
//! that words the gateway's own answers. An answer from the persister (ack
//! or refusal) settles a send; a send the broker did not take, or that
//! nothing answered within `gateway.send_timeout_ms`, is answered
//! `unavailable` here, once; so is a send the publisher could not even
//! queue (shutting down). Resending with the same `client_msg_id` is always
//! safe: it is never stored twice.

use axum::extract::ws::Utf8Bytes;
use chat_shared::ids::ClientMsgId;
use chat_shared::protocol::{ErrorCode, ServerFrame};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub struct PendingSends {
    /// When each unanswered send was queued.
    sent: HashMap<ClientMsgId, Instant>,
    timeout: Duration,
    capacity: usize,
}

impl PendingSends {
    /// A ledger of at most `capacity` sends, each answered after `timeout`.
    pub fn new(timeout: Duration, capacity: usize) -> Self {
        Self {
            sent: HashMap::new(),
            timeout,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Whether `id` may not be sent now: the ledger is full and `id` is
    /// not a resend of a send it already holds.
    pub fn is_full_for(&self, id: &ClientMsgId) -> bool {
        self.sent.len() >= self.capacity && !self.sent.contains_key(id)
    }

    /// `id` was queued at `now`; returns when it times out. A resend of a
    /// pending send starts its wait again.
    pub fn insert(&mut self, id: ClientMsgId, now: Instant) -> Instant {
        self.sent.insert(id, now);
        now + self.timeout
    }

    /// The persister answered `id` (the answer is written whatever this
    /// says): how long it waited, if it was still pending.
    pub fn settle(&mut self, id: &ClientMsgId, now: Instant) -> Option<Duration> {
        let sent = self.sent.remove(id)?;
        Some(now.saturating_duration_since(sent))
    }

    /// The broker did not take `id`: `unavailable`, unless its timeout (or
    /// an answer) has settled it already.
    pub fn refuse(&mut self, id: &ClientMsgId) -> Option<Utf8Bytes> {
        self.sent.remove(id).map(|_| unavailable(id))
    }

    /// The answer to a send the publisher could not queue (it has stopped):
    /// it never entered the ledger.
    pub fn not_taken(id: &ClientMsgId) -> Utf8Bytes {
        answer(id, "message not accepted, send it again")
    }

    /// When the oldest pending send times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.sent.values().min().map(|sent| *sent + self.timeout)
    }

    /// Removes every send whose timeout has passed at `now`, and answers
    /// each `unavailable`.
    pub fn expired(&mut self, now: Instant) -> Vec<Utf8Bytes> {
        let timeout = self.timeout;
        let mut answers = Vec::new();
        self.sent.retain(|id, sent| {
            let due = now.saturating_duration_since(*sent) >= timeout;
            if due {
                answers.push(unavailable(id));
            }
            !due
        });
        answers
    }
}

/// The answer to a send the broker did not take, or that was not acked in
/// time: resending it with the same `client_msg_id` is always safe.
fn unavailable(client_msg_id: &ClientMsgId) -> Utf8Bytes {
    answer(
        client_msg_id,
        "message not confirmed in time, send it again",
    )
}

fn answer(client_msg_id: &ClientMsgId, message: &str) -> Utf8Bytes {
    crate::outbound::encode(&ServerFrame::Error {
        code: ErrorCode::Unavailable,
        message: message.to_owned(),
        client_msg_id: Some(client_msg_id.as_str().to_owned()),
        retry_after_ms: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn id(s: &str) -> ClientMsgId {
        ClientMsgId::try_from(s.to_owned()).unwrap()
    }

    fn answered_id(frame: &Utf8Bytes) -> String {
        let value: Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(value["code"], "unavailable", "{value}");
        value["client_msg_id"].as_str().unwrap().to_owned()
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[test]
    fn a_send_times_out_on_its_own_deadline_and_is_answered_once() {
        let t0 = Instant::now();
        let mut ledger = PendingSends::new(TIMEOUT, 8);
        assert_eq!(ledger.insert(id("a"), t0), t0 + TIMEOUT);
        ledger.insert(id("b"), t0 + Duration::from_secs(3));
        assert_eq!(ledger.next_deadline(), Some(t0 + TIMEOUT));

        assert!(ledger.expired(t0 + Duration::from_secs(9)).is_empty());
        let answers = ledger.expired(t0 + TIMEOUT);
        assert_eq!(answers.iter().map(answered_id).collect::<Vec<_>>(), ["a"]);
        assert_eq!(ledger.next_deadline(), Some(t0 + Duration::from_secs(13)));

        // Answered by its timeout: a late refusal writes nothing more.
        assert!(ledger.refuse(&id("a")).is_none());
        let answers = ledger.expired(t0 + Duration::from_secs(13));
        assert_eq!(answers.iter().map(answered_id).collect::<Vec<_>>(), ["b"]);
        assert!(ledger.is_empty());
        assert_eq!(ledger.next_deadline(), None);
    }

    #[test]
    fn an_answer_settles_a_send_and_says_how_long_it_waited() {
        let t0 = Instant::now();
        let mut ledger = PendingSends::new(TIMEOUT, 8);
        ledger.insert(id("a"), t0);
        let waited = ledger.settle(&id("a"), t0 + Duration::from_millis(7));
        assert_eq!(waited, Some(Duration::from_millis(7)));
        // Settled: it neither times out nor is refused afterwards.
        assert!(ledger.expired(t0 + TIMEOUT).is_empty());
        assert!(ledger.refuse(&id("a")).is_none());
        // A late answer (after the timeout answered it) is not pending.
        assert_eq!(ledger.settle(&id("a"), t0 + TIMEOUT), None);
    }

    #[test]
    fn a_refusal_answers_a_pending_send_unavailable() {
        let t0 = Instant::now();
        let mut ledger = PendingSends::new(TIMEOUT, 8);
        ledger.insert(id("a"), t0);
        let frame = ledger.refuse(&id("a")).unwrap();
        assert_eq!(answered_id(&frame), "a");
        assert!(ledger.refuse(&id("a")).is_none(), "answered once");
        assert!(ledger.expired(t0 + TIMEOUT).is_empty());
    }

    #[test]
    fn a_full_ledger_takes_resends_of_what_it_holds_but_nothing_new() {
        let t0 = Instant::now();
        let mut ledger = PendingSends::new(TIMEOUT, 2);
        ledger.insert(id("a"), t0);
        assert!(!ledger.is_full_for(&id("b")));
        ledger.insert(id("b"), t0);
        assert!(ledger.is_full_for(&id("c")));
        assert!(!ledger.is_full_for(&id("a")));
        // A resend starts the wait again.
        ledger.insert(id("a"), t0 + Duration::from_secs(5));
        let answers = ledger.expired(t0 + TIMEOUT);
        assert_eq!(answers.iter().map(answered_id).collect::<Vec<_>>(), ["b"]);
        assert_eq!(ledger.len(), 1);
    }
}
