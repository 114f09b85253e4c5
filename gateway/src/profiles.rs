//! People's names as the host site gives them in tokens: a token's `name`
//! claim is stored when the token is used (a session, an API request), and
//! everyone who shares a conversation with its user hears of a change (a
//! `user` frame, on whichever gateway they are). Cheap on the hot path: a
//! gateway remembers the name it last stored for each user for
//! [`REMEMBERED_FOR`], so a user's requests cost no write; only a name it has
//! not stored lately is written, off the request's path, a bounded number at
//! a time. A claim that breaks the name rules leaves the stored name alone.

use crate::auth::AuthUser;
use crate::store::Store;
use chat_shared::amqp::Announcer;
use chat_shared::bus::GatewayEvent;
use chat_shared::directory::Directory;
use chat_shared::ids::UserId;
use chat_shared::profile::{DisplayName, User};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// How long a stored name is taken as still stored (another gateway may
/// have stored another since: the most recent token wins, up to this).
pub const REMEMBERED_FOR: Duration = Duration::from_secs(60);
/// Users remembered at most (then all are forgotten at once).
const REMEMBERED: usize = 100_000;
/// Names being written at once, at most; beyond, a token's name waits for
/// its next use.
const WRITES: usize = 16;

pub struct Profiles {
    store: Store,
    directory: Directory,
    events: Announcer,
    stored: Mutex<HashMap<UserId, (DisplayName, Instant)>>,
    writes: Arc<Semaphore>,
}

impl Profiles {
    pub fn new(store: Store, directory: Directory, events: Announcer) -> Self {
        Self {
            store,
            directory,
            events,
            stored: Mutex::new(HashMap::new()),
            writes: Arc::new(Semaphore::new(WRITES)),
        }
    }

    /// `user`'s token was used: store its name if this gateway has not
    /// lately. Returns at once.
    pub fn token_used(self: &Arc<Self>, user: &AuthUser) {
        let Some(name) = user
            .name
            .as_deref()
            .and_then(|n| DisplayName::parse(n).ok())
        else {
            return;
        };
        if self.stored_lately(user.user_id, &name) {
            return;
        }
        let Ok(permit) = self.writes.clone().try_acquire_owned() else {
            return;
        };
        let (profiles, id) = (self.clone(), user.user_id);
        tokio::spawn(async move {
            profiles.store_name(id, name).await;
            drop(permit);
        });
    }

    fn stored_lately(&self, user: UserId, name: &DisplayName) -> bool {
        let stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        stored
            .get(&user)
            .is_some_and(|(known, at)| known == name && at.elapsed() < REMEMBERED_FOR)
    }

    async fn store_name(&self, user: UserId, name: DisplayName) {
        match self.store.set_name(user, name.as_str()).await {
            Ok(changed) => {
                self.remember(user, name);
                if let Some(profile) = changed {
                    self.announce(profile).await;
                }
            }
            Err(e) => {
                tracing::warn!(user.id = %user, error = %e, "the name of a token not stored; its next use tries again")
            }
        }
    }

    fn remember(&self, user: UserId, name: DisplayName) {
        let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        if stored.len() >= REMEMBERED {
            stored.clear();
        }
        stored.insert(user, (name, Instant::now()));
    }

    /// Tells everyone who shares a conversation with the user.
    pub async fn announce(&self, user: User) {
        let recipients = match self.directory.sharing_with(user.id).await {
            Ok(recipients) => recipients,
            Err(e) => {
                tracing::warn!(user.id = %user.id, error = %e, "profile change not announced");
                return;
            }
        };
        let id = user.id;
        let event = GatewayEvent::Profile {
            user,
            recipients: recipients.clone(),
        };
        if let Err(e) = self.events.send(&recipients, event).await {
            tracing::warn!(user.id = %id, error = %e, "profile change not announced");
        }
    }
}
