//! The membership gate of `read` and `typing` frames, one for every session
//! of the gateway: a conversation's members are asked of Postgres once, then
//! remembered ([`Remembered`]) until a change of them is broadcast to every
//! gateway (`GatewayEvent::MembersChanged`, sent by whichever gateway made
//! the change), so a member who leaves is refused at once on every gateway
//! and a frame costs no round trip. It also tells the send gate who the
//! other member of a direct conversation is (for blocks: [`super::blocks`]).
//! When Postgres cannot answer, the frame goes on and the service behind
//! decides.

use super::remembered::Remembered;
use crate::store::{Members, Store, StoreError};
use chat_shared::ids::{ConversationId, UserId};
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// Conversations remembered at most (then all are forgotten at once).
const REMEMBERED: usize = 50_000;

/// A conversation's members: Postgres, or a fake in unit tests.
pub trait MembersLookup: Send + Sync + 'static {
    /// The members, ascending; `None` when there is no such conversation.
    fn members(
        &self,
        conversation: ConversationId,
    ) -> BoxFuture<'_, Result<Option<Members>, StoreError>>;
}

impl MembersLookup for Store {
    fn members(
        &self,
        conversation: ConversationId,
    ) -> BoxFuture<'_, Result<Option<Members>, StoreError>> {
        Box::pin(Store::members(self, conversation))
    }
}

pub struct Memberships {
    lookup: Arc<dyn MembersLookup>,
    known: Remembered<ConversationId, Arc<Members>>,
}

impl Memberships {
    pub fn new(lookup: Arc<dyn MembersLookup>) -> Self {
        Self {
            lookup,
            known: Remembered::new(REMEMBERED),
        }
    }

    async fn members(
        &self,
        conversation: ConversationId,
    ) -> Result<Option<Arc<Members>>, StoreError> {
        let ask = || async {
            let members = self.lookup.members(conversation).await?;
            Ok(members.map(Arc::new))
        };
        self.known.get_or_ask(conversation, ask).await
    }

    /// Whether `user` may send frames about `conversation`.
    pub async fn admits(&self, conversation: ConversationId, user: UserId) -> bool {
        match self.members(conversation).await {
            Ok(Some(members)) => members.ids.binary_search(&user).is_ok(),
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(conversation.id = %conversation, error = %e, "membership check failed; letting the frame through");
                true
            }
        }
    }

    /// The other member, when `conversation` is a direct conversation of
    /// `user`'s; `None` otherwise, and when Postgres cannot answer.
    pub async fn direct_peer(&self, conversation: ConversationId, user: UserId) -> Option<UserId> {
        let members = match self.members(conversation).await {
            Ok(members) => members?,
            Err(e) => {
                tracing::warn!(conversation.id = %conversation, error = %e, "members unknown; the send goes on unchecked for blocks");
                return None;
            }
        };
        if !members.direct || !members.ids.contains(&user) {
            return None;
        }
        members.ids.iter().copied().find(|m| *m != user)
    }

    /// The members of `conversation` changed: ask again next time.
    pub fn forget(&self, conversation: ConversationId) {
        self.known.forget(&[conversation]);
    }
}

/// A fake of Postgres's answers, for unit tests.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;

    /// Members by conversation; counts the questions asked.
    #[derive(Default)]
    pub struct FakeMembers {
        pub members: Mutex<HashMap<ConversationId, Vec<UserId>>>,
        /// The conversations that are direct.
        pub direct: Mutex<HashSet<ConversationId>>,
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

        /// A direct conversation of `a` and `b`.
        pub fn direct(conversation: i64, a: i64, b: i64) -> Self {
            let fake = Self::with(&[(conversation, a), (conversation, b)]);
            fake.direct
                .lock()
                .unwrap()
                .insert(ConversationId::new(conversation).unwrap());
            fake
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
        ) -> BoxFuture<'_, Result<Option<Members>, StoreError>> {
            *self.asked.lock().unwrap() += 1;
            let answer = if self.failing {
                Err(StoreError::Db(sea_orm::sqlx::Error::PoolTimedOut))
            } else {
                let direct = self.direct.lock().unwrap().contains(&conversation);
                let ids = self.members.lock().unwrap().get(&conversation).cloned();
                Ok(ids.map(|ids| Members { direct, ids }))
            };
            Box::pin(async move { answer })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeMembers;
    use super::*;
    use crate::ws::remembered::REMEMBERED_FOR;
    use std::time::Duration;

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
    async fn the_peer_of_a_direct_conversation_is_known_to_its_members_only() {
        let fake = Arc::new(FakeMembers::direct(1, 7, 8));
        fake.add(2, 7);
        fake.add(2, 8);
        let gate = gate(&fake);
        assert_eq!(gate.direct_peer(conv(1), user(7)).await, Some(user(8)));
        assert_eq!(gate.direct_peer(conv(1), user(8)).await, Some(user(7)));
        assert_eq!(gate.direct_peer(conv(1), user(9)).await, None);
        assert_eq!(
            gate.direct_peer(conv(2), user(7)).await,
            None,
            "a group of two"
        );
        assert_eq!(gate.direct_peer(conv(3), user(7)).await, None, "no such");
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
        fn members(&self, _: ConversationId) -> BoxFuture<'_, Result<Option<Members>, StoreError>> {
            Box::pin(async {
                self.started.notify_one();
                self.go_on.notified().await;
                Ok(Some(Members {
                    direct: false,
                    ids: vec![user(8)],
                }))
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
        assert!(!gate.known.contains(&conv(1)), "but not remembered");
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
}
