//! Step 2: due notifications are claimed, built (or suppressed), and sent,
//! signed; failures are retried with back-off, then dead-lettered.

use super::Notifier;
use super::event::{Built, Due};
use super::sign::{backoff, signature};
use chat_shared::ids::{ConversationId, UserId};
use chat_shared::time::{self, Timestamp};
use futures_util::future::join_all;
use sea_orm::sqlx::{self, Row};
use std::sync::Arc;
use std::time::Duration;

/// How long past the webhook's timeout a claim lasts: a notifier that died
/// while sending is taken over after this.
const CLAIM_SLACK: Duration = Duration::from_secs(30);
/// Finished rows are kept this long (for looking into what was sent).
const KEEP_DONE_DAYS: i32 = 7;

/// Sends due events every `notify.sweep_ms`, forever.
pub async fn run(notifier: Arc<Notifier>) {
    let mut tick = tokio::time::interval(notifier.settings.sweep);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweeps: u64 = 0;
    loop {
        tick.tick().await;
        // Everything due now, a claim of `concurrency` at a time.
        loop {
            match notifier.claim().await {
                Ok(claimed) => {
                    let full = claimed.len() == notifier.settings.concurrency.get();
                    join_all(claimed.into_iter().map(|due| notifier.attempt(due))).await;
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "due unread notifications not claimed (Postgres)");
                    break;
                }
            }
        }
        sweeps += 1;
        if sweeps % 600 == 1 {
            notifier.forget_done().await;
        }
    }
}

impl Notifier {
    /// Claims up to `notify.concurrency` due notifications.
    async fn claim(&self) -> Result<Vec<Due>, sqlx::Error> {
        let claim_for = (self.settings.timeout + CLAIM_SLACK).as_secs_f64();
        let rows = sqlx::query(
            "UPDATE notifications SET claimed_until = now() + make_interval(secs => $2), updated_at = now()
              WHERE id IN (SELECT id FROM notifications
                            WHERE state IN ('pending', 'delivering') AND next_attempt_at <= now()
                              AND (claimed_until IS NULL OR claimed_until < now())
                            ORDER BY next_attempt_at
                            LIMIT $1
                            FOR UPDATE SKIP LOCKED)
             RETURNING id, user_id, conversation_id, seq, stored_at, due_at, attempts, body",
        )
        .bind(self.settings.concurrency.get() as i64)
        .bind(claim_for)
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Due {
                    id: row.try_get(0)?,
                    user: UserId::new(row.try_get(1)?).map_err(corrupt)?,
                    conversation: ConversationId::new(row.try_get(2)?).map_err(corrupt)?,
                    seq: row.try_get(3)?,
                    stored_at: row.try_get(4)?,
                    due_at: row.try_get(5)?,
                    attempts: row.try_get(6)?,
                    body: row.try_get(7)?,
                })
            })
            .collect()
    }

    /// One attempt at `due`: built at the first, sent, and its outcome
    /// recorded. Errors are logged; the claim runs out and it is tried again.
    async fn attempt(&self, due: Due) {
        if let Err(e) = self.try_attempt(&due).await {
            tracing::warn!(notification.id = due.id, error = %e, "unread notification attempt failed; tried again after its claim");
        }
    }

    async fn try_attempt(&self, due: &Due) -> anyhow::Result<()> {
        let body = match &due.body {
            Some(body) => body.clone(),
            None => {
                match self.build(due).await? {
                    Built::Suppressed(reason) => {
                        self.finish(due.id, "suppressed", reason).await?;
                        self.metrics
                            .suppressed
                            .get_or_create(&[("reason", reason)])
                            .inc();
                        tracing::debug!(notification.id = due.id, user.id = %due.user, reason, "unread notification suppressed");
                        return Ok(());
                    }
                    Built::Event(body) => {
                        sqlx::query("UPDATE notifications SET state = 'delivering', body = $2 WHERE id = $1")
                        .bind(due.id)
                        .bind(&body)
                        .execute(&self.db)
                        .await?;
                        body
                    }
                }
            }
        };
        match self.post(due.id, &body).await {
            Ok(()) => {
                self.finish(due.id, "sent", "2xx").await?;
                self.metrics.sent.inc();
                let late = time::now_millis() - due.due_at;
                let seconds = late.num_milliseconds().max(0) as f64 / 1e3;
                self.metrics.delivery_seconds.observe(seconds);
                tracing::info!(notification.id = due.id, user.id = %due.user, conversation.id = %due.conversation, attempts = due.attempts + 1, "unread event delivered");
            }
            Err(why) => self.failed(due, &why).await?,
        }
        Ok(())
    }

    /// POSTs `body`, signed; `Err` with why unless the answer is a 2xx.
    async fn post(&self, id: i64, body: &str) -> Result<(), String> {
        let now = time::now_millis().timestamp();
        let signed = signature(
            self.settings.webhook_secret.expose().as_bytes(),
            now,
            body.as_bytes(),
        );
        let answer = self
            .http
            .post(&self.settings.webhook_url)
            .header("Content-Type", "application/json")
            .header("X-Chat-Event-Id", format!("evt_{id}"))
            .header("X-Chat-Signature", signed)
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| with_causes(&e))?;
        let status = answer.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", status.as_u16()))
        }
    }

    /// A failed attempt: tried again after the back-off, or dead-lettered
    /// once `notify.retry_for_ms` has passed since it was due.
    async fn failed(&self, due: &Due, why: &str) -> Result<(), sqlx::Error> {
        self.metrics.failed.inc();
        let attempts = due.attempts.saturating_add(1);
        let now = time::now_millis();
        let retry_for =
            chrono::Duration::from_std(self.settings.retry_for).unwrap_or(chrono::Duration::MAX);
        if now - due.due_at >= retry_for {
            self.finish(due.id, "dead", why).await?;
            self.metrics.dead_lettered.inc();
            tracing::error!(notification.id = due.id, user.id = %due.user, attempts, error = why, "unread event dead-lettered: the webhook kept failing for notify.retry_for_ms");
            return Ok(());
        }
        let wait = backoff(
            attempts as u32,
            self.settings.retry_initial,
            self.settings.retry_max,
        );
        let next: Timestamp =
            now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
        sqlx::query(
            "UPDATE notifications SET attempts = $2, next_attempt_at = $3, claimed_until = NULL,
                                      outcome = $4, updated_at = now()
              WHERE id = $1",
        )
        .bind(due.id)
        .bind(attempts)
        .bind(next)
        .bind(why)
        .execute(&self.db)
        .await?;
        self.metrics.retried.inc();
        tracing::warn!(
            notification.id = due.id,
            attempts,
            retry_in_ms = wait.as_millis() as u64,
            error = why,
            "unread event not delivered; retrying"
        );
        Ok(())
    }

    async fn finish(&self, id: i64, state: &str, outcome: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE notifications SET state = $2, outcome = $3, claimed_until = NULL, updated_at = now()
              WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(outcome)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Deletes finished rows older than [`KEEP_DONE_DAYS`] (a bounded number
    /// per call).
    async fn forget_done(&self) {
        let done = sqlx::query(
            "DELETE FROM notifications WHERE id IN (
                 SELECT id FROM notifications
                  WHERE state IN ('sent', 'suppressed', 'dead')
                    AND updated_at < now() - make_interval(days => $1)
                  LIMIT 10000)",
        )
        .bind(KEEP_DONE_DAYS)
        .execute(&self.db)
        .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "old notifications not deleted");
        }
    }
}

/// An error and its causes ("error sending request: connection refused"):
/// reqwest's own text names none.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

fn corrupt(e: chat_shared::ids::InvalidValue) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}
