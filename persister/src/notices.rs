//! Stored notices for the unread webhook (only while one is configured):
//! the announcer hands each commit's notices here, and one task publishes
//! what has gathered at most every [`GATHER_FOR`] as one persistent message
//! to the durable notify queue. Each commit's batch is acked only once the
//! message holding its notices is confirmed (the acker waits for the
//! answer), so no notice is lost, and the broker, the notifier and Postgres
//! see a few messages a second however many commits there are.

use chat_shared::amqp::{ConfirmedPublisher, Outgoing};
use chat_shared::bus::{self, StoredNotice};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long notices gather before they are published.
pub const GATHER_FOR: Duration = Duration::from_millis(100);
/// Most notices in one message.
const MOST: usize = 5_000;

/// Whether the notices handed over were confirmed by the broker.
pub type Confirmed = oneshot::Receiver<bool>;

#[derive(Clone)]
pub struct Notices {
    tx: mpsc::Sender<(Vec<StoredNotice>, oneshot::Sender<bool>)>,
}

impl Notices {
    /// Starts the publishing task, to `queue`.
    pub fn spawn(publisher: ConfirmedPublisher, queue: String) -> Self {
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(run(rx, publisher, queue));
        Self { tx }
    }

    /// Hands over one commit's notices; the answer comes once they are
    /// confirmed (`false`: they were not, or the task has ended).
    pub async fn submit(&self, notices: Vec<StoredNotice>) -> Confirmed {
        let (answer, confirmed) = oneshot::channel();
        if let Err(mpsc::error::SendError((_, answer))) = self.tx.send((notices, answer)).await {
            let _ = answer.send(false);
        }
        confirmed
    }
}

async fn run(
    mut rx: mpsc::Receiver<(Vec<StoredNotice>, oneshot::Sender<bool>)>,
    publisher: ConfirmedPublisher,
    queue: String,
) {
    while let Some(first) = rx.recv().await {
        let mut gathered = vec![first];
        let mut count = gathered[0].0.len();
        let until = tokio::time::Instant::now() + GATHER_FOR;
        while count < MOST {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(more)) => {
                    count += more.0.len();
                    gathered.push(more);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let (notices, answers): (Vec<Vec<StoredNotice>>, Vec<oneshot::Sender<bool>>) =
            gathered.into_iter().unzip();
        let payload = bus::encode(&notices.concat());
        let message = Outgoing {
            persistent: true,
            ..Outgoing::to_queue(&queue, &payload)
        };
        let confirmed = match publisher.start(message).await {
            Ok(pending) => pending.wait().await,
            Err(e) => Err(e),
        };
        if let Err(e) = &confirmed {
            tracing::warn!(error = %e, notices = count, "stored notices not confirmed: their batches go back to their queues");
        }
        for answer in answers {
            let _ = answer.send(confirmed.is_ok());
        }
    }
}
