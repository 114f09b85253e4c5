//! The events that travel between services over RabbitMQ. Every AMQP message
//! body is a JSON array of events, so a publisher can coalesce several events
//! into one AMQP message when load is high without changing the format.

use crate::ids::{ClientMsgId, ConversationId, SenderId, UserId};
use crate::protocol::{Conversation, ErrorCode, Message, PresenceStatus, TypingState};
use crate::time::{self, Timestamp};
use serde::{Deserialize, Serialize};

/// gateway -> persister, on the persist exchange, routed to the partition of
/// `conversation_id`. Stored at most once per (sender, client_msg_id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendCommand {
    /// The sending session, so the right one gets the `ack`.
    pub session_id: String,
    /// The queue of the sender's gateway, for replies meant only for it.
    pub reply_to: String,
    pub conversation_id: ConversationId,
    /// A user, or the system (version 2's server API: not a member, and
    /// allowed in any conversation).
    pub sender_id: SenderId,
    pub client_msg_id: ClientMsgId,
    pub body: String,
    /// Version 2: a card, stored with the message (boxed: most sends
    /// have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<Box<crate::card::Card>>,
    /// Answer on `reply_to` even when the message is stored (a `Reply`
    /// besides the fan-out): the sender is not a session that a member's
    /// fan-out reaches (the server API waiting for its answer).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reply_when_stored: bool,
    /// The trace of the `send` (only when it is traced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::telemetry::propagation::TraceHeaders>,
    /// When the sender's gateway read the `send` frame, in Unix
    /// microseconds (only when it is traced): the delivery spans say how
    /// long after it they came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at_us: Option<i64>,
}

/// persister -> the unread notifier (version 2's webhook; only while one is
/// configured): a message was stored for `recipients` (the members but its
/// sender). Published persistent to the notify queue after each commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredNotice {
    pub conversation_id: ConversationId,
    pub seq: i64,
    pub sender_id: SenderId,
    #[serde(with = "time::rfc3339")]
    pub created_at: Timestamp,
    pub recipients: Vec<UserId>,
}

/// gateway -> persister: what goes through the persist path, in order per
/// conversation. A read marker travels the same way as the messages it
/// follows, so it is stored in the same group commits and never overtakes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum PersistCommand {
    Send(SendCommand),
    Read(ReadCommand),
}

impl PersistCommand {
    pub fn conversation_id(&self) -> ConversationId {
        match self {
            PersistCommand::Send(c) => c.conversation_id,
            PersistCommand::Read(c) => c.conversation_id,
        }
    }

    /// The creation context it carries (a traced `send`).
    pub fn trace(&self) -> Option<&crate::telemetry::propagation::TraceHeaders> {
        match self {
            PersistCommand::Send(c) => c.trace.as_ref(),
            PersistCommand::Read(_) => None,
        }
    }
}

/// `read`: `user_id` has read `conversation_id` up to `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadCommand {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub seq: i64,
}

/// gateway -> presence service (the presence queue, one active consumer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PresenceEvent {
    /// The user's first session on `gateway` opened.
    SessionOpened { gateway: String, user_id: UserId },
    /// The user's last session on `gateway` closed.
    SessionClosed { gateway: String, user_id: UserId },
    /// Every `presence.heartbeat_ms`: the gateway lives, and hosts these users.
    Heartbeat {
        gateway: String,
        user_ids: Vec<UserId>,
    },
    Typing {
        conversation_id: ConversationId,
        user_id: UserId,
        state: TypingState,
        /// The trace of the `typing` frame (only when it is traced).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace: Option<crate::telemetry::propagation::TraceHeaders>,
    },
    /// From the persister (version 2 consent): `user` sent their first
    /// message in their direct conversation with `peer`, so `peer` became
    /// their contact and may see their presence from now on (with
    /// `presence: contacts`).
    ContactMade { user_id: UserId, peer_id: UserId },
}

/// Where a stored message came from: that session gets `ack`, every other
/// session of every member gets `message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub session_id: String,
    /// The trace of the `send` (only when it is traced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::telemetry::propagation::TraceHeaders>,
    /// When the sender's gateway read the `send` frame (Unix µs; only when
    /// it is traced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at_us: Option<i64>,
}

