//! Which sessions this gateway hosts, by user, and how many users of each
//! fan-out shard they are: the shard's binding is needed while that count
//! is above zero. Pure data; [`super::Hub`] does the binding.

use crate::outbound::Outbound;
use chat_shared::amqp::Topology;
use chat_shared::ids::UserId;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Notify, mpsc};

/// The hub's handle on one session.
#[derive(Clone)]
pub struct SessionHandle {
    pub session_id: Arc<str>,
    pub tx: mpsc::Sender<Outbound>,
    /// Woken when the session's queue overflowed: the session closes itself.
    pub overflow: Arc<Notify>,
}

/// What adding a session needs first.
#[derive(Debug, PartialEq, Eq)]
pub struct Admission {
    /// The user's shard, when this is the shard's first user here: bind it
    /// before the session is added.
    pub bind: Option<u16>,
}

/// What removing a session left.
#[derive(Debug, PartialEq, Eq)]
pub struct Removal {
    /// It was the user's last session here.
    pub last_of_user: bool,
    /// The user's shard, when no user of it is left here: unbind it.
    pub unbind: Option<u16>,
}

/// `user` already has the most sessions allowed here.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManySessions;

pub struct Registry {
    sessions: HashMap<UserId, Vec<SessionHandle>>,
    /// Users here per shard (a shard is bound while its count is > 0).
    users_per_shard: HashMap<u16, usize>,
    route_shards: u16,
    /// Sessions in `sessions`, kept as they come and go: every WebSocket
    /// upgrade asks (the capacity check), under the lock every delivery
    /// takes, and counting them anew took time in proportion to the users.
    count: usize,
}

impl Registry {
    pub fn new(route_shards: u16) -> Self {
        Self {
            sessions: HashMap::new(),
            users_per_shard: HashMap::new(),
            route_shards,
            count: 0,
        }
    }

    fn shard_of(&self, user: UserId) -> u16 {
        Topology::shard_of(user, self.route_shards)
    }

    /// Whether `user` may have one more session here, and what to bind first.
    pub fn admit(&self, user: UserId, max_per_user: usize) -> Result<Admission, TooManySessions> {
        let have = self.sessions_of_user(user);
        if have >= max_per_user {
            return Err(TooManySessions);
        }
        let shard = self.shard_of(user);
        let shard_empty = self.users_per_shard.get(&shard).copied().unwrap_or(0) == 0;
        Ok(Admission {
            bind: (have == 0 && shard_empty).then_some(shard),
        })
    }

    /// Adds a session (after [`Registry::admit`] and its binding); `true`
    /// when it is the user's first here.
    pub fn add(&mut self, user: UserId, handle: SessionHandle) -> bool {
        let first = !self.sessions.contains_key(&user);
        if first {
            *self.users_per_shard.entry(self.shard_of(user)).or_insert(0) += 1;
        }
        self.sessions.entry(user).or_default().push(handle);
        self.count += 1;
        first
    }

    pub fn remove(&mut self, user: UserId, session_id: &str) -> Removal {
        let none = Removal {
            last_of_user: false,
            unbind: None,
        };
        let Some(list) = self.sessions.get_mut(&user) else {
            return none;
        };
        let before = list.len();
        list.retain(|s| &*s.session_id != session_id);
        self.count -= before - list.len();
        if !list.is_empty() {
            return none;
        }
        self.sessions.remove(&user);
        let shard = self.shard_of(user);
        let left = match self.users_per_shard.get_mut(&shard) {
            Some(count) => {
                *count = count.saturating_sub(1);
                *count
            }
            None => 0,
        };
        if left == 0 {
            self.users_per_shard.remove(&shard);
        }
        Removal {
            last_of_user: true,
            unbind: (left == 0).then_some(shard),
        }
    }

    /// The sessions of `user` here.
    pub fn sessions_of(&self, user: UserId) -> &[SessionHandle] {
        self.sessions.get(&user).map_or(&[], Vec::as_slice)
    }

