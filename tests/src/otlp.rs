//! The smallest OTLP trace receivers: OTLP/HTTP (protobuf over HTTP/1.1,
//! `POST /v1/traces`) and OTLP/gRPC (HTTP/2 without TLS), for the trace
//! tests and for `chat-traces`, the local
//! stand-in for a trace viewer (no collector or viewer is packaged for
//! Debian 12). Spans become [`SpanRecord`]s: plain data, one JSON line each.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Largest export accepted (the SDK's batches are far smaller).
const MAX_BODY: usize = 16 << 20;
/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;

/// One span, as a trace viewer needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parent_span_id: String,
    pub name: String,
    /// 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub service: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: BTreeMap<String, String>,
    /// (trace id, span id) of each linked span.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<(String, String)>,
}

impl SpanRecord {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    pub fn duration_ms(&self) -> f64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano) as f64 / 1e6
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| {
            let v = kv.value.as_ref().and_then(|v| v.value.as_ref());
            (kv.key.clone(), value(v))
        })
        .collect()
}

/// The spans of one OTLP export request.
pub fn decode(body: &[u8]) -> Result<Vec<SpanRecord>, prost::DecodeError> {
    let request = ExportTraceServiceRequest::decode(body)?;
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .and_then(|mut a| a.remove("service.name"))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(SpanRecord {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    service: service.clone(),
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    attributes: attributes(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                });
            }
        }
    }
    Ok(spans)
}

/// Accepts OTLP/HTTP exports on `listener` and sends their spans to `spans`
/// until it is dropped. Anything but a decodable `POST` is answered 400.
pub async fn serve(listener: TcpListener, spans: mpsc::Sender<Vec<SpanRecord>>) {
    accept_each(listener, spans, connection).await;
}

/// Serves each connection of `listener` with `serve`, at most
/// [`MAX_CONNECTIONS`] at once: exporters hold one connection each; past
/// this many, new ones wait in the listen backlog until one closes.
async fn accept_each<F>(
    listener: TcpListener,
    spans: mpsc::Sender<Vec<SpanRecord>>,
    serve: impl Fn(TcpStream, mpsc::Sender<Vec<SpanRecord>>) -> F,
) where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((socket, _)) = listener.accept().await else {
            return;
        };
        let connection = serve(socket, spans.clone());
        tokio::spawn(async move {
            connection.await;
            drop(slot);
        });
    }
}

