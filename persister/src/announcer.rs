//! After commit: tell the gateways. Stored messages and moved read markers go
//! to everyone concerned, replies for one session straight to its gateway's
//! queue, coalesced and confirmed by the shared announcer
//! ([`chat_shared::amqp::Announcer`]); each gateway delivers the events that
//! concern its own sessions and skips the rest. All confirms are awaited
//! before the input deliveries are acked.

use crate::notices::{Confirmed, Notices};
use crate::writer::{Outcome, Request};
use chat_shared::amqp::{ConfirmedPublisher, PendingConfirm, PublishError, Topology};
use chat_shared::bus::{
    GatewayEvent, Origin, PersistCommand, PresenceEvent, SendCommand, SendOutcome, StoredNotice,
};

pub struct Announcer {
    announcer: chat_shared::amqp::Announcer,
    /// While an unread webhook is configured: each commit's stored
    /// messages go to the notify queue too (gathered: [`crate::notices`]).
    notices: Option<Notices>,
    /// Where contacts made go (the presence service's queue).
    presence_queue: String,
}

impl Announcer {
    pub fn new(publisher: ConfirmedPublisher, topo: &Topology, notices: Option<Notices>) -> Self {
        Self {
            announcer: chat_shared::amqp::Announcer::new(publisher, topo),
            notices,
            presence_queue: topo.presence_queue(),
        }
    }

    /// Announces the `outcomes` of the committed `requests` (each outcome
    /// names its request, whose sender it answers). Returns once the
    /// gateways' events are confirmed, with what is still to be confirmed
    /// of the persistent publishes (contacts made, stored notices): the
    /// batch's deliveries are acked only after those, but the next batch
    /// need not wait for them.
    pub async fn announce(
        &self,
        requests: &[Request<'_>],
        outcomes: &[Outcome],
    ) -> Result<Durable, PublishError> {
        let send_of = |request: usize| match requests.get(request).map(|r| r.command) {
            Some(PersistCommand::Send(send)) => Some(send),
            _ => None,
        };
        let mut batch = self.announcer.batch();
        let mut notices = Vec::new();
        let mut contacts = Vec::new();
        for outcome in outcomes {
            match outcome {
                Outcome::Deliver {
                    request,
                    message,
                    members,
                } => {
                    let send = send_of(*request);
                    if send.is_none() {
                        tracing::error!(
                            request,
                            "a stored message names no send of its batch; delivered without its ack"
                        );
                    }
                    if let Some(send) = send.filter(|s| s.reply_when_stored) {
                        let message = message.clone();
                        reply(&mut batch, send, SendOutcome::Stored { message });
                    }
                    if self.notices.is_some() {
                        notices.push(notice_of(message, members));
                    }
                    let event = GatewayEvent::Stored {
                        message: message.clone(),
                        member_ids: members.clone(),
                        origin: send.map(origin_of),
                    };
                    batch.to_users(members, event);
                }
                Outcome::ContactMade { user, peer } => {
                    contacts.push(PresenceEvent::ContactMade {
                        user_id: *user,
                        peer_id: *peer,
                    });
                }
                Outcome::ReadMoved { read, recipients } => {
                    let event = GatewayEvent::Read {
                        conversation_id: read.conversation_id,
                        user_id: read.user_id,
                        seq: read.seq,
                        recipients: recipients.clone(),
                    };
                    batch.to_users(recipients, event);
                }
                Outcome::Reply { request, outcome } => match send_of(*request) {
                    Some(send) => reply(&mut batch, send, outcome.clone()),
                    None => tracing::error!(request, "a reply names no send of its batch; dropped"),
                },
            }
        }
        if !contacts.is_empty() {
            batch.to_durable_queue(&self.presence_queue, chat_shared::bus::encode(&contacts));
        }
        let confirms = batch.publish_then_durable().await?;
        let notices = match &self.notices {
            Some(publisher) if !notices.is_empty() => Some(publisher.submit(notices).await),
            _ => None,
        };
        Ok(Durable { confirms, notices })
    }
}

/// What a batch's ack still waits for after its announcement.
#[derive(Default)]
pub struct Durable {
    pub confirms: Vec<PendingConfirm>,
    pub notices: Option<Confirmed>,
}

/// The answer to `send`, for its session (straight to its gateway's queue).
fn reply<'a>(
    batch: &mut chat_shared::amqp::Batch<'a>,
    send: &'a SendCommand,
    outcome: SendOutcome,
) {
    let event = GatewayEvent::Reply {
        user_id: send.sender_id,
        session_id: send.session_id.clone(),
        outcome,
    };
    batch.to_queue(&send.reply_to, event);
}

/// What the unread notifier needs of a stored message.
fn notice_of(
    message: &chat_shared::protocol::Message,
    members: &[chat_shared::ids::UserId],
) -> StoredNotice {
    StoredNotice {
        conversation_id: message.conversation_id,
        seq: message.seq,
        sender_id: message.sender_id,
        created_at: message.created_at,
        recipients: members
            .iter()
            .copied()
            .filter(|m| message.sender_id != *m)
            .collect(),
    }
}

/// Where a stored message came from: its session gets the `ack`.
fn origin_of(send: &SendCommand) -> Origin {
    Origin {
        session_id: send.session_id.clone(),
        trace: send.trace.clone(),
        received_at_us: send.received_at_us,
    }
}
