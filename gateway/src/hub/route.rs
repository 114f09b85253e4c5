//! Which local sessions get which frame for one bus event: pure, so every
//! rule is unit-tested. Each frame is serialised once, on the first session
//! that needs it (most events of a shard concern other gateways).

use super::registry::{Registry, SessionHandle};
use crate::outbound::{Outbound, encode};
use chat_shared::bus::{GatewayEvent, SendOutcome};
use chat_shared::ids::UserId;
use chat_shared::protocol::{ErrorCode, Message, ServerFrame};

/// What one event came to here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Routed {
    /// Local sessions that got a frame.
    pub sessions: usize,
    /// `ack` frames (the sender's own session).
    pub acks: usize,
    /// `message` frames (every other session of every member).
    pub deliveries: usize,
    /// The persister refused a send of a session here, with this code.
    pub refused: Option<ErrorCode>,
}

/// Hands `event` to `offer`, once per local session it concerns.
pub fn route(
    event: GatewayEvent,
    registry: &Registry,
    mut offer: impl FnMut(&SessionHandle, Outbound),
) -> Routed {
    let offer = &mut offer;
    match event {
        GatewayEvent::Stored {
            message,
            member_ids,
            origin,
        } => {
            let origin = origin.map(|o| o.session_id);
            stored(&message, &member_ids, origin.as_deref(), registry, offer)
        }
        GatewayEvent::Reply {
            user_id,
            session_id,
            outcome,
        } => match user_id
            .user()
            .and_then(|user| registry.session(user, &session_id))
        {
            Some(session) => reply(session, outcome, offer),
            None => Routed::default(), // gone: nobody to answer
        },
        // A cache change, not a frame (the inbox handles it).
        GatewayEvent::MembersChanged { .. } | GatewayEvent::BlocksChanged { .. } => {
            Routed::default()
        }
        other => to_recipients(other, registry, offer),
    }
}

/// An event with a list of recipients: one frame to each of their sessions
/// here.
fn to_recipients(
    event: GatewayEvent,
    registry: &Registry,
    offer: &mut impl FnMut(&SessionHandle, Outbound),
) -> Routed {
    match event {
        GatewayEvent::Typing {
            conversation_id,
            user_id,
            state,
            recipients,
            trace: _,
        } => {
            // Never to the typist's own sessions, whatever the list says.
            let recipients = recipients.iter().filter(|r| **r != user_id);
            to_each(recipients, registry, offer, || ServerFrame::Typing {
                conversation_id,
                user_id,
                state,
            })
        }
        GatewayEvent::Read {
            conversation_id,
            user_id,
            seq,
            recipients,
        } => to_each(recipients.iter(), registry, offer, || ServerFrame::Read {
            conversation_id,
            user_id,
            seq,
        }),
        GatewayEvent::Presence {
            user_id,
            status,
            last_seen,
            recipients,
        } => to_each(recipients.iter(), registry, offer, || {
            ServerFrame::Presence {
                user_id,
                status,
                last_seen,
            }
        }),
        GatewayEvent::Profile { user, recipients } => {
            to_each(recipients.iter(), registry, offer, || ServerFrame::User {
                user: user.clone(),
            })
        }
        GatewayEvent::ConversationAdded {
            conversation,
            member_ids,
        } => to_each(member_ids.iter(), registry, offer, || {
            ServerFrame::Conversation {
                conversation: conversation.clone(),
            }
        }),
        // Routed by `route` itself.
        GatewayEvent::Stored { .. }
        | GatewayEvent::Reply { .. }
        | GatewayEvent::MembersChanged { .. }
        | GatewayEvent::BlocksChanged { .. } => Routed::default(),
    }
}

