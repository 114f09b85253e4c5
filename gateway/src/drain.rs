//! Lame-duck drain (`gateway.drain_ms`). A gateway that stops has stopped
//! accepting first; then, instead of closing every session at once (each of
//! its clients reconnecting to the other gateways within the same quarter
//! of a second: authentication, presence and history catch-up for all of
//! them at once), it asks its sessions to close one after another at an
//! even rate over the drain window. Each session so asked answers its sends
//! in flight, then closes with 1012 (`ws::session`), and its client
//! reconnects elsewhere; the others keep working meanwhile. What is left
//! when the window ends (a session too far behind to take the request) is
//! closed by the shutdown signal that follows, as without a drain.

use crate::hub::registry::SessionHandle;
use crate::outbound::Outbound;
use std::time::Duration;
use tokio::time::Instant;

/// When the `i`-th of `n` sessions is asked to close, from the drain's
/// start: evenly, the first at once, the last one step before the end.
pub fn close_at(i: usize, n: usize, window: Duration) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    window.mul_f64(i as f64 / n as f64)
}

/// Asks each of `sessions` to close at its time over `window`; returns
/// once every one was asked.
pub async fn close_evenly(sessions: Vec<SessionHandle>, window: Duration) {
    let start = Instant::now();
    let n = sessions.len();
    for (i, session) in sessions.into_iter().enumerate() {
        tokio::time::sleep_until(start + close_at(i, n, window)).await;
        // A session whose queue is full is behind anyway: the shutdown
        // signal after the window closes it.
        let _ = session.tx.try_send(Outbound::Restart);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::registry::tests::handle;

    #[test]
    fn the_close_times_are_even_from_the_start_to_one_step_before_the_end() {
        let window = Duration::from_secs(10);
        let times: Vec<Duration> = (0..4).map(|i| close_at(i, 4, window)).collect();
        assert_eq!(
            times,
            [0, 2500, 5000, 7500].map(Duration::from_millis).to_vec()
        );
        assert_eq!(close_at(0, 0, window), Duration::ZERO);
        assert_eq!(close_at(0, 1, window), Duration::ZERO);
    }

    /// 200 sessions over a 10 s window: each is asked once, in turn, and
    /// the requests spread over at least 80 % of the window (here 99.5 %),
    /// never more than one step's worth in any 50 ms.
    #[tokio::test(start_paused = true)]
    async fn sessions_are_asked_to_close_one_by_one_over_the_window() {
        let window = Duration::from_secs(10);
        let (handles, inboxes): (Vec<_>, Vec<_>) =
            (0..200).map(|i| handle(&format!("s{i}"))).unzip();
        let start = Instant::now();
        let drain = tokio::spawn(close_evenly(handles, window));
        let mut asked_at = Vec::new();
        for mut inbox in inboxes {
            let out = inbox.recv().await.expect("asked to close");
            assert!(matches!(out, Outbound::Restart));
            asked_at.push(start.elapsed());
        }
        drain.await.expect("drain");
        let (first, last) = (asked_at[0], asked_at[199]);
        assert_eq!(first, Duration::ZERO);
        assert!(
            last - first >= window.mul_f64(0.8),
            "spread over {:?}",
            last - first
        );
        assert!(last < window);
        for pair in asked_at.windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_millis(50), "{asked_at:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_whose_queue_is_full_does_not_hold_up_the_others() {
        let (full, _full_inbox) = handle("full");
        while full.tx.try_send(Outbound::Frame("x".into())).is_ok() {}
        let (other, mut other_inbox) = handle("other");
        close_evenly(vec![full, other], Duration::from_secs(2)).await;
        assert!(matches!(other_inbox.try_recv(), Ok(Outbound::Restart)));
    }
}
