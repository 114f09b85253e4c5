//! Logging and tracing shared by every service: human-readable text locally,
//! JSON lines in production, filtered by `log.filter` (or `RUST_LOG`); and,
//! when an OTLP endpoint is configured, OpenTelemetry traces exported over
//! OTLP, `http/protobuf` or `grpc`. No endpoint, no exporter and no cost.
//!
//! Configuration follows the OpenTelemetry variables: `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or the key
//! `telemetry.otlp_endpoint`), `OTEL_EXPORTER_OTLP_PROTOCOL` (or
//! `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, or `telemetry.otlp_protocol`),
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` (default: parent-based, ratio
//! `telemetry.sample_ratio`). Spans are sent in batches by a thread of their
//! own: over HTTP/1.1 with a plain blocking client, or over gRPC with tonic
//! on a one-thread runtime of its own (the batch thread has none). Plain
//! `http://` only (an in-cluster collector; no TLS).

pub mod propagation;
pub mod spans;
pub mod throttle;

use crate::config::{LogFormat, LogSettings, TelemetrySettings};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The provider of the process, kept to flush at exit.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber, with the OTLP exporter when an endpoint
/// is configured. Safe to call more than once (tests start several services
/// in one process): later calls keep the first subscriber.
pub fn init(log: &LogSettings, telemetry: &TelemetrySettings, service: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, not in log files.
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(true)
        .with_ansi(std::io::stdout().is_terminal());
    let dispatch_slot: DispatchSlot = Arc::default();
    let fmt = match log.format {
        LogFormat::Json => {
            let json = fmt.json().flatten_event(true);
            let json_format = tracing_subscriber::fmt::format().json().flatten_event(true);
            json.event_format(WithTraceIds {
                inner: json_format,
                dispatch: dispatch_slot.clone(),
            })
            .boxed()
        }
        LogFormat::Text => fmt.boxed(),
    }
    .with_filter(filter);
    let otel = tracer_provider(telemetry, service).map(|provider| {
        let tracer = provider.tracer("mapmo-chat");
        let _ = PROVIDER.set(provider.clone());
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        // Spans are traced whatever the log filter says (a quiet log must
        // not mean no traces): the services' own spans are at INFO.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(fmt).with(otel));
    let _ = dispatch_slot.set(dispatch.downgrade());
    // Already set (tests start several services in one process): keep it.
    let _already_set = tracing::dispatcher::set_global_default(dispatch);
}

/// The subscriber's own dispatch, for the log formatter: while an event is
/// being written, `tracing`'s current dispatcher is a no-op on that thread.
type DispatchSlot = Arc<OnceLock<tracing::dispatcher::WeakDispatch>>;

/// Whether spans are exported: the per-message spans are made only then,
/// so the message path pays nothing for tracing that is off.
pub fn tracing_enabled() -> bool {
    PROVIDER.get().is_some()
}

/// Sends the spans still buffered (at shutdown).
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.force_flush();
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    HttpProtobuf,
    Grpc,
}

/// The OTLP protocol from the environment or the settings; `Err` names a
/// value that is neither `http/protobuf` nor `grpc`.
pub fn otlp_protocol(telemetry: &TelemetrySettings) -> Result<Protocol, String> {
    let name = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| telemetry.otlp_protocol.clone());
    match name.as_str() {
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        "grpc" => Ok(Protocol::Grpc),
        other => Err(other.to_owned()),
    }
}

/// The OTLP endpoint from the environment or the settings, if any: for
/// `http/protobuf` the base URL with the signal's path (`/v1/traces`)
/// appended, for `grpc` the base URL itself (a `..._TRACES_ENDPOINT` is
/// taken as it is, as the specification says).
pub fn otlp_endpoint(telemetry: &TelemetrySettings, protocol: Protocol) -> Option<String> {
    let with_path = |base: &str| {
        let base = base.trim_end_matches('/');
        match protocol {
            Protocol::HttpProtobuf => format!("{base}/v1/traces"),
            Protocol::Grpc => base.to_owned(),
        }
    };
    env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT").map(|base| with_path(&base)))
        .or_else(|| {
            (!telemetry.otlp_endpoint.is_empty()).then(|| with_path(&telemetry.otlp_endpoint))
        })
}

/// The runtime of the gRPC exporter: tonic needs a Tokio reactor, and the
/// batch span processor's thread has none.
static GRPC_RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();