/// A stored message: `ack` to the session that sent it, `message` to every
/// other session of every member.
fn stored(
    message: &Message,
    member_ids: &[UserId],
    origin: Option<&str>,
    registry: &Registry,
    offer: &mut impl FnMut(&SessionHandle, Outbound),
) -> Routed {
    let mut routed = Routed::default();
    let mut delivery = None;
    let mut ack = None;
    for session in member_ids.iter().flat_map(|m| registry.sessions_of(*m)) {
        if origin == Some(&*session.session_id) {
            let frame = ack.get_or_insert_with(|| {
                encode(&ServerFrame::Ack {
                    client_msg_id: message.client_msg_id.clone(),
                    message: message.clone(),
                })
            });
            let client_msg_id = Box::new(message.client_msg_id.clone());
            let frame = frame.clone();
            offer(
                session,
                Outbound::SendAnswered {
                    client_msg_id,
                    frame,
                },
            );
            routed.acks += 1;
        } else {
            let frame = delivery.get_or_insert_with(|| {
                encode(&ServerFrame::Message {
                    message: message.clone(),
                })
            });
            offer(session, Outbound::Frame(frame.clone()));
            routed.deliveries += 1;
        }
        routed.sessions += 1;
    }
    routed
}

/// The persister's answer to one session's send.
fn reply(
    session: &SessionHandle,
    outcome: SendOutcome,
    offer: &mut impl FnMut(&SessionHandle, Outbound),
) -> Routed {
    let (client_msg_id, reply, routed) = answer(outcome);
    let client_msg_id = Box::new(client_msg_id);
    let frame = encode(&reply);
    offer(
        session,
        Outbound::SendAnswered {
            client_msg_id,
            frame,
        },
    );
    routed
}

/// The frame answering one send, for the session that sent it.
fn answer(outcome: SendOutcome) -> (chat_shared::ids::ClientMsgId, ServerFrame, Routed) {
    let mut routed = Routed {
        sessions: 1,
        ..Routed::default()
    };
    match outcome {
        SendOutcome::Stored { message } => {
            routed.acks = 1;
            let id = message.client_msg_id.clone();
            let ack = ServerFrame::Ack {
                client_msg_id: id.clone(),
                message,
            };
            (id, ack, routed)
        }
        SendOutcome::Refused {
            code,
            message,
            client_msg_id,
        } => {
            routed.refused = Some(code);
            let error = ServerFrame::Error {
                code,
                message,
                client_msg_id: Some(client_msg_id.as_str().to_owned()),
                retry_after_ms: None,
            };
            (client_msg_id, error, routed)
        }
    }
}

/// One frame to every local session of `users`, built and serialised once.
fn to_each<'a>(
    users: impl Iterator<Item = &'a UserId>,
    registry: &Registry,
    offer: &mut impl FnMut(&SessionHandle, Outbound),
    make: impl Fn() -> ServerFrame,
) -> Routed {
    let mut serialised = None;
    let mut routed = Routed::default();
    for session in users.flat_map(|u| registry.sessions_of(*u)) {
        let frame = serialised.get_or_insert_with(|| encode(&make())).clone();
        offer(session, Outbound::Frame(frame));
        routed.sessions += 1;
    }
    routed
}

#[cfg(test)]
mod tests {
    use super::super::registry::tests::{handle, user};
    use super::*;
    use chat_shared::bus::Origin;
    use chat_shared::ids::{ClientMsgId, ConversationId, MessageId};
    use chat_shared::protocol::{Message, TypingState};
    use serde_json::Value;
    use tokio::sync::mpsc;

    /// Users 1 (sessions a1, a2), 2 (b1) and 3 (c1) are here.
    fn registry() -> (Registry, Vec<(&'static str, mpsc::Receiver<Outbound>)>) {
        let mut registry = Registry::new(4);
        let mut inboxes = Vec::new();
        for (u, id) in [(1, "a1"), (1, "a2"), (2, "b1"), (3, "c1")] {
            let (h, rx) = handle(id);
            registry.add(user(u), h);
            inboxes.push((id, rx));
        }
        (registry, inboxes)
    }

    /// What each session got, as (session, frame type or "answered:<type>").
    fn deliver(event: GatewayEvent) -> (Routed, Vec<(String, String)>) {
        let (registry, _inboxes) = registry();
        let mut got = Vec::new();
        let routed = route(event, &registry, |session, out| {
            let what = match out {
                Outbound::Frame(f) => frame_type(f.as_str()),
                Outbound::SendAnswered { frame, .. } => {
                    format!("answered:{}", frame_type(frame.as_str()))
                }
                Outbound::SendRefused(_) => "refused".into(),
                Outbound::Restart => "restart".into(),
            };
            got.push((session.session_id.to_string(), what));
        });
        got.sort();
        (routed, got)
    }

    fn frame_type(json: &str) -> String {
        let value: Value = serde_json::from_str(json).unwrap();
        value["type"].as_str().unwrap().to_owned()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(s, w)| (s.to_string(), w.to_string()))
            .collect()
    }

