//! Group commit without a timer: wait for the first delivery, then take
//! whatever else has already arrived, up to the batch limit, and go. Under
//! light load a message waits for nobody; under heavy load the queue fills
//! while a commit runs, and the next batch grows by itself.

use tokio::sync::mpsc;

/// Something that holds a number of commands (an AMQP message may carry several).
pub trait Weighed {
    fn weight(&self) -> usize;
}

/// The next batch, or `None` when the channel is closed and empty.
/// A batch holds at least one item; beyond the first, items are added while
/// the total weight stays within `max`.
pub async fn next_batch<T: Weighed>(
    rx: &mut mpsc::Receiver<T>,
    max: usize,
    spill: &mut Option<T>,
) -> Option<Vec<T>> {
    let first = match spill.take() {
        Some(item) => item,
        None => rx.recv().await?,
    };
    let mut weight = first.weight();
    let mut batch = vec![first];
    while weight < max {
        match rx.try_recv() {
            Ok(item) if weight + item.weight() <= max => {
                weight += item.weight();
                batch.push(item);
            }
            Ok(item) => {
                *spill = Some(item);
                break;
            }
            Err(_) => break,
        }
    }
    Some(batch)
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

    #[tokio::test]
    async fn a_lone_message_is_taken_at_once() {
        let (tx, mut rx) = mpsc::channel(10);
        let _ = tx.send(Item(1)).await;
        let mut spill = None;
        let batch = next_batch(&mut rx, 100, &mut spill)
            .await
            .unwrap_or_default();
        assert_eq!(batch.len(), 1);
    }

    #[tokio::test]
    async fn what_has_arrived_is_taken_together_up_to_the_limit() {
        let (tx, mut rx) = mpsc::channel(10);
        for _ in 0..5 {
            let _ = tx.send(Item(1)).await;
        }
        let mut spill = None;
        let first = next_batch(&mut rx, 3, &mut spill).await.unwrap_or_default();
        assert_eq!(first.len(), 3);
        let second = next_batch(&mut rx, 3, &mut spill).await.unwrap_or_default();
        assert_eq!(second.len(), 2);
    }

    #[tokio::test]
    async fn an_item_that_does_not_fit_starts_the_next_batch() {
        let (tx, mut rx) = mpsc::channel(10);
        let _ = tx.send(Item(2)).await;
        let _ = tx.send(Item(2)).await;
        let mut spill = None;
        assert_eq!(
            next_batch(&mut rx, 3, &mut spill).await.map(|b| b.len()),
            Some(1)
        );
        assert!(spill.is_some());
        assert_eq!(
            next_batch(&mut rx, 3, &mut spill).await.map(|b| b.len()),
            Some(1)
        );
        drop(tx);
        assert!(next_batch(&mut rx, 3, &mut spill).await.is_none());
    }
}
