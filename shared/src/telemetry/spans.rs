//! The spans of the message path, after the OpenTelemetry messaging
//! conventions for RabbitMQ, made in one place so that every hop names and
//! tags them alike, and carries the trace context alike: [`send`] where a
//! command or event is published (`send chat.<destination>`, PRODUCER; it
//! returns the context the command must carry), [`process`] where one is
//! handled (CONSUMER, a child of the context it carried), [`batch`] where
//! many are handled together (CONSUMER, linked to each). Callers record the
//! fields left empty here when they apply (`chat.client_msg_id`,
//! `conversation.id`, `message.id`, `chat.stored_to_here_ms`).
//!
//! Nothing is made when tracing is off, or for a command that carries no
//! (sampled) context: an untraced system pays one branch per hop.

use super::propagation::{self, TraceHeaders};
use tracing::Span;
use tracing::field::Empty;

/// Publishing a `frame` (send, read, typing) towards `destination`
/// (persist, presence): the PRODUCER span, after `record` has filled in its
/// fields, and the trace context the published command must carry. Both are
/// empty when tracing is off or the span is not sampled.
pub fn send(
    destination: &'static str,
    frame: &'static str,
    record: impl FnOnce(&Span),
) -> (Span, Option<TraceHeaders>) {
    if !super::tracing_enabled() {
        return (Span::none(), None);
    }
    let span = producer(destination, frame);
    record(&span);
    let carried = span.in_scope(propagation::current);
    (span, carried)
}

/// Handling one command or event that carried `carried`: a CONSUMER span
/// named `name` (`process chat.fanout`, ...), a child of the carried
/// context; none when it carried none (it was not traced).
pub fn process(
    name: &'static str,
    destination: &'static str,
    carried: Option<&TraceHeaders>,
) -> Span {
    let Some(carried) = carried else {
        return Span::none();
    };
    let span = consumer(name, destination);
    propagation::set_parent(&span, Some(carried));
    span
}

/// Handling many commands together (a persist batch): one CONSUMER span,
/// with `messaging.batch.message_count` and a link to the context each
/// carried, as the conventions say for batches. (Made even when tracing is
/// off, once per batch: log lines inside it name it.)
pub fn batch<'a>(
    name: &'static str,
    destination: &'static str,
    count: usize,
    carried: impl IntoIterator<Item = Option<&'a TraceHeaders>>,
) -> Span {
    let span = consumer(name, destination);
    span.record("messaging.batch.message_count", count);
    for context in carried {
        propagation::add_link(&span, context);
    }
    span
}

/// The PRODUCER span itself (see [`send`]).
fn producer(destination: &'static str, frame: &'static str) -> Span {
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

/// The CONSUMER span itself (see [`process`], [`batch`]).
fn consumer(name: &'static str, destination: &'static str) -> Span {
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
