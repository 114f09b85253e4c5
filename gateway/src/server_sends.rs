//! Sends of the host site's server API (version 2) waiting for their answer.
//! A server-posted message takes a user's path (broker, persister, group
//! commit, fan-out); what differs is who waits for the answer: an HTTP
//! request, not a session. Its command names a session id of its own
//! (`server:<n>`) and asks the persister for a `Reply` on this gateway's
//! queue even when the message is stored (`SendCommand::reply_when_stored`),
//! since no member's fan-out need reach this gateway. The hub hands such
//! replies here, and so does the publisher's refusal of a command.

use chat_shared::bus::SendOutcome;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// The session ids of server sends start with this.
pub const PREFIX: &str = "server:";

/// How a server send was answered.
#[derive(Debug)]
pub enum Answer {
    /// The persister's answer: stored (new or the original), or refused.
    Outcome(SendOutcome),
    /// The broker did not take the command: nothing was stored.
    NotTaken,
}

/// Too many server sends are waiting on this gateway.
#[derive(Debug)]
pub struct Busy;

pub struct ServerSends {
    waiting: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
    next: AtomicU64,
    /// Most sends waiting at once.
    max: usize,
}

/// One send's wait; dropping it (the request gave up) forgets it.
pub struct Waiting {
    pub session_id: String,
    answer: oneshot::Receiver<Answer>,
    sends: Arc<ServerSends>,
}

impl ServerSends {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            waiting: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            max,
        })
    }

    fn waiting(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<Answer>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_server(session_id: &str) -> bool {
        session_id.starts_with(PREFIX)
    }

    /// A new send that will wait for its answer.
    pub fn wait(self: &Arc<Self>) -> Result<Waiting, Busy> {
        let mut waiting = self.waiting();
        if waiting.len() >= self.max {
            return Err(Busy);
        }
        let session_id = format!("{PREFIX}{}", self.next.fetch_add(1, Ordering::Relaxed));
        let (tx, answer) = oneshot::channel();
        waiting.insert(session_id.clone(), tx);
        Ok(Waiting {
            session_id,
            answer,
            sends: self.clone(),
        })
    }

    /// Answers the send `session_id` (a late answer, after the request gave
    /// up, finds nobody).
    pub fn answer(&self, session_id: &str, answer: Answer) {
        if let Some(tx) = self.waiting().remove(session_id) {
            let _ = tx.send(answer);
        }
    }

    pub fn len(&self) -> usize {
        self.waiting().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Waiting {
    /// The answer; `None` when none came (the sender dropped without one).
    pub async fn answer(&mut self) -> Option<Answer> {
        (&mut self.answer).await.ok()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.sends.waiting().remove(&self.session_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_shared::ids::ClientMsgId;
    use chat_shared::protocol::ErrorCode;

    fn refused() -> SendOutcome {
        SendOutcome::Refused {
            code: ErrorCode::Forbidden,
            message: "no".into(),
            client_msg_id: ClientMsgId::try_from("k".to_owned()).unwrap(),
        }
    }

    #[tokio::test]
    async fn each_send_gets_its_own_answer() {
        let sends = ServerSends::new(10);
        let mut first = sends.wait().unwrap();
        let mut second = sends.wait().unwrap();
        assert_ne!(first.session_id, second.session_id);
        assert!(ServerSends::is_server(&first.session_id));
        sends.answer(&second.session_id, Answer::NotTaken);
        sends.answer(&first.session_id, Answer::Outcome(refused()));
        assert!(matches!(first.answer().await, Some(Answer::Outcome(_))));
        assert!(matches!(second.answer().await, Some(Answer::NotTaken)));
        assert!(sends.is_empty());
    }

    #[tokio::test]
    async fn a_send_given_up_is_forgotten_and_its_late_answer_dropped() {
        let sends = ServerSends::new(10);
        let waiting = sends.wait().unwrap();
        let id = waiting.session_id.clone();
        drop(waiting);
        assert!(sends.is_empty());
        sends.answer(&id, Answer::NotTaken); // nobody: no panic
    }

    #[test]
    fn at_most_max_sends_wait() {
        let sends = ServerSends::new(2);
        let _a = sends.wait().unwrap();
        let _b = sends.wait().unwrap();
        assert!(sends.wait().is_err());
    }
}
