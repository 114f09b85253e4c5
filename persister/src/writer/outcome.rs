//! What to tell the gateways about one request, once its batch is
//! committed. An outcome names its request by position in the batch; where
//! to send it (the sender's session, its gateway's queue, its trace) is the
//! request's, read by the announcer.

use chat_shared::bus::{ReadCommand, SendOutcome};
use chat_shared::ids::UserId;
use chat_shared::protocol::{ErrorCode, Message};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (now, or before and this is a redelivery after a crash):
    /// every member's sessions get it, the origin session (the request's)
    /// gets the ack.
    Deliver {
        request: usize,
        message: Message,
        members: Vec<UserId>,
    },
    /// Concerns only the sending session of the request: a resend answered
    /// with the original, or a refusal.
    Reply {
        request: usize,
        outcome: SendOutcome,
    },
    /// A read marker moved forward: the other members get a `read` frame.
    /// (Markers of one batch are merged, so it names no single request.)
    ReadMoved {
        read: ReadCommand,
        recipients: Vec<UserId>,
    },
    /// `peer` became a contact of `user` (version 2): the presence service
    /// shows them `user`'s presence if `user`'s settings now allow it.
    ContactMade { user: UserId, peer: UserId },
}

impl Outcome {
    pub(super) fn refused(
        request: usize,
        client_msg_id: &chat_shared::ids::ClientMsgId,
        code: ErrorCode,
        message: &str,
    ) -> Self {
        Outcome::Reply {
            request,
            outcome: SendOutcome::Refused {
                code,
                message: message.to_owned(),
                client_msg_id: client_msg_id.clone(),
            },
        }
    }

    /// The same outcome for the request at `request` (a batch of one,
    /// written alone, reports position 0).
    pub(super) fn for_request(self, request: usize) -> Self {
        match self {
            Outcome::Deliver {
                message, members, ..
            } => Outcome::Deliver {
                request,
                message,
                members,
            },
            Outcome::Reply { outcome, .. } => Outcome::Reply { request, outcome },
            other @ (Outcome::ReadMoved { .. } | Outcome::ContactMade { .. }) => other,
        }
    }
}