/// persister or gateway -> gateways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum GatewayEvent {
    /// A message was stored: deliver it to the local sessions of `member_ids`.
    /// Published on the fan-out exchange with one routing key per member.
    Stored {
        message: Message,
        member_ids: Vec<UserId>,
        origin: Option<Origin>,
    },
    /// The answer to one session's `send` that concerns only that session
    /// (a refused send, or a resend answered with the original message).
    /// Published straight to the sender gateway's queue.
    Reply {
        user_id: SenderId,
        session_id: String,
        outcome: SendOutcome,
    },
    /// A member started or stopped typing; for `recipients` (never the typist).
    Typing {
        conversation_id: ConversationId,
        user_id: UserId,
        state: TypingState,
        recipients: Vec<UserId>,
        /// The trace of the `typing` frame relayed (only when it is traced).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace: Option<crate::telemetry::propagation::TraceHeaders>,
    },
    /// A member's read marker moved forward; for the other members.
    Read {
        conversation_id: ConversationId,
        user_id: UserId,
        seq: i64,
        recipients: Vec<UserId>,
    },
    /// A user came online or went offline; for the users who share a
    /// conversation with them (and are online).
    Presence {
        user_id: UserId,
        status: PresenceStatus,
        #[serde(with = "time::rfc3339_opt")]
        last_seen: Option<Timestamp>,
        recipients: Vec<UserId>,
    },
    /// The members of a conversation changed (broadcast to every gateway):
    /// whatever a gateway remembers of them is forgotten.
    MembersChanged { conversation_id: ConversationId },
    /// A block between these two users was made or lifted (broadcast to
    /// every gateway): whatever a gateway remembers of their blocks is
    /// forgotten.
    BlocksChanged { user_ids: [UserId; 2] },
    /// A user's profile changed: the sessions of `recipients` (everyone who
    /// shares a conversation with them) get a `user` frame.
    Profile {
        user: crate::profile::User,
        recipients: Vec<UserId>,
    },
    /// Users were added to a conversation: their sessions get a
    /// `conversation` frame. Routed to the added members only.
    ConversationAdded {
        conversation: Conversation,
        member_ids: Vec<UserId>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SendOutcome {
    Stored {
        message: Message,
    },
    Refused {
        code: ErrorCode,
        message: String,
        client_msg_id: ClientMsgId,
    },
}

/// A command is one item of the gateway's publish rounds.
impl crate::batch::Weighed for PersistCommand {
    fn weight(&self) -> usize {
        1
    }
}

pub fn encode<T: Serialize>(events: &[T]) -> Vec<u8> {
    // Serialising these plain data types cannot fail.
    serde_json::to_vec(events).unwrap_or_default()
}

/// Most bytes of one AMQP message of persist commands: a gateway splits the
/// commands of one partition in a publish round into messages of at most
/// this ([`encode_split`]), and a persister derives its prefetch from it
/// (`persister.max_inflight_bytes`). One command is always smaller: config
/// keeps `gateway.max_frame_bytes` at most [`MAX_COMMAND_BYTES`].
pub const MAX_PERSIST_MESSAGE_BYTES: usize = 256 * 1024;

/// The largest frame a gateway may take (`gateway.max_frame_bytes`): its
/// command, with ids and a trace context, stays under
/// [`MAX_PERSIST_MESSAGE_BYTES`].
pub const MAX_COMMAND_BYTES: usize = MAX_PERSIST_MESSAGE_BYTES / 2;

/// `events` as [`encode`] writes them, but in as many JSON arrays as keep
/// each at most `max_bytes` long (an event longer alone goes alone), in
/// order: each array with how many events it holds.
pub fn encode_split<T: Serialize>(events: &[T], max_bytes: usize) -> Vec<(usize, Vec<u8>)> {
    let mut arrays = Vec::new();
    let mut current = vec![b'['];
    let mut count = 0;
    for event in events {
        let comma = current.len();
        if count > 0 {
            current.push(b',');
        }
        // Serialising these plain data types cannot fail.
        let _ = serde_json::to_writer(&mut current, event);
        if count > 0 && current.len() + 1 > max_bytes {
            // Too long with this event: the array closes without it, and
            // it starts the next one.
            let mut next = vec![b'['];
            next.extend_from_slice(&current[comma + 1..]);
            current.truncate(comma);
            current.push(b']');
            arrays.push((count, std::mem::replace(&mut current, next)));
            count = 0;
        }
        count += 1;
    }
    current.push(b']');
    if count > 0 || arrays.is_empty() {
        arrays.push((count, current));
    }
    arrays
}

pub fn decode<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<Vec<T>, serde_json::Error> {
    serde_json::from_slice(payload)
}

/// The events of one AMQP message, decoded one by one.
#[derive(Debug)]
pub struct Decoded<T> {
    pub events: Vec<T>,
    /// Events this service cannot read (a newer service's kind during a
    /// rolling deploy, or garbage): their JSON text and why.
    pub undecodable: Vec<Undecodable>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    pub raw: String,
    pub error: String,
}

/// Like [`decode`], but an event that does not decode costs only itself:
/// the others of the same (coalesced) message are kept. `Err` only when the
/// payload is not a JSON array at all.
pub fn decode_each<T: for<'de> Deserialize<'de>>(
    payload: &[u8],
) -> Result<Decoded<T>, serde_json::Error> {
    // The common case, at full speed.
    if let Ok(events) = serde_json::from_slice::<Vec<T>>(payload) {
        return Ok(Decoded {
            events,
            undecodable: Vec::new(),
        });
    }
    let values: Vec<serde_json::Value> = serde_json::from_slice(payload)?;
    let mut decoded = Decoded {
        events: Vec::with_capacity(values.len()),
        undecodable: Vec::new(),
    };
    for value in values {
        let raw = value.to_string();
        match serde_json::from_value(value) {
            Ok(event) => decoded.events.push(event),
            Err(e) => decoded.undecodable.push(Undecodable {
                raw,
                error: e.to_string(),
            }),
        }
    }
    Ok(decoded)
}

/// The conversation id as a partition key: the same conversation always lands
/// on the same partition queue, so one consumer orders its messages.
pub fn partition_of(conversation: ConversationId, partitions: u16) -> u16 {
    (conversation.get().rem_euclid(i64::from(partitions.max(1)))) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_json_arrays() {
        let cmd = SendCommand {
            session_id: "s".into(),
            reply_to: "q".into(),
            conversation_id: ConversationId::new(3).unwrap_or_else(|_| unreachable!()),
            sender_id: UserId::new(4).unwrap_or_else(|_| unreachable!()).into(),
            client_msg_id: ClientMsgId::try_from("c".to_owned()).unwrap_or_else(|_| unreachable!()),
            body: "hi".into(),
            card: None,
            reply_when_stored: false,
            trace: None,
            received_at_us: None,
        };
        let cmd = PersistCommand::Send(cmd);
        let bytes = encode(std::slice::from_ref(&cmd));
        assert_eq!(decode::<PersistCommand>(&bytes).ok(), Some(vec![cmd]));
        assert!(decode::<PersistCommand>(b"{not json").is_err());
    }

    #[test]
    fn a_split_encoding_keeps_every_event_in_order_in_arrays_of_at_most_the_bound() {
        let events: Vec<String> = (0..40).map(|n| "x".repeat(n * 7)).collect();
        for bound in [1, 50, 200, 1_000, 100_000] {
            let arrays = encode_split(&events, bound);
            let mut decoded = Vec::new();
            for (count, payload) in &arrays {
                let these: Vec<String> = decode(payload).unwrap();
                assert_eq!(these.len(), *count);
                // Over the bound only when one event alone is.
                assert!(payload.len() <= bound || these.len() == 1, "bound {bound}");
                decoded.extend(these);
            }
            assert_eq!(decoded, events, "bound {bound}");
        }
        // Under the bound: one array, byte for byte what encode writes.
        assert_eq!(encode_split(&events, 100_000), vec![(40, encode(&events))]);
        assert_eq!(encode_split::<String>(&[], 10), vec![(0, b"[]".to_vec())]);
    }

    #[test]
    fn an_event_that_does_not_decode_costs_only_itself() {
        let read = r#"{"command":"read","conversation_id":3,"user_id":4,"seq":1}"#;
        let known = decode::<PersistCommand>(format!("[{read}]").as_bytes())
            .unwrap_or_else(|e| panic!("{read} must decode: {e}"));
        let payload = format!(r#"[{read},{{"command":"from_the_future","x":1}},{read}]"#);
        let decoded = decode_each::<PersistCommand>(payload.as_bytes())
            .unwrap_or_else(|e| panic!("an array: {e}"));
        assert_eq!(decoded.events, vec![known[0].clone(), known[0].clone()]);
        assert_eq!(decoded.undecodable.len(), 1);
        assert!(decoded.undecodable[0].raw.contains("from_the_future"));
        assert!(decode_each::<PersistCommand>(b"{not json").is_err());
    }

    #[test]
    fn a_conversation_always_maps_to_the_same_partition() {
        let c = ConversationId::new(12).unwrap_or_else(|_| unreachable!());
        assert_eq!(partition_of(c, 4), 0);
        assert_eq!(partition_of(c, 5), 2);
        assert_eq!(partition_of(c, 0), 0);
    }
}
