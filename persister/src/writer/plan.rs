//! The part of a group commit that needs no database: what to send to
//! Postgres ([`Plan::new`]) and what to tell the gateways once it answered
//! ([`Plan::outcomes`]). Unit-tested here; store_batch.sql does the rest.

use super::{Outcome, Request};
use chat_shared::bus::{PersistCommand, ReadCommand, SendCommand, SendOutcome};
use chat_shared::ids::{ClientMsgId, MessageId, UserId};
use chat_shared::protocol::{ErrorCode, Message};
use chat_shared::time::Timestamp;
use std::collections::{BTreeMap, HashMap};

/// A batch, ready for the statement: each (sender, client_msg_id) once.
pub struct Plan<'a> {
    /// The distinct sends, in batch order: row `i` of the statement is
    /// `unique[i - 1]`.
    pub unique: Vec<&'a SendCommand>,
    /// Every send of the batch, in order: its place in `unique`, and
    /// whether the broker delivered it before.
    sends: Vec<(usize, &'a SendCommand, bool)>,
    /// The newest read marker per (conversation, user), sorted (rows are
    /// locked in one order).
    pub reads: BTreeMap<(i64, i64), i64>,
}

/// What the statement said about one distinct send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Stored now, with this id and seq.
    New {
        id: MessageId,
        seq: i64,
        members: Vec<UserId>,
    },
    /// Stored before: this is the original.
    Existing {
        message: Message,
        members: Vec<UserId>,
    },
    NotFound,
    Forbidden,
}

