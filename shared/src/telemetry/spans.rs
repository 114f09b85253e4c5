//! The spans of the message path, after the OpenTelemetry messaging
//! conventions for RabbitMQ, made in one place so that every hop names and
//! tags them alike: `send chat.<destination>` (PRODUCER) where a command or
//! event is published, `process chat.<destination>` (CONSUMER) where it is
//! handled. Callers record the fields left empty here when they apply
//! (`chat.client_msg_id`, `conversation.id`, `message.id`,
//! `chat.stored_to_here_ms`, `messaging.batch.message_count`).

use tracing::Span;
use tracing::field::Empty;

/// Publishing a `frame` (send, read, typing) towards `destination`
/// (persist, presence).
pub fn producer(destination: &'static str, frame: &'static str) -> Span {
    tracing::info_span!(
        "send",
        otel.name = %format_args!("send chat.{destination}"),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.destination.name = destination,
        chat.frame = frame,
        chat.client_msg_id = Empty,
        conversation.id = Empty,
    )
}

/// Handling what arrived from `destination`; `name` says what
/// (`process chat.fanout`, `process chat.typing`, ...).
pub fn consumer(name: &'static str, destination: &'static str) -> Span {
    tracing::info_span!(
        "process",
        otel.name = name,
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = destination,
        messaging.batch.message_count = Empty,
        conversation.id = Empty,
        message.id = Empty,
        chat.stored_to_here_ms = Empty,
    )
}