fn span_exporter(
    protocol: Protocol,
    endpoint: &str,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    match protocol {
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_http_client(PlainHttp)
            .build()
            .map_err(|e| e.to_string()),
        Protocol::Grpc => {
            let runtime = GRPC_RUNTIME
                .get_or_init(|| {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .thread_name("otlp-grpc")
                        .enable_all()
                        .build()
                        .map_err(|e| eprintln!("the OTLP gRPC runtime: {e}"))
                        .ok()
                })
                .as_ref()
                .ok_or("no runtime for the gRPC exporter")?;
            let _in_runtime = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| e.to_string())
        }
    }
}

fn tracer_provider(telemetry: &TelemetrySettings, service: &str) -> Option<SdkTracerProvider> {
    let protocol = match otlp_protocol(telemetry) {
        Ok(protocol) => protocol,
        Err(other) => {
            eprintln!(
                "OTLP protocol {other:?}: only http/protobuf and grpc are built in; traces are off"
            );
            return None;
        }
    };
    let endpoint = otlp_endpoint(telemetry, protocol)?;
    let exporter = match span_exporter(protocol, &endpoint) {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("OTLP exporter for {endpoint}: {e}; traces are off");
            return None;
        }
    };
    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    let mut builder = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build());
    if env("OTEL_TRACES_SAMPLER").is_none() {
        let ratio = Sampler::TraceIdRatioBased(telemetry.sample_ratio);
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(ratio)));
    }
    Some(builder.build())
}

/// A JSON log line with the `trace_id` and `span_id` of the span it was
/// written in, when that span is traced: a log line leads to its trace.
struct WithTraceIds<F> {
    inner: F,
    dispatch: DispatchSlot,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use opentelemetry::trace::TraceContextExt as _;
        let mut line = String::new();
        self.inner.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        let context = ctx
            .lookup_current()
            .and_then(|span| {
                let dispatch = self.dispatch.get()?.upgrade()?;
                tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)
            })
            .unwrap_or_default();
        let span = context.span();
        let ids = span.span_context();
        let object_end = line
            .trim_end()
            .len()
            .checked_sub(1)
            .filter(|_| ids.is_valid());
        if let Some(end) = object_end.filter(|end| line.as_bytes()[*end] == b'}') {
            let fields = format!(
                r#","trace_id":"{}","span_id":"{}""#,
                ids.trace_id(),
                ids.span_id()
            );
            line.insert_str(end, &fields);
        }
        writer.write_str(&line)
    }
}

/// A blocking HTTP/1.1 POST over a TCP connection: the batch span processor
/// runs on a thread of its own, outside any async runtime.
#[derive(Debug)]
struct PlainHttp;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for PlainHttp {
    async fn send_bytes(
        &self,
        request: http::Request<opentelemetry_http::Bytes>,
    ) -> Result<http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        use std::io::{Read, Write};
        let uri = request.uri();
        if uri.scheme_str() != Some("http") {
            return Err(format!("{uri}: only http:// endpoints are supported").into());
        }
        let host = uri.host().ok_or("no host")?;
        let port = uri.port_u16().unwrap_or(80);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let timeout = std::time::Duration::from_secs(10);
        let mut stream = std::net::TcpStream::connect((host, port))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\nconnection: close\r\ncontent-length: {}\r\n",
            request.body().len()
        );
        for (name, value) in request.headers() {
            if name != http::header::CONTENT_LENGTH && name != http::header::HOST {
                head.push_str(&format!(
                    "{name}: {}\r\n",
                    value.to_str().unwrap_or_default()
                ));
            }
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(request.body())?;
        let mut answer = Vec::new();
        stream.take(1 << 20).read_to_end(&mut answer)?;
        let status: u16 = std::str::from_utf8(&answer)
            .ok()
            .and_then(|text| text.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .ok_or("no HTTP status in the collector's answer")?;
        let body = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| answer[at + 4..].to_vec())
            .unwrap_or_default();
        Ok(http::Response::builder()
            .status(status)
            .body(opentelemetry_http::Bytes::from(body))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_log_lines_inside_a_traced_span_carry_its_ids() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let provider = SdkTracerProvider::builder().build();
        let slot: DispatchSlot = Arc::default();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .event_format(WithTraceIds {
                        inner: tracing_subscriber::fmt::format().json().flatten_event(true),
                        dispatch: slot.clone(),
                    })
                    .with_writer(move || writer.clone()),
            )
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let dispatch = tracing::Dispatch::new(subscriber);
        let _ = slot.set(dispatch.downgrade());
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!("outside any span");
            let span = tracing::info_span!("work");
            span.in_scope(|| tracing::info!(user.id = 7, "inside"));
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].get("trace_id").is_none(), "{text}");
        let trace_id = lines[1]["trace_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(trace_id.len(), 32, "{text}");
        assert_eq!(lines[1]["span_id"].as_str().unwrap().len(), 16, "{text}");
        assert_eq!(lines[1]["user.id"], 7);
    }
}