/// For the trace tests: flushes this process's exporter until `find` finds
/// what it looks for in the spans received, and fails the test after the
/// deadline, naming what it had.
pub async fn wait_for<T>(
    spans: &std::sync::Mutex<Vec<SpanRecord>>,
    what: &str,
    find: impl Fn(&[SpanRecord]) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + crate::DEADLINE;
    loop {
        chat_shared::telemetry::flush();
        {
            let all = spans.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(found) = find(&all) {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not found in {:?}",
                all.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Exports every span of this test process (the services it starts in
/// process included) to a new [`receiver`] (OTLP/gRPC if `grpc`), and
/// returns what the receiver gets. Once per process: the tracing subscriber
/// is global, so each trace test is a test binary of its own.
pub async fn trace_everything(grpc: bool) -> std::sync::Arc<std::sync::Mutex<Vec<SpanRecord>>> {
    let (url, spans) = receiver(grpc).await;
    let mut settings = chat_shared::config::Settings::load_profile("test")
        .unwrap_or_else(|e| panic!("the test profile: {e}"));
    settings.telemetry.otlp_endpoint = url;
    settings.telemetry.otlp_protocol = if grpc { "grpc" } else { "http/protobuf" }.into();
    settings.telemetry.sample_ratio = 1.0;
    chat_shared::telemetry::init(&settings.log, &settings.telemetry, "chat-tests");
    spans
}

/// A receiver on a free loopback port (OTLP/gRPC if `grpc`, else
/// OTLP/HTTP) for a test: the URL to export to, and every span it got.
pub async fn receiver(grpc: bool) -> (String, std::sync::Arc<std::sync::Mutex<Vec<SpanRecord>>>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("a port for the receiver: {e}"));
    let url = listener
        .local_addr()
        .map(|a| format!("http://{a}"))
        .unwrap_or_else(|e| panic!("its address: {e}"));
    let (tx, mut rx) = mpsc::channel(64);
    if grpc {
        tokio::spawn(serve_grpc(listener, tx));
    } else {
        tokio::spawn(serve(listener, tx));
    }
    let spans: std::sync::Arc<std::sync::Mutex<Vec<SpanRecord>>> = Default::default();
    let received = spans.clone();
    tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            received
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(batch);
        }
    });
    (url, spans)
}

/// One keep-alive connection: request after request.
async fn connection(mut socket: TcpStream, spans: mpsc::Sender<Vec<SpanRecord>>) {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        // The head, then the body its Content-Length announces.
        let end = loop {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => data.extend_from_slice(&buf[..n]),
            }
            if data.len() > 64 * 1024 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if length > MAX_BODY {
            let _ = socket.write_all(&response(413)).await;
            return;
        }
        while data.len() < end + 4 + length {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => data.extend_from_slice(&buf[..n]),
            }
        }
        let body: Vec<u8> = data.drain(..end + 4 + length).skip(end + 4).collect();
        let status = match (head.starts_with("post "), decode(&body)) {
            (true, Ok(decoded)) => {
                if spans.send(decoded).await.is_err() {
                    return;
                }
                200
            }
            _ => 400,
        };
        if socket.write_all(&response(status)).await.is_err() {
            return;
        }
        // A client that asked to close reads the answer until the end.
        if head
            .lines()
            .any(|l| l.replace(' ', "") == "connection:close")
        {
            return;
        }
    }
}

/// Accepts OTLP/gRPC exports (HTTP/2 without TLS,
/// `opentelemetry.proto.collector.trace.v1.TraceService/Export`) on
/// `listener` and sends their spans to `spans` until it is dropped. A
/// request it cannot read is answered `grpc-status: 3` (invalid argument).
pub async fn serve_grpc(listener: TcpListener, spans: mpsc::Sender<Vec<SpanRecord>>) {
    accept_each(listener, spans, |socket, spans| async move {
        let service = hyper::service::service_fn(move |request| {
            let spans = spans.clone();
            async move { Ok::<_, std::convert::Infallible>(grpc_export(request, spans).await) }
        });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
            .await;
    })
    .await;
}

type GrpcBody = http_body_util::StreamBody<
    futures_util::stream::Iter<
        std::vec::IntoIter<
            Result<hyper::body::Frame<hyper::body::Bytes>, std::convert::Infallible>,
        >,
    >,
>;

