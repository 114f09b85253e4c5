//! The membership gate of `read` and `typing` frames: Postgres is asked
//! once per conversation and session, and a member is remembered (a
//! member's frames then cost no round trip). When Postgres cannot answer,
//! the frame goes on and the service behind decides.

use crate::store::{Membership, Store, StoreError};
use chat_shared::ids::{ConversationId, UserId};
use futures_util::future::BoxFuture;
use std::collections::HashSet;

/// Conversations a session remembers it is a member of (then forgets all).
const REMEMBERED: usize = 64;

/// Who is a member of what: Postgres, or a fake in unit tests.
pub trait MembershipLookup: Send + Sync + 'static {
    fn membership(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> BoxFuture<'_, Result<Membership, StoreError>>;
}

impl MembershipLookup for Store {
    fn membership(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> BoxFuture<'_, Result<Membership, StoreError>> {
        Box::pin(Store::membership(self, conversation, user))
    }
}

/// The conversations one session's user is known to be a member of.
#[derive(Debug, Default)]
pub struct KnownMemberships {
    member_of: HashSet<ConversationId>,
}

impl KnownMemberships {
    /// Whether `user` may send frames about `conversation`.
    pub async fn admits(
        &mut self,
        lookup: &dyn MembershipLookup,
        conversation: ConversationId,
        user: UserId,
    ) -> bool {
        if self.member_of.contains(&conversation) {
            return true;
        }
        match lookup.membership(conversation, user).await {
            Ok(Membership::Member) => {
                if self.member_of.len() >= REMEMBERED {
                    self.member_of.clear();
                }
                self.member_of.insert(conversation);
                true
            }
            Ok(Membership::NotMember | Membership::NoSuchConversation) => false,
            Err(e) => {
                tracing::warn!(conversation.id = %conversation, error = %e, "membership check failed; letting the frame through");
                true
            }
        }
    }
}

/// A fake of Postgres's answers, for unit tests.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::sync::Mutex;

    /// Members by conversation; counts the questions asked.
    #[derive(Default)]
    pub struct FakeMembers {
        pub members: Vec<(ConversationId, UserId)>,
        pub asked: Mutex<usize>,
        pub failing: bool,
    }

    impl FakeMembers {
        /// `(conversation, user)` pairs that are members.
        pub fn with(pairs: &[(i64, i64)]) -> Self {
            let members = pairs
                .iter()
                .map(|(c, u)| (ConversationId::new(*c).unwrap(), UserId::new(*u).unwrap()))
                .collect();
            Self {
                members,
                ..Self::default()
            }
        }
    }

    impl MembershipLookup for FakeMembers {
        fn membership(
            &self,
            conversation: ConversationId,
            user: UserId,
        ) -> BoxFuture<'_, Result<Membership, StoreError>> {
            *self.asked.lock().unwrap() += 1;
            let answer = if self.failing {
                Err(StoreError::Db(sea_orm::sqlx::Error::PoolTimedOut))
            } else if self.members.contains(&(conversation, user)) {
                Ok(Membership::Member)
            } else {
                Ok(Membership::NotMember)
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

    #[tokio::test]
    async fn a_member_is_asked_about_once_and_a_non_member_every_time() {
        let lookup = FakeMembers {
            members: vec![(conv(1), user(7))],
            ..Default::default()
        };
        let mut known = KnownMemberships::default();
        assert!(known.admits(&lookup, conv(1), user(7)).await);
        assert!(known.admits(&lookup, conv(1), user(7)).await);
        assert_eq!(*lookup.asked.lock().unwrap(), 1);
        assert!(!known.admits(&lookup, conv(2), user(7)).await);
        assert!(!known.admits(&lookup, conv(2), user(7)).await);
        assert_eq!(*lookup.asked.lock().unwrap(), 3);
    }

    #[tokio::test]
    async fn when_postgres_cannot_answer_the_frame_goes_on() {
        let lookup = FakeMembers {
            failing: true,
            ..Default::default()
        };
        let mut known = KnownMemberships::default();
        assert!(known.admits(&lookup, conv(1), user(7)).await);
        // Not remembered: the next frame asks again.
        assert!(known.admits(&lookup, conv(1), user(7)).await);
        assert_eq!(*lookup.asked.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn it_remembers_a_bounded_number_of_conversations() {
        let members = (1..=200).map(|c| (conv(c), user(7))).collect();
        let lookup = FakeMembers {
            members,
            ..Default::default()
        };
        let mut known = KnownMemberships::default();
        for c in 1..=200 {
            assert!(known.admits(&lookup, conv(c), user(7)).await);
        }
        assert!(known.member_of.len() <= REMEMBERED);
        // What it holds it still remembers: no question asked again.
        let asked = *lookup.asked.lock().unwrap();
        assert!(known.admits(&lookup, conv(200), user(7)).await);
        assert_eq!(*lookup.asked.lock().unwrap(), asked);
    }
}
