//! What one client may consume: token buckets for rates (sends, reads, HTTP
//! requests), and counters for open connections by client address. Every
//! limit is per gateway process; config/default.toml `[gateway.limits]`
//! names them all, docs/protocol.md says how each refusal looks.

use chat_shared::config::LimitSettings;
use chat_shared::ids::UserId;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// The counters and buckets of the limits, shared by a gateway's sessions and
/// handlers (the numbers are `settings.gateway.limits`).
pub struct Limits {
    /// Open connections by client address.
    pub connections: Arc<ConnectionCounter>,
    /// Sends per user, over all of the user's sessions here.
    pub user_sends: KeyedBuckets<UserId>,
    /// HTTP API requests per user.
    pub http: KeyedBuckets<UserId>,
    /// Server API requests per key (by its index).
    pub server_api: KeyedBuckets<usize>,
}

impl Limits {
    pub fn new(settings: &LimitSettings) -> Self {
        Self {
            connections: Arc::new(ConnectionCounter::default()),
            user_sends: KeyedBuckets::new(
                settings.user_sends_per_second,
                settings.user_sends_burst,
            ),
            http: KeyedBuckets::new(settings.http_per_second, settings.http_burst),
            server_api: KeyedBuckets::new(
                settings.server_api_per_second,
                settings.server_api_burst,
            ),
        }
    }
}

/// A token bucket: holds at most `burst` tokens, refilled at `rate` a
/// second; each event takes one.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            tokens: burst,
            last: now,
            rate,
            burst,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.rate;
            Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
        }
    }

    /// Full again: forgetting it changes nothing.
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// One bucket per key (a user), created full on first use. Full buckets are
/// forgotten when the map grows, so it holds only the keys that are busy.
pub struct KeyedBuckets<K> {
    rate: f64,
    burst: u32,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

/// Past this many keys, the full buckets are swept out on the next insert.
const SWEEP_ABOVE: usize = 4096;

impl<K: Hash + Eq + Copy> KeyedBuckets<K> {
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, TokenBucket>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn take(&self, key: K, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.lock();
        if buckets.len() >= SWEEP_ABOVE && !buckets.contains_key(&key) {
            buckets.retain(|_, bucket| !bucket.is_full(now));
        }
        buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst, now))
            .take(now)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Open connections per client address.
#[derive(Default)]
pub struct ConnectionCounter {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; dropping it frees the slot.
pub struct ConnectionSlot {
    counter: Arc<ConnectionCounter>,
    ip: IpAddr,
}

impl ConnectionCounter {
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `ip`, unless it already holds `limit`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<ConnectionSlot> {
        let mut open = self.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            counter: self.clone(),
            ip,
        })
    }

    pub fn open(&self, ip: IpAddr) -> usize {
        self.lock().get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.counter.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Milliseconds to tell a client to wait, rounded up.
pub fn retry_after_ms(wait: Duration) -> u64 {
    wait.as_micros().div_ceil(1000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3, t0);
        assert!(bucket.take(t0).is_ok());
        assert!(bucket.take(t0).is_ok());
        assert!(bucket.take(t0).is_ok());
        let wait = bucket.take(t0).unwrap_err();
        assert_eq!(retry_after_ms(wait), 100);
        // 50 ms later half a token is back: still refused, for 50 ms more.
        let wait = bucket.take(t0 + Duration::from_millis(50)).unwrap_err();
        assert_eq!(retry_after_ms(wait), 50);
        assert!(bucket.take(t0 + Duration::from_millis(100)).is_ok());
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(bucket.take(later).is_ok());
        }
        assert!(bucket.take(later).is_err());
    }

    #[test]
    fn keyed_buckets_are_independent_and_forget_idle_keys() {
        let t0 = Instant::now();
        let buckets = KeyedBuckets::new(1.0, 1);
        assert!(buckets.take(1u64, t0).is_ok());
        assert!(buckets.take(1u64, t0).is_err());
        assert!(buckets.take(2u64, t0).is_ok());
        for key in 3..(SWEEP_ABOVE as u64 + 10) {
            let _ = buckets.take(key, t0);
        }
        // Much later every bucket is full again, and one new key sweeps them.
        let later = t0 + Duration::from_secs(10);
        assert!(buckets.take(u64::MAX, later).is_ok());
        assert_eq!(buckets.len(), 1);
    }

    #[test]
    fn connection_slots_count_per_address_and_free_on_drop() {
        let counter = Arc::new(ConnectionCounter::default());
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = counter.acquire(a, 2).unwrap();
        let _second = counter.acquire(a, 2).unwrap();
        assert!(counter.acquire(a, 2).is_none());
        assert!(counter.acquire(b, 2).is_some());
        drop(first);
        assert_eq!(counter.open(a), 1);
        assert!(counter.acquire(a, 2).is_some());
    }
}
