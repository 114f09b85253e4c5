//! The names of exchanges, queues and routing keys under one prefix, and
//! the routing shard of each user.

use crate::config::{AmqpSettings, QueueType};
use crate::ids::UserId;
use lapin::types::{AMQPValue, FieldTable};

/// Names of exchanges, queues and routing keys under one prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    pub partitions: u16,
    pub route_shards: u16,
    /// Whether sends on the persist path are published persistent.
    pub persistent_sends: bool,
    /// The type of the shared durable queues.
    pub queue_type: QueueType,
}

impl Topology {
    pub fn new(settings: &AmqpSettings) -> Self {
        Self {
            prefix: settings.prefix.clone(),
            partitions: settings.partitions.get(),
            route_shards: settings.route_shards.get(),
            persistent_sends: settings.persistent_sends,
            queue_type: settings.queue_type,
        }
    }
    /// The arguments every shared durable queue starts from: its type.
    pub fn shared_queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        args
    }
    pub fn persist_exchange(&self) -> String {
        format!("{}.persist", self.prefix)
    }
    pub fn persist_queue(&self, partition: u16) -> String {
        format!("{}.persist.{partition}", self.prefix)
    }
    /// The dead-letter exchange.
    pub fn dead_letters(&self) -> String {
        format!("{}.persist.dead", self.prefix)
    }
    /// The dead-letter queue, bound to [`Self::dead_letters`] and bounded.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.persist.dead-letters", self.prefix)
    }
    pub fn fanout_exchange(&self) -> String {
        format!("{}.fanout", self.prefix)
    }
    /// What every gateway must hear, whatever users it hosts (a change that
    /// empties its caches): each gateway queue is bound to it.
    pub fn broadcast_exchange(&self) -> String {
        format!("{}.broadcast", self.prefix)
    }
    pub fn presence_queue(&self) -> String {
        format!("{}.presence", self.prefix)
    }
    /// Stored messages for the unread notifier (version 2's webhook).
    pub fn notify_queue(&self) -> String {
        format!("{}.notify", self.prefix)
    }
    pub fn gateway_queue(&self, instance: &str) -> String {
        format!("{}.gw.{instance}", self.prefix)
    }
    /// The fan-out shard of a user.
    pub fn route_shard(&self, user: UserId) -> u16 {
        Self::shard_of(user, self.route_shards)
    }
    /// The fan-out shard of a user, of `route_shards` shards.
    pub fn shard_of(user: UserId, route_shards: u16) -> u16 {
        user.get().rem_euclid(i64::from(route_shards.max(1))) as u16
    }
    /// The fan-out routing key of a shard.
    pub fn shard_key(shard: u16) -> String {
        format!("shard.{shard}")
    }
    /// The routing keys that reach every gateway hosting any of `users`,
    /// each once.
    pub fn route_keys(&self, users: impl IntoIterator<Item = UserId>) -> Vec<String> {
        let shards: std::collections::BTreeSet<u16> =
            users.into_iter().map(|u| self.route_shard(u)).collect();
        shards.into_iter().map(Self::shard_key).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(route_shards: u16) -> Topology {
        Topology {
            prefix: "chat".into(),
            partitions: 2,
            route_shards,
            persistent_sends: false,
            queue_type: QueueType::Classic,
        }
    }

    fn users(ids: &[i64]) -> Vec<UserId> {
        ids.iter()
            .map(|id| UserId::new(*id).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    #[test]
    fn recipients_in_one_shard_make_one_routing_key() {
        let topo = topology(4);
        assert_eq!(topo.route_keys(users(&[1, 5, 9])), ["shard.1"]);
    }

    #[test]
    fn routing_keys_name_each_shard_of_the_recipients_once() {
        let topo = topology(4);
        assert_eq!(
            topo.route_keys(users(&[7, 2, 3, 6, 11])),
            ["shard.2", "shard.3"]
        );
    }

    #[test]
    fn with_more_shards_than_users_every_user_has_a_shard_of_their_own() {
        let topo = topology(64);
        assert_eq!(topo.route_keys(users(&[1, 2])), ["shard.1", "shard.2"]);
        assert_eq!(topo.route_shard(users(&[65])[0]), 1);
    }
}
