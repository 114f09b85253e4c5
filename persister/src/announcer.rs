//! After commit: tell the gateways. Stored messages go to the fan-out
//! exchange once each, routed to every member's key (RabbitMQ's `CC`
//! header), so each gateway hosting any member gets one copy. Replies for one
//! session go straight to its gateway's queue. All confirms are awaited
//! before the input deliveries are acked.

use crate::writer::Outcome;
use chat_shared::amqp::{ConfirmedPublisher, Outgoing, PublishError, Topology};
use chat_shared::bus::{self, GatewayEvent, Origin};

pub struct Announcer {
    publisher: ConfirmedPublisher,
    fanout: String,
}

impl Announcer {
    pub fn new(publisher: ConfirmedPublisher, topo: &Topology) -> Self {
        Self {
            publisher,
            fanout: topo.fanout_exchange(),
        }
    }

    pub async fn announce(&self, outcomes: &[Outcome]) -> Result<(), PublishError> {
        let mut confirms = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            let (exchange, keys, event) = match outcome {
                Outcome::Deliver {
                    message,
                    members,
                    origin_session,
                } => {
                    let keys: Vec<String> =
                        members.iter().map(|m| Topology::user_key(*m)).collect();
                    let event = GatewayEvent::Stored {
                        message: message.clone(),
                        member_ids: members.clone(),
                        origin: Some(Origin {
                            session_id: origin_session.clone(),
                        }),
                    };
                    (self.fanout.as_str(), keys, event)
                }
                Outcome::Reply {
                    user_id,
                    session_id,
                    reply_to,
                    outcome,
                } => {
                    let event = GatewayEvent::Reply {
                        user_id: *user_id,
                        session_id: session_id.clone(),
                        outcome: outcome.clone(),
                    };
                    ("", vec![reply_to.clone()], event)
                }
                Outcome::ReadMoved { read, recipients } => {
                    let keys: Vec<String> =
                        recipients.iter().map(|m| Topology::user_key(*m)).collect();
                    let event = GatewayEvent::Read {
                        conversation_id: read.conversation_id,
                        user_id: read.user_id,
                        seq: read.seq,
                        recipients: recipients.clone(),
                    };
                    (self.fanout.as_str(), keys, event)
                }
            };
            let Some((first, rest)) = keys.split_first() else {
                continue;
            };
            let payload = bus::encode(&[event]);
            // Not mandatory: a member with no session anywhere routes nowhere,
            // and that is fine (they read history when they come back).
            let confirm = self
                .publisher
                .start(Outgoing {
                    exchange,
                    routing_key: first,
                    cc: rest,
                    payload: &payload,
                    persistent: false,
                    mandatory: false,
                })
                .await?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            confirm.wait().await?;
        }
        Ok(())
    }
}
