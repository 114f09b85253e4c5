//! The membership gate of `read` and `typing` frames, one for every session
//! of the gateway: a conversation's members are asked of Postgres once, then
//! remembered until a change of them is broadcast to every gateway
//! (`GatewayEvent::MembersChanged`, sent by whichever gateway made the
//! change, milliseconds after its commit), so a member who leaves is refused
//! at once on every gateway and a frame costs no round trip. Members are
//! remembered for [`REMEMBERED_FOR`] at most, should a broadcast be lost.
//! When Postgres cannot answer, the frame goes on and the service behind
//! decides.

use crate::store::{Store, StoreError};
use chat_shared::ids::{ConversationId, UserId};
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// Conversations remembered at most (then all are forgotten at once).
const REMEMBERED: usize = 50_000;
/// How long members are remembered at most: the backstop should a broadcast
/// change be lost (a broker that failed just then).
pub const REMEMBERED_FOR: Duration = Duration::from_secs(60);

type Known = HashMap<ConversationId, (Arc<[UserId]>, Instant)>;

/// A conversation's members: Postgres, or a fake in unit tests.
pub trait MembersLookup: Send + Sync + 'static {
    /// The members, ascending; `None` when there is no such conversation.
    fn members(
        &self,
        conversation: ConversationId,
    ) -> BoxFuture<'_, Result<Option<Vec<UserId>>, StoreError>>;
}

impl MembersLookup for Store {
    fn members(
        &self,
        conversation: ConversationId,
    ) -> BoxFuture<'_, Result<Option<Vec<UserId>>, StoreError>> {
        Box::pin(Store::members(self, conversation))
    }
}

pub struct Memberships {
    lookup: Arc<dyn MembersLookup>,
    known: Mutex<Known>,
    /// Counts the changes heard: a lookup that began before one is not
    /// remembered (it may hold the members from before the change).
    changes: AtomicU64,
}

impl Memberships {
    pub fn new(lookup: Arc<dyn MembersLookup>) -> Self {
        Self {
            lookup,
            known: Mutex::new(HashMap::new()),
            changes: AtomicU64::new(0),
        }
    }

    fn known(&self) -> MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `user` may send frames about `conversation`.
    pub async fn admits(&self, conversation: ConversationId, user: UserId) -> bool {
        if let Some((members, at)) = self.known().get(&conversation)
            && at.elapsed() < REMEMBERED_FOR
        {
            return members.binary_search(&user).is_ok();
        }
        let before = self.changes.load(Ordering::Acquire);
        match self.lookup.members(conversation).await {
            Ok(Some(members)) => {
                let admitted = members.binary_search(&user).is_ok();
                let mut known = self.known();
                if self.changes.load(Ordering::Acquire) == before {
                    if known.len() >= REMEMBERED {
                        known.clear();
                    }
                    known.insert(conversation, (members.into(), Instant::now()));
                }
                admitted
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(conversation.id = %conversation, error = %e, "membership check failed; letting the frame through");
                true
            }
        }
    }

    /// The members of `conversation` changed: ask again next time.
    pub fn forget(&self, conversation: ConversationId) {
        let mut known = self.known();
        self.changes.fetch_add(1, Ordering::AcqRel);
        known.remove(&conversation);
    }
}

/// A fake of Postgres's answers, for unit tests.
#[cfg(test)]
pub mod fake {
    use super::*;

    /// Members by conversation; counts the questions asked.
    #[derive(Default)]
    pub struct FakeMembers {
        pub members: Mutex<HashMap<ConversationId, Vec<UserId>>>,
        pub asked: Mutex<usize>,
        pub failing: bool,
    }

    impl FakeMembers {
        /// `(conversation, user)` pairs that are members.
        pub fn with(pairs: &[(i64, i64)]) -> Self {
            let fake = Self::default();
            for (c, u) in pairs {
                fake.add(*c, *u);
            }
            fake
        }

        pub fn add(&self, conversation: i64, user: i64) {
            let mut members = self.members.lock().unwrap();
            let list = members
                .entry(ConversationId::new(conversation).unwrap())
                .or_default();
            list.push(UserId::new(user).unwrap());
            list.sort();
        }

        pub fn remove(&self, conversation: i64, user: i64) {
            let mut members = self.members.lock().unwrap();
            if let Some(list) = members.get_mut(&ConversationId::new(conversation).unwrap()) {
                list.retain(|u| u.get() != user);
            }
        }

        pub fn asked(&self) -> usize {
            *self.asked.lock().unwrap()
        }
    }

