//! A warning that can repeat thousands of times a second (every event of a
//! broker outage) is logged at once the first time, then at most once per
//! interval with how many happened since: the log says what is going on
//! without drowning everything else.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LogThrottle {
    every: Duration,
    /// When it was last logged, and the occurrences since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogThrottle {
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// One more occurrence. `Some(n)` when it is time to log: `n`
    /// occurrences, this one included, since the last line.
    pub fn hit(&self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    fn hit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, count) = &mut *state;
        *count += 1;
        if last.is_none_or(|at| now.duration_since(at) >= self.every) {
            *last = Some(now);
            return Some(std::mem::take(count));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrence_is_logged_then_one_line_per_interval_counts_the_rest() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(throttle.hit_at(t0), Some(1));
        for i in 1..=499 {
            assert_eq!(throttle.hit_at(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(throttle.hit_at(t0 + Duration::from_secs(10)), Some(500));
        assert_eq!(throttle.hit_at(t0 + Duration::from_secs(11)), None);
        assert_eq!(throttle.hit_at(t0 + Duration::from_secs(25)), Some(2));
    }
}
