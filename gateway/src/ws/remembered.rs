//! What a gateway's gates remember of Postgres ([`super::members`],
//! [`super::blocks`]): an answer is asked once, then remembered until a
//! change of it is broadcast to every gateway (the gateway's inbox calls
//! [`Remembered::forget`] milliseconds after the commit of the change), and
//! for [`REMEMBERED_FOR`] at most, should a broadcast be lost. A lookup that
//! began before a change was heard is answered but not remembered: it may
//! hold what was true before the change.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// How long an answer is remembered at most: the backstop should a
/// broadcast change be lost (a broker that failed just then).
pub const REMEMBERED_FOR: Duration = Duration::from_secs(60);

pub struct Remembered<K, V> {
    known: Mutex<HashMap<K, (V, Instant)>>,
    /// Counts the changes heard.
    changes: AtomicU64,
    /// Entries at most (then all are forgotten at once).
    capacity: usize,
}

impl<K: Hash + Eq + Copy, V: Clone> Remembered<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            known: Mutex::new(HashMap::new()),
            changes: AtomicU64::new(0),
            capacity,
        }
    }

    fn known(&self) -> MutexGuard<'_, HashMap<K, (V, Instant)>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is remembered of `key`, or else what `ask` answers (remembered
    /// unless it is `None`, or a change was heard while it was asked).
    pub async fn get_or_ask<E, F>(&self, key: K, ask: impl FnOnce() -> F) -> Result<Option<V>, E>
    where
        F: Future<Output = Result<Option<V>, E>>,
    {
        if let Some((value, at)) = self.known().get(&key)
            && at.elapsed() < REMEMBERED_FOR
        {
            return Ok(Some(value.clone()));
        }
        let before = self.changes.load(Ordering::Acquire);
        let answer = ask().await?;
        if let Some(value) = &answer {
            let mut known = self.known();
            if self.changes.load(Ordering::Acquire) == before {
                if known.len() >= self.capacity {
                    known.clear();
                }
                known.insert(key, (value.clone(), Instant::now()));
            }
        }
        Ok(answer)
    }

    /// `keys` changed: ask again next time.
    pub fn forget(&self, keys: &[K]) {
        let mut known = self.known();
        self.changes.fetch_add(1, Ordering::AcqRel);
        for key in keys {
            known.remove(key);
        }
    }

    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.known().len()
    }

    #[cfg(test)]
    pub fn contains(&self, key: &K) -> bool {
        self.known().contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_remembered_for_a_minute_at_most() {
        let memory = Remembered::<u8, u8>::new(10);
        let asked = std::cell::Cell::new(0);
        let ask = || async {
            asked.set(asked.get() + 1);
            Ok::<_, Infallible>(Some(asked.get()))
        };
        assert_eq!(memory.get_or_ask(1, ask).await, Ok(Some(1)));
        tokio::time::sleep(REMEMBERED_FOR - Duration::from_secs(1)).await;
        assert_eq!(memory.get_or_ask(1, ask).await, Ok(Some(1)));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(memory.get_or_ask(1, ask).await, Ok(Some(2)));
    }

    #[tokio::test]
    async fn none_and_errors_are_not_remembered() {
        let memory = Remembered::<u8, u8>::new(10);
        assert_eq!(
            memory.get_or_ask(1, || async { Ok::<_, ()>(None) }).await,
            Ok(None)
        );
        assert_eq!(
            memory
                .get_or_ask(1, || async { Err::<Option<u8>, _>(()) })
                .await,
            Err(())
        );
        assert_eq!(memory.count(), 0);
    }

    #[tokio::test]
    async fn it_remembers_a_bounded_number_of_keys() {
        let memory = Remembered::<u32, u8>::new(100);
        for key in 0..1000 {
            let _ = memory
                .get_or_ask(key, || async { Ok::<_, Infallible>(Some(0)) })
                .await;
            assert!(memory.count() <= 100);
        }
    }
}