    /// One session of `user`, by its id (answers meant for it alone).
    pub fn session(&self, user: UserId, session_id: &str) -> Option<&SessionHandle> {
        self.sessions_of(user)
            .iter()
            .find(|s| *s.session_id == *session_id)
    }

    pub fn hosts(&self, user: UserId) -> bool {
        self.sessions.contains_key(&user)
    }

    pub fn sessions_of_user(&self, user: UserId) -> usize {
        self.sessions_of(user).len()
    }

    /// The users with at least one session here.
    pub fn users(&self) -> Vec<UserId> {
        self.sessions.keys().copied().collect()
    }

    pub fn session_count(&self) -> usize {
        self.count
    }

    /// Every session here (for the drain).
    pub fn handles(&self) -> Vec<SessionHandle> {
        self.sessions.values().flatten().cloned().collect()
    }

    /// Frames queued towards all sessions, not yet written.
    pub fn queued_frames(&self) -> usize {
        self.sessions
            .values()
            .flatten()
            .map(|s| s.tx.max_capacity() - s.tx.capacity())
            .sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn handle(id: &str) -> (SessionHandle, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(4);
        let handle = SessionHandle {
            session_id: id.into(),
            tx,
            overflow: Arc::new(Notify::new()),
        };
        (handle, rx)
    }

    pub fn user(id: i64) -> UserId {
        UserId::new(id).unwrap()
    }

    #[test]
    fn a_shard_is_bound_for_its_first_user_and_unbound_after_its_last() {
        // Four shards: users 1 and 5 share shard 1, user 2 is on shard 2.
        let mut registry = Registry::new(4);
        assert_eq!(registry.admit(user(1), 8), Ok(Admission { bind: Some(1) }));
        assert!(registry.add(user(1), handle("a").0));
        // A second session of the same user binds nothing.
        assert_eq!(registry.admit(user(1), 8), Ok(Admission { bind: None }));
        assert!(!registry.add(user(1), handle("b").0));
        // Another user of the same shard binds nothing either.
        assert_eq!(registry.admit(user(5), 8), Ok(Admission { bind: None }));
        assert!(registry.add(user(5), handle("c").0));
        assert_eq!(registry.admit(user(2), 8), Ok(Admission { bind: Some(2) }));
        registry.add(user(2), handle("d").0);
        assert_eq!(registry.session_count(), 4);

        let removal = registry.remove(user(1), "a");
        assert_eq!(registry.session_count(), 3);
        assert_eq!(
            removal,
            Removal {
                last_of_user: false,
                unbind: None
            }
        );
        let removal = registry.remove(user(1), "b");
        assert_eq!(
            removal,
            Removal {
                last_of_user: true,
                unbind: None
            }
        );
        let removal = registry.remove(user(5), "c");
        assert_eq!(
            removal,
            Removal {
                last_of_user: true,
                unbind: Some(1)
            }
        );
        let removal = registry.remove(user(2), "d");
        assert_eq!(
            removal,
            Removal {
                last_of_user: true,
                unbind: Some(2)
            }
        );
        assert_eq!(registry.session_count(), 0);
        // A session that is not here changes nothing.
        let removal = registry.remove(user(2), "d");
        assert_eq!(registry.session_count(), 0);
        assert_eq!(
            removal,
            Removal {
                last_of_user: false,
                unbind: None
            }
        );
    }

    #[test]
    fn a_user_gets_at_most_the_sessions_allowed() {
        let mut registry = Registry::new(4);
        registry.add(user(1), handle("a").0);
        registry.add(user(1), handle("b").0);
        assert_eq!(registry.admit(user(1), 2), Err(TooManySessions));
        assert!(registry.admit(user(2), 2).is_ok());
        assert_eq!(registry.sessions_of_user(user(1)), 2);
        assert!(registry.session(user(1), "b").is_some());
        assert!(registry.session(user(1), "c").is_none());
    }
}