/// One unary call: a length-prefixed message in, an empty
/// `ExportTraceServiceResponse` and the status trailer out.
async fn grpc_export(
    request: hyper::Request<hyper::body::Incoming>,
    spans: mpsc::Sender<Vec<SpanRecord>>,
) -> hyper::Response<GrpcBody> {
    use http_body_util::BodyExt as _;
    let is_export =
        request.uri().path() == "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    let body = http_body_util::Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes());
    // The message: 1 byte "compressed" (0), 4 bytes length, the protobuf.
    let decoded = body.ok().filter(|_| is_export).and_then(|b| {
        let (head, message) = (b.get(..5)?, b.get(5..)?);
        let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        (head[0] == 0 && length == message.len()).then(|| decode(message).ok())?
    });
    let status = match decoded {
        Some(decoded) => {
            let _ = spans.send(decoded).await;
            "0"
        }
        None => "3",
    };
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert(
        "grpc-status",
        hyper::header::HeaderValue::from_static(status),
    );
    let mut frames = Vec::new();
    if status == "0" {
        frames.push(Ok(hyper::body::Frame::data(
            hyper::body::Bytes::from_static(&[0, 0, 0, 0, 0]),
        )));
    }
    frames.push(Ok(hyper::body::Frame::trailers(trailers)));
    let mut response = hyper::Response::new(http_body_util::StreamBody::new(
        futures_util::stream::iter(frames),
    ));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// An empty answer: an empty `ExportTraceServiceResponse` is zero bytes.
fn response(status: u16) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        413 => "Payload Too Large",
        _ => "Bad Request",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The spans of the traces a message took part in, found by a trace id, a
/// message id (`message.id`) or a client_msg_id (`chat.client_msg_id`):
/// its trace, plus the batches that link to it (a batch is the trace of its
/// own, linked to each send it stored). Sorted by start time.
pub fn trace_of<'a>(spans: &'a [SpanRecord], query: &str) -> Vec<&'a SpanRecord> {
    let mut traces: Vec<&str> = spans
        .iter()
        .filter(|s| {
            s.trace_id == query
                || s.attribute("message.id") == Some(query)
                || s.attribute("chat.client_msg_id") == Some(query)
        })
        .map(|s| s.trace_id.as_str())
        .collect();
    traces.sort_unstable();
    traces.dedup();
    let linked: Vec<&str> = spans
        .iter()
        .filter(|s| s.links.iter().any(|(t, _)| traces.contains(&t.as_str())))
        .map(|s| s.trace_id.as_str())
        .collect();
    traces.extend(linked);
    let mut found: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| traces.contains(&s.trace_id.as_str()))
        .collect();
    found.sort_by_key(|s| (s.start_unix_nano, s.end_unix_nano));
    found.dedup_by(|a, b| a.trace_id == b.trace_id && a.span_id == b.span_id);
    found
}

/// `spans` as indented trees, one per trace: each line the start (ms after
/// the first span), the duration, the service, the name and the attributes
/// that matter for "why was this message slow".
pub fn render(spans: &[&SpanRecord]) -> String {
    let Some(t0) = spans.iter().map(|s| s.start_unix_nano).min() else {
        return "no spans found\n".to_owned();
    };
    let mut out = String::new();
    let mut traces: Vec<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    traces.dedup();
    let mut seen = std::collections::HashSet::new();
    for trace in traces {
        if !seen.insert(trace) {
            continue;
        }
        out.push_str(&format!("trace {trace}\n"));
        let in_trace: Vec<&SpanRecord> = spans
            .iter()
            .copied()
            .filter(|s| s.trace_id == trace)
            .collect();
        let ids: std::collections::HashSet<&str> =
            in_trace.iter().map(|s| s.span_id.as_str()).collect();
        // Roots: no parent, or a parent outside what was received.
        for root in in_trace
            .iter()
            .filter(|s| s.parent_span_id.is_empty() || !ids.contains(s.parent_span_id.as_str()))
        {
            tree(&mut out, &in_trace, root, t0, 1);
        }
    }
    out
}

const SHOWN: [&str; 9] = [
    "http.route",
    "http.response.status_code",
    "chat.client_msg_id",
    "message.id",
    "conversation.id",
    "messaging.batch.message_count",
    "db.operation.batch.size",
    "chat.stored_to_here_ms",
    "error.type",
];

fn tree(out: &mut String, spans: &[&SpanRecord], span: &SpanRecord, t0: u64, depth: usize) {
    let mut attributes: Vec<String> = SHOWN
        .iter()
        .filter_map(|key| span.attribute(key).map(|v| format!("{key}={v}")))
        .collect();
    if !span.links.is_empty() {
        attributes.push(format!("links={}", span.links.len()));
    }
    out.push_str(&format!(
        "{:>9.3} ms {:>8.3} ms {}{} [{}] {}\n",
        span.start_unix_nano.saturating_sub(t0) as f64 / 1e6,
        span.duration_ms(),
        "  ".repeat(depth),
        span.name,
        span.service,
        attributes.join(" "),
    ));
    for child in spans.iter().filter(|s| s.parent_span_id == span.span_id) {
        tree(out, spans, child, t0, depth + 1);
    }
}
