//! Contacts (version 2 consent): a message stored in a direct conversation
//! makes the other member a contact of the sender (table `contacts`). The
//! persister records a pair in the commit that stores the pair's first
//! message, and remembers the pairs it has recorded, so the steady state
//! (people who already wrote to each other) costs no statement at all.

use super::plan::{Members, NewRows};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Pairs remembered at most (then all are forgotten at once, and the next
/// batches record theirs again: `ON CONFLICT DO NOTHING`).
const REMEMBERED: usize = 200_000;

/// (sender, peer): the peer is the sender's contact.
pub(super) type Pair = (i64, i64);

/// The pairs this persister knows are in `contacts`.
#[derive(Clone, Default)]
pub(super) struct KnownContacts(Arc<Mutex<HashSet<Pair>>>);

impl KnownContacts {
    /// The pairs the new rows make that are not known to be recorded.
    /// `direct`: the conversations of the batch that are direct.
    pub fn unrecorded(
        &self,
        rows: &NewRows<'_>,
        members: &Members,
        direct: &HashSet<i64>,
    ) -> Vec<Pair> {
        let known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut pairs: Vec<Pair> = rows
            .conversations
            .iter()
            .zip(&rows.senders)
            // A system message (sender 0) makes no contact.
            .filter(|(c, sender)| **sender > 0 && direct.contains(c))
            .filter_map(|(c, sender)| {
                let peer = members.get(c)?.iter().find(|m| m.get() != *sender)?;
                Some((*sender, peer.get()))
            })
            .filter(|pair| !known.contains(pair))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        pairs
    }

    /// `pairs` are committed.
    pub fn recorded(&self, pairs: &[Pair]) {
        if pairs.is_empty() {
            return;
        }
        let mut known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() + pairs.len() > REMEMBERED {
            known.clear();
        }
        known.extend(pairs.iter().copied());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_shared::ids::UserId;

    fn rows<'a>(messages: &[(i64, i64)]) -> NewRows<'a> {
        NewRows {
            conversations: messages.iter().map(|(c, _)| *c).collect(),
            seqs: (1..=messages.len() as i64).collect(),
            senders: messages.iter().map(|(_, u)| *u).collect(),
            keys: vec!["k"; messages.len()],
            bodies: vec!["b"; messages.len()],
            cards: vec![None; messages.len()],
        }
    }

    fn members(of: &[(i64, &[i64])]) -> Members {
        of.iter()
            .map(|(c, ids)| (*c, ids.iter().map(|u| UserId::new(*u).unwrap()).collect()))
            .collect()
    }

    #[test]
    fn a_direct_message_makes_the_peer_a_contact_of_the_sender_once() {
        let known = KnownContacts::default();
        let members = members(&[(1, &[7, 9]), (2, &[7, 8, 9])]);
        let direct = HashSet::from([1]);
        // Two messages by 7 and one by 9 in the direct conversation 1, one
        // in the group 2 and a system message: those make no contact.
        let new = rows(&[(1, 7), (1, 7), (1, 9), (2, 7), (1, 0)]);
        let pairs = known.unrecorded(&new, &members, &direct);
        assert_eq!(pairs, vec![(7, 9), (9, 7)]);
        known.recorded(&pairs);
        assert!(known.unrecorded(&new, &members, &direct).is_empty());
    }

    #[test]
    fn pairs_not_committed_are_asked_again() {
        let known = KnownContacts::default();
        let members = members(&[(1, &[7, 9])]);
        let direct = HashSet::from([1]);
        let new = rows(&[(1, 7)]);
        assert_eq!(known.unrecorded(&new, &members, &direct), vec![(7, 9)]);
        // (The commit failed: `recorded` was not called.)
        assert_eq!(known.unrecorded(&new, &members, &direct), vec![(7, 9)]);
    }
}
