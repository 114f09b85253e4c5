//! Batching, the one way every service does it: wait for the first item,
//! then take whatever else has already arrived, up to the batch limit, and
//! go. Under light load an item waits for nobody; under heavy load the
//! queue fills while the last batch is being handled, and the next batch
//! grows by itself.
//!
//! A batch may also linger, like Postgres's `commit_delay` with
//! `commit_siblings`: when it holds at least `linger_from` items once it
//! has taken what was waiting, it waits up to `linger` (from its first
//! item) for more, until it holds `linger_until`. The persister's group
//! commits linger only under load (`persister.linger_from`, 16), so a lone
//! message never waits; the gateway's publish rounds linger from their
//! first command (`gateway.publish_linger_ms`, 2 ms: fewer AMQP messages,
//! less broker and system CPU, measured in docs/benchmarks.md).

use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Something that holds a number of items (an AMQP message may carry
/// several commands).
pub trait Weighed {
    fn weight(&self) -> usize;
}

/// How large a batch may grow, and when it waits to grow.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most weight (commands) in one batch.
    pub max: usize,
    /// A batch that holds this much weight (its first item included) once it
    /// has taken what was waiting lingers.
    pub linger_from: usize,
    /// A lingering batch stops waiting once it holds this many.
    pub linger_until: usize,
    /// Longest a batch lingers; zero never lingers.
    pub linger: Duration,
}

/// The next batch, or `None` when the channel is closed and empty.
/// A batch holds at least one item; beyond the first, items are added while
/// the total weight stays within `limits.max`.
#[cfg(test)]
pub async fn next_batch<T: Weighed>(
    rx: &mut mpsc::Receiver<T>,
    limits: &Limits,
    spill: &mut Option<T>,
) -> Option<Vec<T>> {
    let first = first(rx, spill).await?;
    Some(fill(first, rx, limits, spill).await)
}

/// Waits for a batch's first item (the one left over from the last batch,
/// if any); `None` when the channel is closed and empty. Nothing is taken
/// until it returns, so dropping it (at shutdown) loses nothing.
pub async fn first<T>(rx: &mut mpsc::Receiver<T>, spill: &mut Option<T>) -> Option<T> {
    match spill.take() {
        Some(item) => Some(item),
        None => rx.recv().await,
    }
}

/// Makes a batch from its first item: whatever has arrived, and under load
/// what arrives within `limits.linger`. It returns within `limits.linger`.
pub async fn fill<T: Weighed>(
    first: T,
    rx: &mut mpsc::Receiver<T>,
    limits: &Limits,
    spill: &mut Option<T>,
) -> Vec<T> {
    let started = Instant::now();
    let mut batch = Batch {
        weight: first.weight(),
        items: vec![first],
        max: limits.max,
    };
    batch.take_ready(rx, spill);
    if limits.linger.is_zero() || batch.weight < limits.linger_from {
        return batch.items;
    }
    let deadline = started + limits.linger;
    while spill.is_none() && batch.weight < limits.linger_until.min(limits.max) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(item)) => {
                if !batch.add(item, spill) {
                    break;
                }
                batch.take_ready(rx, spill);
            }
            Ok(None) | Err(_) => break,
        }
    }
    batch.items
}

struct Batch<T> {
    items: Vec<T>,
    weight: usize,
    max: usize,
}

impl<T: Weighed> Batch<T> {
    /// Adds `item` if it fits; otherwise it becomes the next batch's first.
    fn add(&mut self, item: T, spill: &mut Option<T>) -> bool {
        if self.weight + item.weight() > self.max {
            *spill = Some(item);
            return false;
        }
        self.weight += item.weight();
        self.items.push(item);
        true
    }