impl<'a> Plan<'a> {
    pub fn new(requests: &[Request<'a>]) -> Self {
        let mut unique = Vec::new();
        let mut sends = Vec::new();
        let mut place: HashMap<(UserId, &ClientMsgId), usize> = HashMap::new();
        let mut reads = BTreeMap::new();
        for request in requests {
            match request.command {
                PersistCommand::Send(send) => {
                    let at = *place
                        .entry((send.sender_id, &send.client_msg_id))
                        .or_insert_with(|| {
                            unique.push(send);
                            unique.len() - 1
                        });
                    sends.push((at, send, request.redelivered));
                }
                PersistCommand::Read(read) => {
                    let seq = reads
                        .entry((read.conversation_id.get(), read.user_id.get()))
                        .or_insert(read.seq);
                    *seq = (*seq).max(read.seq);
                }
            }
        }
        Self {
            unique,
            sends,
            reads,
        }
    }

    /// One outcome per send, in batch order, then one per read marker that
    /// moved. `stored[i]` answers `unique[i]`.
    pub fn outcomes(
        &self,
        stored: &[Stored],
        moved: Vec<(ReadCommand, Vec<UserId>)>,
        now: Timestamp,
    ) -> Result<Vec<Outcome>, String> {
        if stored.len() != self.unique.len() {
            return Err(format!(
                "{} answers for {} sends",
                stored.len(),
                self.unique.len()
            ));
        }
        let mut first = vec![true; self.unique.len()];
        let mut outcomes = Vec::with_capacity(self.sends.len() + moved.len());
        for &(at, send, redelivered) in &self.sends {
            let is_first = std::mem::replace(&mut first[at], false);
            outcomes.push(match &stored[at] {
                // The first of a new message is delivered to everyone; a
                // copy of it in the same batch only hears the original.
                Stored::New { id, seq, members } => {
                    let message = Message {
                        id: *id,
                        conversation_id: send.conversation_id,
                        seq: *seq,
                        sender_id: send.sender_id,
                        client_msg_id: send.client_msg_id.clone(),
                        body: send.body.clone(),
                        created_at: now,
                    };
                    if is_first {
                        deliver(send, message, members)
                    } else {
                        Outcome::reply(send, SendOutcome::Stored { message })
                    }
                }
                // Stored before: a redelivery (the persister may have died
                // between commit and fan-out) is delivered again; a resend
                // by the client is answered with the original.
                Stored::Existing { message, members } if redelivered => {
                    deliver(send, message.clone(), members)
                }
                Stored::Existing { message, .. } => Outcome::reply(
                    send,
                    SendOutcome::Stored {
                        message: message.clone(),
                    },
                ),
                Stored::NotFound => {
                    Outcome::refused(send, ErrorCode::NotFound, "no such conversation")
                }
                Stored::Forbidden => Outcome::refused(
                    send,
                    ErrorCode::Forbidden,
                    "not a member of this conversation",
                ),
            });
        }
        for (read, members) in moved {
            let recipients = members.into_iter().filter(|m| *m != read.user_id).collect();
            outcomes.push(Outcome::ReadMoved { read, recipients });
        }
        Ok(outcomes)
    }
}

fn deliver(send: &SendCommand, message: Message, members: &[UserId]) -> Outcome {
    Outcome::Deliver {
        message,
        members: members.to_vec(),
        origin_session: send.session_id.clone(),
        origin_trace: send.trace.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_shared::ids::ConversationId;

    fn send(sender: i64, key: &str, conversation: i64) -> PersistCommand {
        PersistCommand::Send(SendCommand {
            session_id: format!("s{sender}"),
            reply_to: "gw".to_owned(),
            conversation_id: ConversationId::new(conversation).expect("id"),
            sender_id: UserId::new(sender).expect("id"),
            client_msg_id: ClientMsgId::try_from(key.to_owned()).expect("key"),
            body: format!("{key} body"),
            trace: None,
        })
    }

    fn read(conversation: i64, user: i64, seq: i64) -> PersistCommand {
        PersistCommand::Read(ReadCommand {
            conversation_id: ConversationId::new(conversation).expect("id"),
            user_id: UserId::new(user).expect("id"),
            seq,
        })
    }

    fn requests(commands: &[PersistCommand], redelivered: bool) -> Vec<Request<'_>> {
        commands
            .iter()
            .map(|command| Request {
                command,
                redelivered,
            })
            .collect()
    }

    fn users(ids: &[i64]) -> Vec<UserId> {
        ids.iter().map(|&id| UserId::new(id).expect("id")).collect()
    }

    fn new(id: i64, seq: i64) -> Stored {
        Stored::New {
            id: MessageId(id),
            seq,
            members: users(&[1, 2]),
        }
    }

    #[test]
    fn a_send_repeated_in_one_batch_goes_to_postgres_once_and_reads_keep_the_newest() {
        let commands = [
            send(1, "a", 10),
            read(10, 2, 5),
            send(1, "a", 10),
            send(2, "a", 10),
            read(10, 2, 3),
            read(9, 2, 1),
        ];
        let plan = Plan::new(&requests(&commands, false));
        let keys: Vec<(i64, &str)> = plan
            .unique
            .iter()
            .map(|s| (s.sender_id.get(), s.client_msg_id.as_str()))
            .collect();
        assert_eq!(
            keys,
            [(1, "a"), (2, "a")],
            "same key, other sender: two sends"
        );
        let reads: Vec<_> = plan.reads.into_iter().collect();
        assert_eq!(reads, [((9, 2), 1), ((10, 2), 5)], "sorted, newest seq");
    }

    #[test]
    fn a_new_message_is_delivered_once_and_its_copy_in_the_batch_gets_the_original() {
        let commands = [send(1, "a", 10), send(1, "b", 10), send(1, "a", 10)];
        let plan = Plan::new(&requests(&commands, false));
        let now = chat_shared::time::now_millis();
        let outcomes = plan
            .outcomes(&[new(100, 7), new(101, 8)], Vec::new(), now)
            .expect("outcomes");
        assert_eq!(outcomes.len(), 3);
        let Outcome::Deliver {
            message, members, ..
        } = &outcomes[0]
        else {
            panic!("first: {:?}", outcomes[0]);
        };
        assert_eq!(
            (message.id, message.seq, message.body.as_str()),
            (MessageId(100), 7, "a body")
        );
        assert_eq!(members, &users(&[1, 2]));
        assert!(matches!(&outcomes[1], Outcome::Deliver { message, .. } if message.seq == 8));
        let Outcome::Reply {
            outcome: SendOutcome::Stored { message },
            ..
        } = &outcomes[2]
        else {
            panic!("copy: {:?}", outcomes[2]);
        };
        assert_eq!((message.id, message.seq), (MessageId(100), 7));
    }

    #[test]
    fn a_message_stored_before_is_redelivered_to_all_or_answered_to_the_resender() {
        let commands = [send(1, "a", 10)];
        let original = Message {
            id: MessageId(5),
            conversation_id: ConversationId::new(10).expect("id"),
            seq: 3,
            sender_id: UserId::new(1).expect("id"),
            client_msg_id: ClientMsgId::try_from("a".to_owned()).expect("key"),
            body: "first body".to_owned(),
            created_at: chat_shared::time::now_millis(),
        };
        let stored = [Stored::Existing {
            message: original.clone(),
            members: users(&[1, 2]),
        }];
        let now = chat_shared::time::now_millis();
        let resend = Plan::new(&requests(&commands, false))
            .outcomes(&stored, Vec::new(), now)
            .expect("outcomes");
        assert!(
            matches!(&resend[..], [Outcome::Reply { outcome: SendOutcome::Stored { message }, .. }] if *message == original),
            "{resend:?}"
        );
        let redelivery = Plan::new(&requests(&commands, true))
            .outcomes(&stored, Vec::new(), now)
            .expect("outcomes");
        assert!(
            matches!(&redelivery[..], [Outcome::Deliver { message, .. }] if *message == original),
            "{redelivery:?}"
        );
    }

    #[test]
    fn refusals_name_their_reason_and_reads_go_to_the_other_members() {
        let commands = [send(1, "a", 10), send(1, "b", 11), read(12, 2, 4)];
        let plan = Plan::new(&requests(&commands, false));
        let moved = vec![(
            ReadCommand {
                conversation_id: ConversationId::new(12).expect("id"),
                user_id: UserId::new(2).expect("id"),
                seq: 4,
            },
            users(&[1, 2, 3]),
        )];
        let outcomes = plan
            .outcomes(
                &[Stored::NotFound, Stored::Forbidden],
                moved,
                chat_shared::time::now_millis(),
            )
            .expect("outcomes");
        let code = |o: &Outcome| match o {
            Outcome::Reply {
                outcome: SendOutcome::Refused { code, .. },
                ..
            } => Some(*code),
            _ => None,
        };
        assert_eq!(code(&outcomes[0]), Some(ErrorCode::NotFound));
        assert_eq!(code(&outcomes[1]), Some(ErrorCode::Forbidden));
        assert!(
            matches!(&outcomes[2], Outcome::ReadMoved { recipients, .. } if *recipients == users(&[1, 3]))
        );
    }

    #[test]
    fn an_answer_missing_for_a_send_is_an_error_not_a_silent_drop() {
        let commands = [send(1, "a", 10), send(1, "b", 10)];
        let plan = Plan::new(&requests(&commands, false));
        assert!(
            plan.outcomes(&[new(1, 1)], Vec::new(), chat_shared::time::now_millis())
                .is_err()
        );
    }
}
