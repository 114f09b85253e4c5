//! A watch for lapin's automatic recovery staying stuck. After a broker
//! restart lapin was seen to stay `Reconnecting` for good, in every
//! service at once or in one (docs/reliability.md; upstream
//! amqp-rs/lapin#450): nothing but a new connection helps. So while a
//! service's connection is down, [`watch_recovery`] tries a connection of
//! its own now and then; when the broker accepts it twice, [`CONFIRM`]
//! apart, and the service's connection is still down, the client is
//! judged stuck and the service starts afresh in its process
//! ([`crate::service::restarting`]): new connections, channels, consumers
//! and (for a gateway) a new queue. An outage is not mistaken for it: the
//! probes fail while the broker is away.

use crate::config::AmqpSettings;
use lapin::{Channel, Connection, ConnectionProperties};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Down this long before the first probe (lapin's own retries come every
/// 1-2 s: a short cut never gets this far).
const PROBE_AFTER: Duration = Duration::from_secs(5);
/// Between probes while the broker refuses them.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// From the first probe the broker accepted to the one that confirms the
/// client stuck: long enough for lapin to reconnect and replay its
/// topology if it still can.
const CONFIRM: Duration = Duration::from_secs(4);
/// How long a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a service ended so that it can start afresh.
#[derive(Debug, thiserror::Error)]
#[error(
    "the AMQP client stayed disconnected while the broker accepted new connections \
     (lapin's recovery stuck)"
)]
pub struct RecoveryStuck;

/// What the watch decides on a tick.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Wait,
    Probe,
}

/// The rules, apart from the clock and the broker.
#[derive(Debug, Default)]
struct Judge {
    down_since: Option<Instant>,
    /// When the broker first accepted a probe in this outage.
    accepted: Option<Instant>,
    next_probe: Option<Instant>,
}

impl Judge {
    fn tick(&mut self, connected: bool, now: Instant) -> Next {
        if connected {
            *self = Judge::default();
            return Next::Wait;
        }
        let since = *self.down_since.get_or_insert(now);
        if now.duration_since(since) < PROBE_AFTER || self.next_probe.is_some_and(|at| now < at) {
            return Next::Wait;
        }
        Next::Probe
    }

    /// A probe's outcome at `now`; `true`: the client is stuck.
    fn probed(&mut self, accepted: bool, now: Instant) -> bool {
        if !accepted {
            self.accepted = None;
            self.next_probe = Some(now + PROBE_EVERY);
            return false;
        }
        let first = *self.accepted.get_or_insert(now);
        if now.duration_since(first) >= CONFIRM {
            return true;
        }
        self.next_probe = Some(first + CONFIRM);
        false
    }
}

/// Raises `stuck` (once, for good) when `conns` or `channels` stay down
/// while the broker of `settings` accepts new connections.
pub async fn watch_recovery(
    conns: Vec<Arc<Connection>>,
    channels: Vec<Channel>,
    settings: AmqpSettings,
    stuck: tokio::sync::watch::Sender<bool>,
) {
    let connected = || super::connect::all_connected(&conns, &channels);
    let mut judge = Judge::default();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if judge.tick(connected(), Instant::now()) == Next::Wait {
            continue;
        }
        let accepted = probe(&settings).await;
        if connected() {
            judge = Judge::default();
            continue;
        }
        if judge.probed(accepted, Instant::now()) {
            tracing::error!("{RecoveryStuck}: starting afresh");
            let _ = stuck.send(true);
            return;
        }
    }
}

/// Whether the broker accepts a new connection (then closed at once).
async fn probe(settings: &AmqpSettings) -> bool {
    let Ok(tls) = crate::tls::amqp_config(settings) else {
        return false;
    };
    let Ok(runtime) = lapin::runtime::default_runtime() else {
        return false;
    };
    let props = ConnectionProperties::default().with_connection_name("recovery probe".into());
    let connecting = Connection::connect_with_config(&settings.url, props, tls, runtime);
    match tokio::time::timeout(PROBE_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "probe".into()).await;
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_short_outage_is_never_probed() {
        let (mut judge, t0) = (Judge::default(), Instant::now());
        assert_eq!(judge.tick(false, t0), Next::Wait);
        assert_eq!(judge.tick(false, at(t0, 4_900)), Next::Wait);
        assert_eq!(judge.tick(true, at(t0, 4_950)), Next::Wait);
        // down again: counted from now
        assert_eq!(judge.tick(false, at(t0, 6_000)), Next::Wait);
        assert_eq!(judge.tick(false, at(t0, 10_900)), Next::Wait);
        assert_eq!(judge.tick(false, at(t0, 11_000)), Next::Probe);
    }

    #[test]
    fn a_broker_still_away_is_an_outage_however_long() {
        let (mut judge, t0) = (Judge::default(), Instant::now());
        judge.tick(false, t0);
        for second in 5..600 {
            let now = at(t0, second * 1_000);
            assert_eq!(judge.tick(false, now), Next::Probe, "probed every second");
            assert!(!judge.probed(false, now));
            assert_eq!(judge.tick(false, at(t0, second * 1_000 + 500)), Next::Wait);
        }
    }

    #[test]
    fn a_client_that_stays_down_while_the_broker_accepts_twice_is_stuck() {
        let (mut judge, t0) = (Judge::default(), Instant::now());
        judge.tick(false, t0);
        assert_eq!(judge.tick(false, at(t0, 5_000)), Next::Probe);
        assert!(!judge.probed(true, at(t0, 5_100)), "once is not enough");
        assert_eq!(judge.tick(false, at(t0, 9_000)), Next::Wait);
        assert_eq!(judge.tick(false, at(t0, 9_100)), Next::Probe);
        assert!(judge.probed(true, at(t0, 9_200)));
    }

    #[test]
    fn a_client_that_reconnects_after_the_broker_is_back_is_not_stuck() {
        let (mut judge, t0) = (Judge::default(), Instant::now());
        judge.tick(false, t0);
        judge.tick(false, at(t0, 5_000));
        assert!(!judge.probed(true, at(t0, 5_100)));
        assert_eq!(judge.tick(true, at(t0, 6_500)), Next::Wait, "lapin made it");
        assert_eq!(
            judge.tick(false, at(t0, 9_100)),
            Next::Wait,
            "a new outage starts over"
        );
    }

    #[test]
    fn a_broker_that_goes_away_again_between_probes_starts_the_count_over() {
        let (mut judge, t0) = (Judge::default(), Instant::now());
        judge.tick(false, t0);
        judge.tick(false, at(t0, 5_000));
        assert!(!judge.probed(true, at(t0, 5_100)));
        assert_eq!(judge.tick(false, at(t0, 9_100)), Next::Probe);
        assert!(
            !judge.probed(false, at(t0, 9_200)),
            "refused: an outage again"
        );
        assert_eq!(judge.tick(false, at(t0, 10_200)), Next::Probe);
        assert!(
            !judge.probed(true, at(t0, 10_300)),
            "accepted once more: count again"
        );
        assert_eq!(judge.tick(false, at(t0, 14_300)), Next::Probe);
        assert!(judge.probed(true, at(t0, 14_300)));
    }
}
