//! After commit: tell the gateways. Stored messages and moved read markers go
//! to the fan-out exchange, routed by the shard keys of everyone concerned
//! (RabbitMQ's `CC` header), so each gateway hosting any of them gets one
//! copy. Replies for one session go straight to its gateway's queue. Events
//! are coalesced, up to [`MAX_EVENTS_PER_MESSAGE`] per AMQP message: a lone
//! message travels alone, a big batch in a few AMQP messages (each gateway
//! delivers the events that concern its own sessions and skips the rest).
//! All confirms are awaited before the input deliveries are acked.

use crate::writer::{Outcome, Request};
use chat_shared::amqp::{ConfirmedPublisher, Outgoing, PublishError, Topology};
use chat_shared::bus::{self, GatewayEvent, Origin, PersistCommand, SendCommand};
use std::collections::{BTreeMap, BTreeSet};

/// Most events in one AMQP message.
pub const MAX_EVENTS_PER_MESSAGE: usize = 256;

pub struct Announcer {
    publisher: ConfirmedPublisher,
    fanout: String,
    topo: Topology,
}

/// Events bound for the fan-out exchange, with the union of their recipients'
/// routing shards.
#[derive(Default)]
struct Chunk {
    shards: BTreeSet<u16>,
    events: Vec<GatewayEvent>,
}

impl Announcer {
    pub fn new(publisher: ConfirmedPublisher, topo: &Topology) -> Self {
        Self {
            publisher,
            fanout: topo.fanout_exchange(),
            topo: topo.clone(),
        }
    }

    /// Announces the `outcomes` of the committed `requests` (each outcome
    /// names its request, whose sender it answers).
    pub async fn announce(
        &self,
        requests: &[Request<'_>],
        outcomes: &[Outcome],
    ) -> Result<(), PublishError> {
        let send_of = |request: usize| match requests.get(request).map(|r| r.command) {
            Some(PersistCommand::Send(send)) => Some(send),
            _ => None,
        };
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut current = Chunk::default();
        let mut replies: BTreeMap<&str, Vec<GatewayEvent>> = BTreeMap::new();
        for outcome in outcomes {
            let (recipients, event) = match outcome {
                Outcome::Deliver {
                    request,
                    message,
                    members,
                } => (
                    members,
                    GatewayEvent::Stored {
                        message: message.clone(),
                        member_ids: members.clone(),
                        origin: match send_of(*request) {
                            Some(send) => Some(Origin {
                                session_id: send.session_id.clone(),
                                trace: send.trace.clone(),
                                received_at_us: send.received_at_us,
                            }),
                            None => {
                                tracing::error!(
                                    request,
                                    "a stored message names no send of its batch; delivered without its ack"
                                );
                                None
                            }
                        },
                    },
                ),
                Outcome::ReadMoved { read, recipients } => (
                    recipients,
                    GatewayEvent::Read {
                        conversation_id: read.conversation_id,
                        user_id: read.user_id,
                        seq: read.seq,
                        recipients: recipients.clone(),
                    },
                ),
                Outcome::Reply { request, outcome } => {
                    let Some(SendCommand {
                        sender_id,
                        session_id,
                        reply_to,
                        ..
                    }) = send_of(*request)
                    else {
                        tracing::error!(request, "a reply names no send of its batch; dropped");
                        continue;
                    };
                    let event = GatewayEvent::Reply {
                        user_id: *sender_id,
                        session_id: session_id.clone(),
                        outcome: outcome.clone(),
                    };
                    replies.entry(reply_to.as_str()).or_default().push(event);
                    continue;
                }
            };
            if recipients.is_empty() {
                continue;
            }
            current
                .shards
                .extend(recipients.iter().map(|u| self.topo.route_shard(*u)));
            current.events.push(event);
            if current.events.len() >= MAX_EVENTS_PER_MESSAGE {
                chunks.push(std::mem::take(&mut current));
            }
        }
        if !current.events.is_empty() {
            chunks.push(current);
        }

        let mut confirms = Vec::with_capacity(chunks.len() + replies.len());
        for chunk in chunks {
            let keys: Vec<String> = chunk.shards.into_iter().map(Topology::shard_key).collect();
            let payload = bus::encode(&chunk.events);
            if let Some(message) = Outgoing::to_gateways(&self.fanout, &keys, &payload) {
                confirms.push(self.publisher.start(message).await?);
            }
        }
        for (queue, events) in replies {
            // Straight to the sender gateway's queue (default exchange).
            let payload = bus::encode(&events);
            let message = Outgoing::to_queue(queue, &payload);
            confirms.push(self.publisher.start(message).await?);
        }
        for confirm in confirms {
            confirm.wait().await?;
        }
        Ok(())
    }
}
