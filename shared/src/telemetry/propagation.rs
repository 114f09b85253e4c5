//! W3C trace context (`traceparent`, `tracestate`) carried by bus commands
//! and events. The gateway coalesces many sends into one AMQP message, and
//! the persister stores many in one commit, so the context travels with each
//! command and each stored-message event rather than in the AMQP headers:
//! a send, its batch (linked) and its delivery on every gateway end up in
//! the send's trace. Written and read here only, so no hop can forget it.

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
