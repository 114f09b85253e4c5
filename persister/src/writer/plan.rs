//! The decisions of a group commit, apart from Postgres: which sends are
//! new, which repeat one already stored or one earlier in the batch, which
//! are refused; how many `seq` each conversation needs; and, once the rows
//! are in, what to tell whom. Pure functions of what the statements read,
//! unit-tested below.

use super::{Outcome, Request, WriteError};
use chat_shared::bus::{PersistCommand, ReadCommand, SendCommand, SendOutcome};
use chat_shared::ids::{ClientMsgId, MessageId, SenderId, UserId};
use chat_shared::protocol::{ErrorCode, Message, MessageKind};
use std::collections::{BTreeMap, HashMap};

/// A send of the batch: its position among the requests, and whether the
/// broker delivered it before.
pub(super) struct Send<'a> {
    pub request: usize,
    pub command: &'a SendCommand,
    pub redelivered: bool,
}

/// The requests of a batch, sorted: its sends in order, and its read
/// markers merged (the highest `seq` per conversation and user).
pub(super) struct Batch<'a> {
    pub sends: Vec<Send<'a>>,
    pub reads: HashMap<(i64, i64), i64>,
}

impl<'a> Batch<'a> {
    pub fn of(requests: &'a [Request<'a>]) -> Self {
        let mut sends = Vec::with_capacity(requests.len());
        let mut reads: HashMap<(i64, i64), i64> = HashMap::new();
        for (request, r) in requests.iter().enumerate() {
            match r.command {
                PersistCommand::Send(command) => sends.push(Send {
                    request,
                    command,
                    redelivered: r.redelivered,
                }),
                PersistCommand::Read(read) => {
                    let seq = reads
                        .entry((read.conversation_id.get(), read.user_id.get()))
                        .or_insert(0);
                    *seq = (*seq).max(read.seq);
                }
            }
        }
        Self { sends, reads }
    }

    /// Every conversation whose members the plan needs: the sends', and
    /// those of messages already stored.
    pub fn conversations(&self, existing: &Existing) -> Vec<i64> {
        let mut conversations: Vec<i64> = self
            .sends
            .iter()
            .map(|s| s.command.conversation_id.get())
            .chain(existing.values().map(|m| m.conversation_id.get()))
            .collect();
        conversations.sort_unstable();
        conversations.dedup();
        conversations
    }
}

/// Messages already stored, by their idempotency key.
pub(super) type Existing = HashMap<(SenderId, ClientMsgId), Message>;
/// Members of each conversation involved, by conversation id.
pub(super) type Members = HashMap<i64, Vec<UserId>>;

/// How one send will be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Plan {
    Existing(Message),
    /// The same key as the send at this position, earlier in the batch.
    SameAsEarlier(usize),
    /// New: the `ordinal`-th new message of its conversation in this batch.
    New {
        ordinal: i64,
    },
    Refused(ErrorCode, &'static str),
}

pub(super) struct Planned {
    /// One per send, in order.
    pub plans: Vec<Plan>,
    /// New messages per conversation: the `seq` to reserve.
    pub counts: BTreeMap<i64, i64>,
}

pub(super) fn plan(sends: &[Send<'_>], existing: &Existing, members: &Members) -> Planned {
    let mut first_of: HashMap<(SenderId, &ClientMsgId), usize> = HashMap::new();
    let mut counts: BTreeMap<i64, i64> = BTreeMap::new();
    let mut plans = Vec::with_capacity(sends.len());
    for (i, s) in sends.iter().enumerate() {
        let c = s.command;
        let key = (c.sender_id, &c.client_msg_id);
        // Resends are rare: look (and copy the key) only when there are any.
        let resent = (!existing.is_empty())
            .then(|| existing.get(&(c.sender_id, c.client_msg_id.clone())))
            .flatten();
        let plan = if let Some(m) = resent {
            Plan::Existing(m.clone())
        } else if let Some(&earlier) = first_of.get(&key) {
            Plan::SameAsEarlier(earlier)
        } else {
            match members.get(&c.conversation_id.get()) {
                None => Plan::Refused(ErrorCode::NotFound, "no such conversation"),
                // The system (the host site's server API) writes in any
                // conversation; a user only in their own.
                Some(m) if !c.sender_id.is_system() && !m.iter().any(|u| c.sender_id == *u) => {
                    Plan::Refused(ErrorCode::Forbidden, "not a member of this conversation")
                }
                Some(_) => {
                    first_of.insert(key, i);
                    let n = counts.entry(c.conversation_id.get()).or_insert(0);
                    *n += 1;
                    Plan::New { ordinal: *n }
                }
            }
        };
        plans.push(plan);
    }
    Planned { plans, counts }
}

/// The rows of the new messages, as the INSERT's arrays.
#[derive(Default)]
pub(super) struct NewRows<'a> {
    pub conversations: Vec<i64>,
    pub seqs: Vec<i64>,
    pub senders: Vec<i64>,
    pub keys: Vec<&'a str>,
    pub bodies: Vec<&'a str>,
    /// Each card as JSON (rare: most messages have none).
    pub cards: Vec<Option<String>>,
}

