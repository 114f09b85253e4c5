//! The block gate of sends (version 2 consent), one for every session of the
//! gateway: a send in a direct conversation between two users with a block,
//! either way, is refused `blocked` here, before it reaches the broker, so
//! nothing is stored. Each user's blocks (made and received) are asked of
//! Postgres once, then remembered ([`Remembered`]) until a change is
//! broadcast to every gateway (`GatewayEvent::BlocksChanged`), so a block
//! takes effect on every gateway within milliseconds of its commit. When
//! Postgres cannot answer, the send goes on unchecked.

use super::remembered::Remembered;
use crate::store::{Store, StoreError};
use chat_shared::ids::UserId;
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// Users remembered at most (then all are forgotten at once).
const REMEMBERED: usize = 100_000;

/// Who has a block, either way, with a user: Postgres, or a fake in tests.
pub trait BlocksLookup: Send + Sync + 'static {
    /// The users `user` blocks or is blocked by, ascending.
    fn blocked_with(&self, user: UserId) -> BoxFuture<'_, Result<Vec<UserId>, StoreError>>;
}

impl BlocksLookup for Store {
    fn blocked_with(&self, user: UserId) -> BoxFuture<'_, Result<Vec<UserId>, StoreError>> {
        Box::pin(Store::blocked_with(self, user))
    }
}

pub struct Blocks {
    lookup: Arc<dyn BlocksLookup>,
    known: Remembered<UserId, Arc<[UserId]>>,
}

impl Blocks {
    pub fn new(lookup: Arc<dyn BlocksLookup>) -> Self {
        Self {
            lookup,
            known: Remembered::new(REMEMBERED),
        }
    }

    /// Whether `a` and `b` have a block between them, either way.
    pub async fn between(&self, a: UserId, b: UserId) -> bool {
        let ask = || async {
            let with = self.lookup.blocked_with(a).await?;
            Ok::<_, StoreError>(Some(Arc::from(with)))
        };
        match self.known.get_or_ask(a, ask).await {
            Ok(with) => with.is_some_and(|with| with.binary_search(&b).is_ok()),
            Err(e) => {
                tracing::warn!(user.id = %a, error = %e, "blocks unknown; the send goes on unchecked");
                false
            }
        }
    }

    /// A block between these users was made or lifted: ask again.
    pub fn forget(&self, users: &[UserId]) {
        self.known.forget(users);
    }
}

/// A fake of Postgres's answers, for unit tests.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::sync::Mutex;

    /// Blocks as (blocker, blocked) pairs; counts the questions asked.
    #[derive(Default)]
    pub struct FakeBlocks {
        pub blocks: Mutex<Vec<(i64, i64)>>,
        pub asked: Mutex<usize>,
    }

    impl FakeBlocks {
        pub fn with(blocks: &[(i64, i64)]) -> Self {
            Self {
                blocks: Mutex::new(blocks.to_vec()),
                ..Default::default()
            }
        }
    }

    impl BlocksLookup for FakeBlocks {
        fn blocked_with(&self, user: UserId) -> BoxFuture<'_, Result<Vec<UserId>, StoreError>> {
            *self.asked.lock().unwrap() += 1;
            let u = user.get();
            let mut with: Vec<UserId> = (self.blocks.lock().unwrap().iter())
                .filter_map(|(a, b)| match (*a == u, *b == u) {
                    (true, _) => Some(*b),
                    (_, true) => Some(*a),
                    _ => None,
                })
                .map(|id| UserId::new(id).unwrap())
                .collect();
            with.sort();
            with.dedup();
            Box::pin(async move { Ok(with) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeBlocks;
    use super::*;

    fn user(id: i64) -> UserId {
        UserId::new(id).unwrap()
    }

    #[tokio::test]
    async fn a_block_counts_both_ways_and_is_asked_once_per_user() {
        let fake = Arc::new(FakeBlocks::with(&[(7, 8)]));
        let blocks = Blocks::new(fake.clone());
        assert!(blocks.between(user(7), user(8)).await);
        assert!(blocks.between(user(8), user(7)).await);
        assert!(!blocks.between(user(7), user(9)).await);
        assert!(!blocks.between(user(7), user(9)).await);
        assert_eq!(*fake.asked.lock().unwrap(), 2, "once for 7, once for 8");
    }

    #[tokio::test]
    async fn a_change_heard_makes_the_gate_ask_again() {
        let fake = Arc::new(FakeBlocks::default());
        let blocks = Blocks::new(fake.clone());
        assert!(!blocks.between(user(7), user(8)).await);
        fake.blocks.lock().unwrap().push((8, 7));
        assert!(
            !blocks.between(user(7), user(8)).await,
            "remembered until told"
        );
        blocks.forget(&[user(8), user(7)]);
        assert!(blocks.between(user(7), user(8)).await);
        fake.blocks.lock().unwrap().clear();
        blocks.forget(&[user(8), user(7)]);
        assert!(!blocks.between(user(7), user(8)).await, "unblocked");
    }
}
