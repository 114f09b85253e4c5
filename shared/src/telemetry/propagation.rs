//! W3C trace context (`traceparent`, `tracestate`), in two places: the
//! headers of every AMQP message (the context of the span that published
//! it, written by `amqp::basic_publish` and read by `amqp::Inbound`), and
//! inside each bus command and stored-message event (the context of the
//! frame that created it). Both are needed because the gateway coalesces
//! many sends into one AMQP message and the persister stores many in one
//! commit: the header says which publish carried a message, the field says
//! whose message it is. Written and read here only, so no hop can forget it.

use opentelemetry::trace::TraceContextExt as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The trace context of one command or event, as W3C header fields.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TraceHeaders(BTreeMap<String, String>);

impl opentelemetry::propagation::Injector for TraceHeaders {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl opentelemetry::propagation::Extractor for TraceHeaders {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

impl TraceHeaders {
    /// The header fields, to copy into another carrier (AMQP headers).
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// The context of the current span, when it is being traced (sampled);
/// `None` when tracing is off, so an untraced system sends nothing extra.
pub fn current() -> Option<TraceHeaders> {
    if !super::tracing_enabled() {
        return None;
    }
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_sampled() {
        return None;
    }
    let mut headers = TraceHeaders::default();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut headers));
    (!headers.0.is_empty()).then_some(headers)
}

/// The W3C trace context of an incoming request, read with `header`
/// (e.g. an HTTP header map's lookup); `None` when it carries none.
pub fn from_headers<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<TraceHeaders> {
    let mut headers = TraceHeaders::default();
    for name in ["traceparent", "tracestate"] {
        if let Some(value) = header(name) {
            headers.0.insert(name.to_owned(), value.to_owned());
        }
    }
    (!headers.0.is_empty()).then_some(headers)
}

/// The remote context `headers` carry.
pub fn context(headers: &TraceHeaders) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(headers))
}

/// Makes `span` a child of the context `headers` carry (if any).
pub fn set_parent(span: &tracing::Span, headers: Option<&TraceHeaders>) {
    if let Some(headers) = headers {
        let _ = span.set_parent(context(headers));
    }
}

/// Links `span` to the context `headers` carry (if any): how a batch names
/// the sends it holds.
pub fn add_link(span: &tracing::Span, headers: Option<&TraceHeaders>) {
    if let Some(headers) = headers {
        let remote = context(headers);
        let span_context = remote.span().span_context().clone();
        if span_context.is_valid() {
            span.add_link(span_context);
        }
    }
}