impl Planned {
    /// The `seq` of a new send: its conversation's reserved run starts
    /// after `base`.
    fn seq(base: &HashMap<i64, i64>, conversation: i64, ordinal: i64) -> Result<i64, WriteError> {
        base.get(&conversation)
            .map(|first| first + ordinal)
            .ok_or_else(|| WriteError::Corrupt(format!("conversation {conversation} vanished")))
    }

    /// The rows to insert, given the `seq` each conversation had before
    /// its run was reserved (`base`).
    pub fn new_rows<'a>(
        &self,
        sends: &[Send<'a>],
        base: &HashMap<i64, i64>,
    ) -> Result<NewRows<'a>, WriteError> {
        let mut rows = NewRows::default();
        for (s, plan) in sends.iter().zip(&self.plans) {
            if let Plan::New { ordinal } = plan {
                let c = s.command;
                let conversation = c.conversation_id.get();
                rows.conversations.push(conversation);
                rows.seqs.push(Self::seq(base, conversation, *ordinal)?);
                rows.senders.push(c.sender_id.get());
                rows.keys.push(c.client_msg_id.as_str());
                rows.bodies.push(&c.body);
                rows.cards.push(c.card.as_ref().map(|card| {
                    serde_json::to_string(card)
                        .unwrap_or_else(|_| unreachable!("a card is plain data"))
                }));
            }
        }
        Ok(rows)
    }

    /// One outcome per send, in order, then one per read marker that moved.
    /// `ids`: the id of each inserted row by (conversation, seq).
    pub fn outcomes(
        self,
        sends: &[Send<'_>],
        base: &HashMap<i64, i64>,
        ids: &HashMap<(i64, i64), i64>,
        members: &Members,
        moved: Vec<(ReadCommand, Vec<UserId>)>,
        now: chat_shared::time::Timestamp,
    ) -> Result<Vec<Outcome>, WriteError> {
        let members_of =
            |conversation: i64| members.get(&conversation).cloned().unwrap_or_default();
        let mut stored: Vec<Option<Message>> = vec![None; sends.len()];
        let mut outcomes = Vec::with_capacity(sends.len() + moved.len());
        for (i, (s, plan)) in sends.iter().zip(self.plans).enumerate() {
            let (c, request) = (s.command, s.request);
            let outcome = match plan {
                Plan::New { ordinal } => {
                    let conversation = c.conversation_id.get();
                    let seq = Self::seq(base, conversation, ordinal)?;
                    let id = ids.get(&(conversation, seq)).copied().ok_or_else(|| {
                        WriteError::Corrupt(format!("no id returned for {conversation}/{seq}"))
                    })?;
                    let message = Message {
                        id: MessageId(id),
                        conversation_id: c.conversation_id,
                        seq,
                        sender_id: c.sender_id,
                        client_msg_id: c.client_msg_id.clone(),
                        body: c.body.clone(),
                        created_at: now,
                        kind: MessageKind::of(c.sender_id),
                        card: c.card.as_deref().cloned(),
                    };
                    stored[i] = Some(message.clone());
                    Outcome::Deliver {
                        request,
                        members: members_of(conversation),
                        message,
                    }
                }
                Plan::Existing(message) if s.redelivered => Outcome::Deliver {
                    request,
                    members: members_of(message.conversation_id.get()),
                    message,
                },
                Plan::Existing(message) => Outcome::Reply {
                    request,
                    outcome: SendOutcome::Stored { message },
                },
                Plan::SameAsEarlier(earlier) => match stored[earlier].clone() {
                    Some(message) => Outcome::Reply {
                        request,
                        outcome: SendOutcome::Stored { message },
                    },
                    None => Outcome::refused(
                        request,
                        &c.client_msg_id,
                        ErrorCode::Internal,
                        "message could not be stored",
                    ),
                },
                Plan::Refused(code, why) => Outcome::refused(request, &c.client_msg_id, code, why),
            };
            outcomes.push(outcome);
        }
        for (read, conversation_members) in moved {
            let recipients = conversation_members
                .into_iter()
                .filter(|m| *m != read.user_id)
                .collect();
            outcomes.push(Outcome::ReadMoved { read, recipients });
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_shared::ids::ConversationId;

    fn user(id: i64) -> UserId {
        UserId::new(id).unwrap_or_else(|e| panic!("{e}"))
    }

    fn send(conversation: i64, sender: i64, key: &str) -> PersistCommand {
        PersistCommand::Send(SendCommand {
            session_id: format!("session-{sender}"),
            reply_to: "gw".into(),
            conversation_id: ConversationId::new(conversation).unwrap_or_else(|e| panic!("{e}")),
            sender_id: SenderId::new(sender).unwrap_or_else(|e| panic!("{e}")),
            client_msg_id: ClientMsgId::try_from(key.to_owned()).unwrap_or_else(|e| panic!("{e}")),
            body: format!("body of {key}"),
            card: None,
            reply_when_stored: false,
            trace: None,
            received_at_us: None,
        })
    }

    fn read(conversation: i64, reader: i64, seq: i64) -> PersistCommand {
        PersistCommand::Read(ReadCommand {
            conversation_id: ConversationId::new(conversation).unwrap_or_else(|e| panic!("{e}")),
            user_id: user(reader),
            seq,
        })
    }

    fn requests(commands: &[PersistCommand]) -> Vec<Request<'_>> {
        commands
            .iter()
            .map(|command| Request {
                command,
                redelivered: false,
            })
            .collect()
    }

    /// Conversation 1: users 1 and 2. Conversation 2: users 1 and 3.
    fn members() -> Members {
        HashMap::from([(1, vec![user(1), user(2)]), (2, vec![user(1), user(3)])])
    }

    fn stored(conversation: i64, seq: i64, sender: i64, key: &str) -> Message {
        Message {
            id: MessageId(100 + seq),
            conversation_id: ConversationId::new(conversation).unwrap_or_else(|e| panic!("{e}")),
            seq,
            sender_id: user(sender).into(),
            client_msg_id: ClientMsgId::try_from(key.to_owned()).unwrap_or_else(|e| panic!("{e}")),
            body: format!("body of {key}"),
            created_at: chat_shared::time::Timestamp::UNIX_EPOCH,
            kind: MessageKind::User,
            card: None,
        }
    }

    #[test]
    fn new_sends_take_consecutive_seqs_per_conversation_in_batch_order() {
        let commands = [send(1, 1, "a"), send(2, 1, "b"), send(1, 2, "c")];
        let requests = requests(&commands);
        let batch = Batch::of(&requests);
        let planned = plan(&batch.sends, &Existing::new(), &members());
        assert_eq!(
            planned.plans,
            [
                Plan::New { ordinal: 1 },
                Plan::New { ordinal: 1 },
                Plan::New { ordinal: 2 }
            ]
        );
        assert_eq!(planned.counts, BTreeMap::from([(1, 2), (2, 1)]));
        // Conversation 1 had seq 7, conversation 2 had none.
        let base = HashMap::from([(1, 7), (2, 0)]);
        let rows = planned.new_rows(&batch.sends, &base).unwrap();
        assert_eq!(rows.conversations, [1, 2, 1]);
        assert_eq!(rows.seqs, [8, 1, 9]);
        assert_eq!(rows.keys, ["a", "b", "c"]);
    }

    #[test]
    fn strangers_and_unknown_conversations_are_refused_and_take_no_seq() {
        let commands = [send(1, 3, "stranger"), send(9, 1, "nowhere")];
        let requests = requests(&commands);
        let batch = Batch::of(&requests);
        let planned = plan(&batch.sends, &Existing::new(), &members());
        assert_eq!(
            planned.plans,
            [
                Plan::Refused(ErrorCode::Forbidden, "not a member of this conversation"),
                Plan::Refused(ErrorCode::NotFound, "no such conversation"),
            ]
        );
        assert!(planned.counts.is_empty());
    }

    #[test]
    fn the_system_writes_in_any_conversation_that_exists() {
        // Sender 0: the host site's server API, a member of nothing.
        let commands = [send(1, 0, "notice"), send(9, 0, "nowhere")];
        let requests = requests(&commands);
        let batch = Batch::of(&requests);
        let planned = plan(&batch.sends, &Existing::new(), &members());
        assert_eq!(
            planned.plans,
            [
                Plan::New { ordinal: 1 },
                Plan::Refused(ErrorCode::NotFound, "no such conversation"),
            ]
        );
    }

    #[test]
    fn a_key_seen_twice_is_stored_once_and_both_are_answered_with_it() {
        let commands = [send(1, 1, "same"), read(1, 2, 1), send(1, 1, "same")];
        let requests = requests(&commands);
        let batch = Batch::of(&requests);
        let planned = plan(&batch.sends, &Existing::new(), &members());
        assert_eq!(
            planned.plans,
            [Plan::New { ordinal: 1 }, Plan::SameAsEarlier(0)]
        );
        let base = HashMap::from([(1, 0)]);
        let ids = HashMap::from([((1, 1), 42)]);
        let outcomes = planned
            .outcomes(
                &batch.sends,
                &base,
                &ids,
                &members(),
                Vec::new(),
                chat_shared::time::Timestamp::UNIX_EPOCH,
            )
            .unwrap();
        let Outcome::Deliver {
            request: 0,
            message,
            members: to,
        } = &outcomes[0]
        else {
            panic!("the first is delivered: {outcomes:?}")
        };
        assert_eq!((message.id, message.seq), (MessageId(42), 1));
        assert_eq!(to, &[user(1), user(2)]);
        // The repeat is answered alone, with the same message; it names its
        // own request (2: the read marker sits between them).
        assert_eq!(
            outcomes[1],
            Outcome::Reply {
                request: 2,
                outcome: SendOutcome::Stored {
                    message: message.clone()
                }
            }
        );
    }

    #[test]
    fn a_resend_of_a_stored_message_is_answered_with_it_and_delivered_again_only_if_redelivered() {
        let commands = [send(1, 1, "old"), send(1, 1, "old")];
        let mut requests = requests(&commands);
        requests[1].redelivered = true;
        let existing = Existing::from([(
            (user(1).into(), "old".to_owned().try_into().unwrap()),
            stored(1, 3, 1, "old"),
        )]);
        let batch = Batch::of(&requests);
        assert_eq!(batch.conversations(&existing), [1]);
        let planned = plan(&batch.sends, &existing, &members());
        assert!(planned.counts.is_empty(), "no new seq");
        let outcomes = planned
            .outcomes(
                &batch.sends,
                &HashMap::new(),
                &HashMap::new(),
                &members(),
                Vec::new(),
                chat_shared::time::Timestamp::UNIX_EPOCH,
            )
            .unwrap();
        assert_eq!(
            outcomes[0],
            Outcome::Reply {
                request: 0,
                outcome: SendOutcome::Stored {
                    message: stored(1, 3, 1, "old")
                }
            }
        );
        assert!(matches!(
            &outcomes[1],
            Outcome::Deliver { request: 1, message, .. } if message.seq == 3
        ));
    }

    #[test]
    fn read_markers_of_a_batch_merge_to_the_highest_and_their_moves_follow_the_sends() {
        let commands = [read(1, 2, 3), send(1, 1, "a"), read(1, 2, 5), read(1, 2, 4)];
        let requests = requests(&commands);
        let batch = Batch::of(&requests);
        assert_eq!(batch.reads, HashMap::from([((1, 2), 5)]));
        let planned = plan(&batch.sends, &Existing::new(), &members());
        let moved = vec![(
            ReadCommand {
                conversation_id: ConversationId::new(1).unwrap(),
                user_id: user(2),
                seq: 5,
            },
            vec![user(1), user(2)],
        )];
        let outcomes = planned
            .outcomes(
                &batch.sends,
                &HashMap::from([(1, 4)]),
                &HashMap::from([((1, 5), 9)]),
                &members(),
                moved,
                chat_shared::time::Timestamp::UNIX_EPOCH,
            )
            .unwrap();
        assert!(matches!(outcomes[0], Outcome::Deliver { request: 1, .. }));
        assert!(matches!(
            &outcomes[1],
            Outcome::ReadMoved { recipients, .. } if recipients == &[user(1)]
        ));
    }

    #[test]
    fn a_row_missing_after_the_insert_is_an_error_not_a_wrong_answer() {
        let commands = [send(1, 1, "a")];
        let requests = requests(&commands);
        let batch = Batch::of(&requests);
        let planned = plan(&batch.sends, &Existing::new(), &members());
        let outcome = planned.outcomes(
            &batch.sends,
            &HashMap::from([(1, 0)]),
            &HashMap::new(),
            &members(),
            Vec::new(),
            chat_shared::time::Timestamp::UNIX_EPOCH,
        );
        assert!(matches!(outcome, Err(WriteError::Corrupt(_))));
    }
}