    impl MembersLookup for FakeMembers {
        fn members(
            &self,
            conversation: ConversationId,
        ) -> BoxFuture<'_, Result<Option<Vec<UserId>>, StoreError>> {
            *self.asked.lock().unwrap() += 1;
            let answer = if self.failing {
                Err(StoreError::Db(sea_orm::sqlx::Error::PoolTimedOut))
            } else {
                Ok(self.members.lock().unwrap().get(&conversation).cloned())
            };
            Box::pin(async move { answer })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeMembers;
    use super::*;

    fn conv(id: i64) -> ConversationId {
        ConversationId::new(id).unwrap()
    }

    fn user(id: i64) -> UserId {
        UserId::new(id).unwrap()
    }

    fn gate(fake: &Arc<FakeMembers>) -> Memberships {
        Memberships::new(fake.clone())
    }

    #[tokio::test]
    async fn a_conversation_is_asked_about_once_for_members_and_others_alike() {
        let fake = Arc::new(FakeMembers::with(&[(1, 7), (1, 8)]));
        let gate = gate(&fake);
        assert!(gate.admits(conv(1), user(7)).await);
        assert!(gate.admits(conv(1), user(8)).await);
        assert!(!gate.admits(conv(1), user(9)).await);
        assert!(!gate.admits(conv(1), user(9)).await);
        assert_eq!(fake.asked(), 1);
        // No such conversation: refused, and asked again next time.
        assert!(!gate.admits(conv(2), user(7)).await);
        assert!(!gate.admits(conv(2), user(7)).await);
        assert_eq!(fake.asked(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn members_are_remembered_for_a_minute_at_most() {
        let fake = Arc::new(FakeMembers::with(&[(1, 7), (1, 8)]));
        let gate = gate(&fake);
        assert!(gate.admits(conv(1), user(8)).await);
        fake.remove(1, 8); // and the broadcast of it lost
        tokio::time::sleep(REMEMBERED_FOR - Duration::from_secs(1)).await;
        assert!(gate.admits(conv(1), user(8)).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!gate.admits(conv(1), user(8)).await);
    }

    #[tokio::test]
    async fn a_change_heard_makes_the_gate_ask_again() {
        let fake = Arc::new(FakeMembers::with(&[(1, 7), (1, 8)]));
        let gate = gate(&fake);
        assert!(gate.admits(conv(1), user(8)).await);
        fake.remove(1, 8);
        assert!(gate.admits(conv(1), user(8)).await, "remembered until told");
        gate.forget(conv(1));
        assert!(!gate.admits(conv(1), user(8)).await);
        assert_eq!(fake.asked(), 2);
    }

    /// Answers from before a change: it starts, waits to be let go, then
    /// answers what it read at the start.
    #[derive(Default)]
    struct Slow {
        started: tokio::sync::Notify,
        go_on: tokio::sync::Notify,
    }

    impl MembersLookup for Slow {
        fn members(
            &self,
            _: ConversationId,
        ) -> BoxFuture<'_, Result<Option<Vec<UserId>>, StoreError>> {
            Box::pin(async {
                self.started.notify_one();
                self.go_on.notified().await;
                Ok(Some(vec![user(8)]))
            })
        }
    }

    #[tokio::test]
    async fn a_lookup_that_a_change_overtook_is_not_remembered() {
        let slow = Arc::new(Slow::default());
        let gate = Arc::new(Memberships::new(slow.clone()));
        let asking = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admits(conv(1), user(8)).await }
        });
        slow.started.notified().await;
        gate.forget(conv(1)); // heard while the lookup is on its way
        slow.go_on.notify_one();
        assert!(asking.await.unwrap(), "answered as read");
        assert!(gate.known().get(&conv(1)).is_none(), "but not remembered");
    }

    #[tokio::test]
    async fn when_postgres_cannot_answer_the_frame_goes_on_and_nothing_is_remembered() {
        let fake = Arc::new(FakeMembers {
            failing: true,
            ..Default::default()
        });
        let gate = gate(&fake);
        assert!(gate.admits(conv(1), user(7)).await);
        assert!(gate.admits(conv(1), user(7)).await);
        assert_eq!(fake.asked(), 2);
    }

    #[tokio::test]
    async fn it_remembers_a_bounded_number_of_conversations() {
        let fake = Arc::new(FakeMembers::with(&[(1, 7)]));
        let gate = gate(&fake);
        for c in 2..=(REMEMBERED as i64 + 10) {
            let members = Arc::from(vec![user(7)]);
            gate.known().insert(conv(c), (members, Instant::now()));
        }
        assert!(gate.admits(conv(1), user(7)).await);
        assert!(gate.known().len() <= REMEMBERED);
    }
}
