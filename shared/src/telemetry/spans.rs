//! The spans of the message path, after the OpenTelemetry messaging
//! conventions for RabbitMQ, made in one place so that every hop names and
//! tags them alike, and carries the trace context alike:
//! - [`create`] where a frame becomes a command or event (`create
//!   chat.<destination>`, PRODUCER): its context is the message's creation
//!   context, carried inside the command;
//! - [`publish`] where commands go out in one AMQP message (`send
//!   chat.<destination>`, PRODUCER, `messaging.batch.message_count`, a link to
//!   each command's creation context): `amqp::basic_publish` writes the
//!   context of the current span into the AMQP headers;
//! - [`process`] where one is handled (CONSUMER, a child of the context it
//!   carried, linked to the publish that brought it);
//! - [`batch`] where many are handled together (CONSUMER, linked to each
//!   message and to each publish that brought them).
//!
//! Callers record the fields left empty here when they apply
//! (`chat.client_msg_id`, `conversation.id`, `message.id`,
//! `chat.stored_to_here_ms`, `chat.send_to_here_ms`).
//!
//! Nothing is made when tracing is off, or for a command that carries no
//! (sampled) context: an untraced system pays one branch per hop.

use super::propagation::{self, TraceHeaders};
use tracing::Span;
use tracing::field::Empty;

/// A `frame` (send, read, typing) becoming a command towards `destination`
/// (persist, presence): the PRODUCER span, after `record` has filled in its
/// fields, and the trace context the command must carry. Both are empty
/// when tracing is off or the span is not sampled.
pub fn create(
    destination: &'static str,
    frame: &'static str,
    record: impl FnOnce(&Span),
) -> (Span, Option<TraceHeaders>) {
    if !super::tracing_enabled() {
        return (Span::none(), None);
    }
    let span = tracing::info_span!(
        "create",
        otel.name = %format_args!("create chat.{destination}"),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "create",
        messaging.destination.name = destination,
        chat.frame = frame,
        chat.client_msg_id = Empty,
        conversation.id = Empty,
    );
    record(&span);
    let carried = span.in_scope(propagation::current);
    (span, carried)
}

/// Publishing one AMQP message of `count` commands towards `destination`
/// whose creation contexts are `carried`: a PRODUCER span (as the
/// persister's `send chat.fanout`), a child of the
/// first traced command (so it is sampled whenever one of them is) and
/// linked to every traced one; none when none is traced. Published inside
/// it, the AMQP message carries its context in its headers.
pub fn publish<'a>(
    destination: &'static str,
    routing_key: &str,
    count: usize,
    carried: impl IntoIterator<Item = Option<&'a TraceHeaders>>,
) -> Span {
    if !super::tracing_enabled() {
        return Span::none();
    }
    let carried: Vec<&TraceHeaders> = carried.into_iter().flatten().collect();
    if carried.is_empty() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "send",
        otel.name = %format_args!("send chat.{destination}"),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.destination.name = destination,
        messaging.rabbitmq.destination.routing_key = routing_key,
        messaging.batch.message_count = count,
    );
    follow(&span, carried);
    span
}

/// Makes `span` a child of the first of `carried` (so it is sampled when
/// that one was) and links it to each.
fn follow<'a>(span: &Span, carried: impl IntoIterator<Item = &'a TraceHeaders>) {
    let mut carried = carried.into_iter();
    if let Some(first) = carried.next() {
        propagation::set_parent(span, Some(first));
        propagation::add_link(span, Some(first));
    }
    for context in carried {
        propagation::add_link(span, Some(context));
    }
}

/// Handling one command or event that carried `carried`, from an AMQP
/// message whose headers carried `via`: a CONSUMER span named `name`
/// (`process chat.fanout`, ...), a child of the carried context and linked
/// to the publish (`via`); none when it carried no context.
pub fn process(
    name: &'static str,
    destination: &'static str,
    carried: Option<&TraceHeaders>,
    via: Option<&TraceHeaders>,
) -> Span {
    let Some(carried) = carried else {
        return Span::none();
    };
    let span = consumer(name, destination);
    propagation::set_parent(&span, Some(carried));
    propagation::add_link(&span, via);
    span
}

/// Handling many commands together (a persist batch): one CONSUMER span,
/// with `messaging.batch.message_count`, a link to the context each
/// carried and to each publish that brought them (`via`), as the
/// conventions say for batches. It is a child of the first traced command,
/// so it is sampled whenever one of them is. (Made even when tracing is
/// off, once per batch: log lines inside it name it.)
pub fn batch<'a>(
    name: &'static str,
    destination: &'static str,
    count: usize,
    carried: impl IntoIterator<Item = Option<&'a TraceHeaders>>,
    via: impl IntoIterator<Item = Option<&'a TraceHeaders>>,
) -> Span {
    let span = consumer(name, destination);
    span.record("messaging.batch.message_count", count);
    follow(&span, carried.into_iter().flatten());
    let mut publishes: Vec<&TraceHeaders> = via.into_iter().flatten().collect();
    publishes.dedup();
    for context in publishes {
        propagation::add_link(&span, Some(context));
    }
    span
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
        chat.send_to_here_ms = Empty,
    )
}