    /// Takes what has already arrived, while it fits.
    fn take_ready(&mut self, rx: &mut mpsc::Receiver<T>, spill: &mut Option<T>) {
        while self.weight < self.max {
            match rx.try_recv() {
                Ok(item) => {
                    if !self.add(item, spill) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Item(usize);
    impl Weighed for Item {
        fn weight(&self) -> usize {
            self.0
        }
    }

    fn no_linger(max: usize) -> Limits {
        Limits {
            max,
            linger_from: 1,
            linger_until: max,
            linger: Duration::ZERO,
        }
    }

    const LINGER: Limits = Limits {
        max: 100,
        linger_from: 3,
        linger_until: 6,
        linger: Duration::from_millis(10),
    };

    async fn send_n(tx: &mpsc::Sender<Item>, n: usize) {
        for _ in 0..n {
            let _ = tx.send(Item(1)).await;
        }
    }

    #[tokio::test]
    async fn a_lone_message_is_taken_at_once() {
        let (tx, mut rx) = mpsc::channel(10);
        let _ = tx.send(Item(1)).await;
        let mut spill = None;
        let batch = next_batch(&mut rx, &no_linger(100), &mut spill)
            .await
            .unwrap_or_default();
        assert_eq!(batch.len(), 1);
    }

    #[tokio::test]
    async fn what_has_arrived_is_taken_together_up_to_the_limit() {
        let (tx, mut rx) = mpsc::channel(10);
        send_n(&tx, 5).await;
        let mut spill = None;
        let first = next_batch(&mut rx, &no_linger(3), &mut spill)
            .await
            .unwrap_or_default();
        assert_eq!(first.len(), 3);
        let second = next_batch(&mut rx, &no_linger(3), &mut spill)
            .await
            .unwrap_or_default();
        assert_eq!(second.len(), 2);
    }

    #[tokio::test]
    async fn an_item_that_does_not_fit_starts_the_next_batch() {
        let (tx, mut rx) = mpsc::channel(10);
        let _ = tx.send(Item(2)).await;
        let _ = tx.send(Item(2)).await;
        let mut spill = None;
        let limits = no_linger(3);
        assert_eq!(
            next_batch(&mut rx, &limits, &mut spill)
                .await
                .map(|b| b.len()),
            Some(1)
        );
        assert!(spill.is_some());
        assert_eq!(
            next_batch(&mut rx, &limits, &mut spill)
                .await
                .map(|b| b.len()),
            Some(1)
        );
        drop(tx);
        assert!(next_batch(&mut rx, &limits, &mut spill).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn under_light_load_a_batch_does_not_linger() {
        let (tx, mut rx) = mpsc::channel(10);
        send_n(&tx, 2).await; // fewer than linger_from
        let started = Instant::now();
        let mut spill = None;
        let batch = next_batch(&mut rx, &LINGER, &mut spill)
            .await
            .unwrap_or_default();
        assert_eq!(batch.len(), 2);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn under_load_a_batch_lingers_until_it_is_full_enough() {
        let (tx, mut rx) = mpsc::channel(10);
        send_n(&tx, 3).await; // linger_from: this batch waits for more
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(4)).await;
            send_n(&late, 3).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            send_n(&late, 1).await;
        });
        let started = Instant::now();
        let mut spill = None;
        let batch = next_batch(&mut rx, &LINGER, &mut spill)
            .await
            .unwrap_or_default();
        // Stopped at linger_until (6), before the deadline, without the 7th.
        assert_eq!(batch.len(), 6);
        assert_eq!(started.elapsed(), Duration::from_millis(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lingering_batch_never_exceeds_the_limit_and_keeps_the_rest() {
        let (tx, mut rx) = mpsc::channel(10);
        let limits = Limits {
            max: 5,
            linger_from: 3,
            linger_until: 5,
            linger: Duration::from_millis(10),
        };
        let _ = tx.send(Item(3)).await; // lingers: 3 >= linger_from
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let _ = late.send(Item(2)).await; // fits: 5
            let _ = late.send(Item(2)).await; // would make 7
        });
        let mut spill = None;
        let batch = next_batch(&mut rx, &limits, &mut spill)
            .await
            .unwrap_or_default();
        assert_eq!(batch.iter().map(|i| i.0).collect::<Vec<_>>(), [3, 2]);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let next = next_batch(&mut rx, &no_linger(5), &mut spill)
            .await
            .unwrap_or_default();
        assert_eq!(next.iter().map(|i| i.0).collect::<Vec<_>>(), [2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lingering_batch_goes_at_the_deadline_with_what_it_has() {
        let (tx, mut rx) = mpsc::channel(10);
        send_n(&tx, 4).await;
        let started = Instant::now();
        let mut spill = None;
        let batch = next_batch(&mut rx, &LINGER, &mut spill)
            .await
            .unwrap_or_default();
        assert_eq!(batch.len(), 4);
        assert_eq!(started.elapsed(), LINGER.linger);
    }
}
