//! A server span per HTTP request, after the stable HTTP conventions
//! (`{method} {route}`, `http.request.method`, `http.route`,
//! `http.response.status_code`), continuing the caller's W3C trace context
//! (`traceparent`, `tracestate` headers). Made only when traces are
//! exported: with tracing off a request pays one branch.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use chat_shared::telemetry::propagation;
use tracing::Instrument as _;
use tracing::field::Empty;

pub async fn server_span(request: Request, next: Next) -> Response {
    if !chat_shared::telemetry::tracing_enabled() {
        return next.run(request).await;
    }
    let method = request.method().as_str().to_owned();
    // The route template, never the path: ids stay out of span names.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_owned();
    let span = tracing::info_span!(
        "HTTP request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = Empty,
    );
    let headers = request.headers();
    let carried = propagation::from_headers(|name| headers.get(name)?.to_str().ok());
    propagation::set_parent(&span, carried.as_ref());
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}
