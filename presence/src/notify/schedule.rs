//! Step 1: stored messages become pending notifications for the recipients
//! offline at that moment.

use super::Notifier;
use chat_shared::amqp::Inbound;
use chat_shared::bus::StoredNotice;
use chat_shared::ids::UserId;
use lapin::options::BasicAckOptions;
use sea_orm::sqlx;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Consumes the notify queue until the consumer ends. A delivery is acked
/// once its notifications are committed; while Postgres fails, it is tried
/// again (the unacked deliveries hold the queue).
pub async fn run(mut inbound: Inbound, notifier: Arc<Notifier>) {
    while let Some(delivery) = inbound.next::<StoredNotice>().await {
        let (notices, acker) = match delivery {
            Ok(received) => {
                for bad in received.undecodable {
                    tracing::error!(error = %bad.error, notice = %bad.raw, "undecodable stored notice dropped");
                }
                (received.events, received.acker)
            }
            Err(bad) => {
                tracing::error!(error = %bad.error, "undecodable stored notices dropped");
                (Vec::new(), bad.acker)
            }
        };
        let mut wait = Duration::from_millis(100);
        while let Err(e) = notifier.schedule(&notices).await {
            tracing::warn!(error = %e, "unread notifications not scheduled; trying again");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
        let _ = acker.ack(BasicAckOptions::default()).await;
    }
    tracing::error!(
        "the notify queue's consumer ended: no unread notification is scheduled until this presence service restarts"
    );
}

impl Notifier {
    /// One pending notification per recipient offline now and conversation
    /// (a pair that has one already keeps it: its clock started earlier).
    async fn schedule(&self, notices: &[StoredNotice]) -> Result<(), sqlx::Error> {
        let recipients: BTreeSet<UserId> = notices
            .iter()
            .flat_map(|n| n.recipients.iter().copied())
            .collect();
        let online = self.online(&recipients).await;
        let (mut users, mut conversations, mut seqs, mut stored) = (vec![], vec![], vec![], vec![]);
        for notice in notices {
            for recipient in notice.recipients.iter().filter(|r| !online.contains(r)) {
                users.push(recipient.get());
                conversations.push(notice.conversation_id.get());
                seqs.push(notice.seq);
                stored.push(notice.created_at);
            }
        }
        if users.is_empty() {
            return Ok(());
        }
        let delay = self.settings.delay.as_secs_f64();
        let done = sqlx::query(
            "INSERT INTO notifications (user_id, conversation_id, seq, stored_at, due_at, next_attempt_at)
             SELECT u, c, s, t, t + make_interval(secs => $5), t + make_interval(secs => $5)
               FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::timestamptz[]) AS n (u, c, s, t)
              ORDER BY s
             ON CONFLICT (user_id, conversation_id) WHERE state = 'pending' DO NOTHING",
        )
        .bind(&users)
        .bind(&conversations)
        .bind(&seqs)
        .bind(&stored)
        .bind(delay)
        .execute(&self.db)
        .await?;
        self.metrics.scheduled.inc_by(done.rows_affected());
        Ok(())
    }

    /// Those of `users` online now. With Redis unreachable, nobody: better
    /// a notification checked again when due than none.
    async fn online(&self, users: &BTreeSet<UserId>) -> BTreeSet<UserId> {
        if users.is_empty() {
            return BTreeSet::new();
        }
        let mut cmd = redis::cmd("SMISMEMBER");
        cmd.arg(self.keys.online());
        for user in users {
            cmd.arg(user.get());
        }
        let mut redis = self.redis.clone();
        match cmd.query_async::<Vec<bool>>(&mut redis).await {
            Ok(flags) => users
                .iter()
                .zip(flags)
                .filter(|(_, on)| *on)
                .map(|(u, _)| *u)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "who is online unknown (Redis); scheduling for every recipient");
                BTreeSet::new()
            }
        }
    }
}