    fn message() -> Message {
        Message {
            id: MessageId(10),
            conversation_id: ConversationId::new(5).unwrap(),
            seq: 1,
            sender_id: user(1).into(),
            client_msg_id: ClientMsgId::try_from("m1".to_owned()).unwrap(),
            body: "xin chào".into(),
            created_at: chrono::Utc::now(),
            kind: Default::default(),
            card: None,
        }
    }

    #[test]
    fn a_stored_message_acks_its_sending_session_and_reaches_every_other_session_of_the_members() {
        let event = GatewayEvent::Stored {
            message: message(),
            member_ids: vec![user(1), user(2), user(9)],
            origin: Some(Origin {
                session_id: "a1".into(),
                trace: None,
                received_at_us: None,
            }),
        };
        let (routed, got) = deliver(event);
        let expected = [("a1", "answered:ack"), ("a2", "message"), ("b1", "message")];
        assert_eq!(got, pairs(&expected));
        let counts = Routed {
            sessions: 3,
            acks: 1,
            deliveries: 2,
            refused: None,
        };
        assert_eq!(routed, counts);
    }

    #[test]
    fn a_message_stored_without_an_origin_is_a_delivery_to_every_session() {
        let event = GatewayEvent::Stored {
            message: message(),
            member_ids: vec![user(1), user(3)],
            origin: None,
        };
        let (_, got) = deliver(event);
        let expected = [("a1", "message"), ("a2", "message"), ("c1", "message")];
        assert_eq!(got, pairs(&expected));
    }

    #[test]
    fn a_reply_goes_to_its_one_session_and_a_refusal_is_counted() {
        let refused = GatewayEvent::Reply {
            user_id: user(1).into(),
            session_id: "a2".into(),
            outcome: SendOutcome::Refused {
                code: ErrorCode::Forbidden,
                message: "not a member".into(),
                client_msg_id: ClientMsgId::try_from("m1".to_owned()).unwrap(),
            },
        };
        let (routed, got) = deliver(refused);
        assert_eq!(got, pairs(&[("a2", "answered:error")]));
        assert_eq!(routed.refused, Some(ErrorCode::Forbidden));
        let resent = GatewayEvent::Reply {
            user_id: user(1).into(),
            session_id: "a1".into(),
            outcome: SendOutcome::Stored { message: message() },
        };
        let (routed, got) = deliver(resent);
        assert_eq!(got, pairs(&[("a1", "answered:ack")]));
        assert_eq!(routed.acks, 1);
        // A session that has gone gets nothing.
        let gone = GatewayEvent::Reply {
            user_id: user(1).into(),
            session_id: "zz".into(),
            outcome: SendOutcome::Stored { message: message() },
        };
        assert_eq!(deliver(gone), (Routed::default(), vec![]));
    }

    #[test]
    fn typing_reaches_the_recipients_but_never_the_typist() {
        let event = GatewayEvent::Typing {
            conversation_id: ConversationId::new(5).unwrap(),
            user_id: user(1),
            state: TypingState::Start,
            // The typist listed by mistake still gets nothing.
            recipients: vec![user(1), user(2), user(3)],
            trace: None,
        };
        let (routed, got) = deliver(event);
        assert_eq!(got, pairs(&[("b1", "typing"), ("c1", "typing")]));
        assert_eq!(routed.sessions, 2);
    }

    #[test]
    fn reads_presence_and_new_conversations_reach_every_session_of_their_recipients() {
        let read = GatewayEvent::Read {
            conversation_id: ConversationId::new(5).unwrap(),
            user_id: user(2),
            seq: 4,
            recipients: vec![user(1)],
        };
        let (_, got) = deliver(read);
        assert_eq!(got, pairs(&[("a1", "read"), ("a2", "read")]));
        let presence = GatewayEvent::Presence {
            user_id: user(2),
            status: chat_shared::protocol::PresenceStatus::Online,
            last_seen: None,
            recipients: vec![user(3), user(8)],
        };
        let (_, got) = deliver(presence);
        assert_eq!(got, pairs(&[("c1", "presence")]));
    }
}
