//! What a reconnect storm cost (`chat-load chaos`, issue 22's target 7):
//! for every session that had to move, how long from its close until it was
//! back and caught up, and where that time went; for the users that did not
//! move, how late their live deliveries were before, during and after.
//!
//! Times are microseconds from the run's start (the client's one clock).

use serde_json::{Value, json};

/// One session that dropped and came back.
#[derive(Debug, Clone, Default)]
pub struct Move {
    /// When the client saw its connection end.
    pub closed_us: u64,
    /// Connection attempts that failed before the one that held.
    pub failed_attempts: u32,
    /// When the attempt that held began (the back-off is before it).
    pub attempt_us: u64,
    /// When its WebSocket upgrade was answered, and its `hello` came.
    pub upgraded_us: u64,
    pub hello_us: u64,
    /// When the history read after `hello` had filled every gap.
    pub caught_up_us: u64,
    /// History pages that read took.
    pub pages: u32,
}

/// A message of another member that arrived live: when, and how long after
/// it was due to be sent.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub at_us: u64,
    pub latency_us: u64,
}

/// One user's share of the run.
pub struct UserView<'a> {
    pub moves: &'a [Move],
    pub deliveries: &'a [Delivery],
}

/// The storm as one JSON object (`null` when no session moved): the moves
/// whose close falls within two seconds before and ten after the second in
/// which most sessions closed (a client busy reconnecting notices a close
/// late), from `since_us` on (the load's start: a
/// session dropped while thousands connected at first is not part of it).
/// A session that drops before or after (a connection lost alone) is
/// counted apart, and its user is not one of the others.
pub fn summarize(users: &[UserView<'_>], since_us: u64) -> Value {
    let Some(storm) = storm_window(users, since_us) else {
        return Value::Null;
    };
    let in_storm = |m: &&Move| storm.contains(&m.closed_us);
    let moves: Vec<&Move> = users
        .iter()
        .flat_map(|u| u.moves)
        .filter(in_storm)
        .collect();
    let (Some(from), Some(to)) = (
        moves.iter().map(|m| m.closed_us).min(),
        moves.iter().map(|m| m.caught_up_us).max(),
    ) else {
        return Value::Null;
    };
    let spans = |f: &dyn Fn(&Move) -> u64| spread(moves.iter().map(|m| f(m)).collect());
    // The users that never had to move: what the storm did to them.
    let stayed: Vec<&Delivery> = users
        .iter()
        .filter(|u| !moved(u, since_us))
        .flat_map(|u| u.deliveries)
        .collect();
    let window = |keep: &dyn Fn(u64) -> bool| {
        spread(
            stayed
                .iter()
                .filter(|d| keep(d.at_us))
                .map(|d| d.latency_us)
                .collect(),
        )
    };
    json!({
        "sessions_moved": moves.len(),
        "users_moved": users.iter().filter(|u| u.moves.iter().any(|m| in_storm(&m))).count(),
        "sessions_moved_apart": users.iter().flat_map(|u| u.moves).count() - moves.len(),
        "from_ms": ms(from),
        "to_ms": ms(to),
        "span_ms": ms(to - from),
        "close_to_caught_up_ms": spans(&|m| m.caught_up_us.saturating_sub(m.closed_us)),
        "steps_ms": {
            "back_off": spans(&|m| m.attempt_us.saturating_sub(m.closed_us)),
            "upgrade": spans(&|m| m.upgraded_us.saturating_sub(m.attempt_us)),
            "hello": spans(&|m| m.hello_us.saturating_sub(m.upgraded_us)),
            "catch_up": spans(&|m| m.caught_up_us.saturating_sub(m.hello_us)),
        },
        "failed_attempts": moves.iter().map(|m| u64::from(m.failed_attempts)).sum::<u64>(),
        "history_pages": moves.iter().map(|m| u64::from(m.pages)).sum::<u64>(),
        "others": {
            "users": users.iter().filter(|u| !moved(u, since_us)).count(),
            "delivery_before_ms": window(&|at| at < from),
            "delivery_during_ms": window(&|at| (from..=to).contains(&at)),
            "delivery_after_ms": window(&|at| at > to),
            "p99_by_second": by_second(&stayed, from.saturating_sub(5_000_000), to + 5_000_000),
        },
    })
}

fn moved(user: &UserView<'_>, since_us: u64) -> bool {
    user.moves.iter().any(|m| m.closed_us >= since_us)
}

/// From two seconds before the second in which most sessions closed (from
/// `since_us` on) to ten seconds after it.
fn storm_window(users: &[UserView<'_>], since_us: u64) -> Option<std::ops::Range<u64>> {
    let mut per_second = std::collections::BTreeMap::<u64, usize>::new();
    for m in users.iter().flat_map(|u| u.moves) {
        if m.closed_us >= since_us {
            *per_second.entry(m.closed_us / 1_000_000).or_default() += 1;
        }
    }
    let peak = per_second
        .iter()
        .max_by_key(|(second, count)| (**count, std::cmp::Reverse(**second)))
        .map(|(second, _)| *second)?;
    Some(peak.saturating_sub(2) * 1_000_000..(peak + 11) * 1_000_000)
}

/// Every live delivery, all users together.
pub fn deliveries(users: &[UserView<'_>]) -> Value {
    spread(
        users
            .iter()
            .flat_map(|u| u.deliveries)
            .map(|d| d.latency_us)
            .collect(),
    )
}

/// `[second of the run, deliveries, p99 ms]` for each second in `from..to`.
fn by_second(deliveries: &[&Delivery], from: u64, to: u64) -> Value {
    let mut seconds = std::collections::BTreeMap::<u64, Vec<u64>>::new();
    for d in deliveries.iter().filter(|d| (from..to).contains(&d.at_us)) {
        seconds
            .entry(d.at_us / 1_000_000)
            .or_default()
            .push(d.latency_us);
    }
    seconds
        .into_iter()
        .map(|(second, mut latencies)| {
            latencies.sort_unstable();
            json!([second, latencies.len(), ms(quantile(&latencies, 0.99))])
        })
        .collect()
}

/// Count, p50, p99 and max of `values` (microseconds), in milliseconds.
fn spread(mut values: Vec<u64>) -> Value {
    values.sort_unstable();
    json!({
        "count": values.len(),
        "p50": ms(quantile(&values, 0.5)),
        "p99": ms(quantile(&values, 0.99)),
        "max": ms(values.last().copied().unwrap_or(0)),
    })
}

/// The value at quantile `q` of sorted `values` (nearest rank; 0 when empty).
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(us: u64) -> f64 {
    (us as f64 / 100.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(closed_s: u64, caught_up_s: u64) -> Move {
        Move {
            closed_us: closed_s * 1_000_000,
            attempt_us: closed_s * 1_000_000 + 100_000,
            upgraded_us: closed_s * 1_000_000 + 200_000,
            hello_us: closed_s * 1_000_000 + 300_000,
            caught_up_us: caught_up_s * 1_000_000,
            pages: 1,
            ..Move::default()
        }
    }

    fn delivered(at_s: f64, latency_ms: u64) -> Delivery {
        Delivery {
            at_us: (at_s * 1e6) as u64,
            latency_us: latency_ms * 1000,
        }
    }

    /// Users with these moves each, and no deliveries.
    fn movers(moves: &[Vec<Move>]) -> Vec<UserView<'_>> {
        moves
            .iter()
            .map(|m| UserView {
                moves: m,
                deliveries: &[],
            })
            .collect()
    }

    #[test]
    fn a_run_where_no_session_moved_has_no_storm() {
        let deliveries = [delivered(1.0, 5)];
        let users = [UserView {
            moves: &[],
            deliveries: &deliveries,
        }];
        assert_eq!(summarize(&users, 0), Value::Null);
    }

    #[test]
    fn the_storm_spans_from_the_first_close_to_the_last_catch_up_and_splits_the_others_deliveries_by_it()
     {
        let moves_a = [moved(10, 12)];
        let moves_b = [moved(11, 15)];
        let stayed = [
            delivered(5.0, 2),
            delivered(10.5, 400),
            delivered(14.0, 300),
            delivered(20.0, 3),
        ];
        // A moved user's own deliveries are not the others'.
        let moved_user_deliveries = [delivered(13.0, 9_000)];
        let users = [
            UserView {
                moves: &moves_a,
                deliveries: &moved_user_deliveries,
            },
            UserView {
                moves: &moves_b,
                deliveries: &[],
            },
            UserView {
                moves: &[],
                deliveries: &stayed,
            },
        ];
        let storm = summarize(&users, 0);
        assert_eq!(storm["sessions_moved"], 2);
        assert_eq!(storm["from_ms"], 10_000.0);
        assert_eq!(storm["span_ms"], 5_000.0);
        assert_eq!(storm["close_to_caught_up_ms"]["max"], 4_000.0);
        assert_eq!(storm["steps_ms"]["upgrade"]["p50"], 100.0);
        assert_eq!(storm["others"]["users"], 1);
        assert_eq!(storm["others"]["delivery_before_ms"]["max"], 2.0);
        assert_eq!(storm["others"]["delivery_during_ms"]["count"], 2);
        assert_eq!(storm["others"]["delivery_during_ms"]["max"], 400.0);
        assert_eq!(storm["others"]["delivery_after_ms"]["p99"], 3.0);
        assert_eq!(storm["others"]["p99_by_second"][0], json!([5, 1, 2.0]));
        assert_eq!(deliveries(&users)["max"], 9_000.0);
    }

    #[test]
    fn sessions_that_moved_before_the_load_started_are_not_part_of_the_storm() {
        let moves = [vec![moved(1, 2)], vec![moved(10, 12)]];
        let users = movers(&moves);
        let storm = summarize(&users, 5_000_000);
        assert_eq!(storm["sessions_moved"], 1);
        assert_eq!(storm["sessions_moved_apart"], 1);
        assert_eq!(storm["from_ms"], 10_000.0);
        assert_eq!(storm["others"]["users"], 1);
    }

    #[test]
    fn the_storm_is_where_most_sessions_closed_and_a_lone_drop_before_is_apart() {
        let moves = [
            vec![moved(3, 4)],
            vec![moved(20, 25)],
            vec![moved(20, 22)],
            vec![moved(21, 28)],
        ];
        let users = movers(&moves);
        let storm = summarize(&users, 0);
        assert_eq!(storm["from_ms"], 20_000.0);
        assert_eq!(storm["span_ms"], 8_000.0);
        assert_eq!(storm["sessions_moved"], 3);
        assert_eq!(storm["sessions_moved_apart"], 1);
        assert_eq!(storm["users_moved"], 3);
    }

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&values, 0.5), 50);
        assert_eq!(quantile(&values, 0.99), 99);
        assert_eq!(quantile(&values, 1.0), 100);
        assert_eq!(quantile(&[], 0.99), 0);
    }
}
