//! One message, one trace: with an OTLP endpoint configured, the send on
//! the sender's gateway, the persister's batch (linked to the send, as the
//! messaging conventions say for batches) with its Postgres commit, and the
//! delivery on the recipient's gateway reach the collector, joined.
//!
//! Its own test binary: the tracing subscriber is global to a process, and
//! here it must be the first one installed, with the exporter.

use chat_tests::TestSystem;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The smallest OTLP/HTTP receiver: every span posted to it, decoded.
async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port for the receiver");
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let received = spans.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 65536];
                loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buf[..n]);
                    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if data.len() < end + 4 + length {
                        continue;
                    }
                    let request =
                        ExportTraceServiceRequest::decode(&data[end + 4..end + 4 + length])
                            .expect("an OTLP trace export");
                    {
                        let mut all = received.lock().unwrap_or_else(|p| p.into_inner());
                        for resource in request.resource_spans {
                            for scope in resource.scope_spans {
                                all.extend(scope.spans);
                            }
                        }
                    }
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
            });
        }
    });
    (url, spans)
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|value| match value {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            AnyValue::DoubleValue(d) => d.to_string(),
            AnyValue::BoolValue(b) => b.to_string(),
            other => format!("{other:?}"),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_one_trace_from_the_senders_gateway_to_the_recipients() {
    let (url, spans) = receiver().await;
    let mut settings = chat_shared::config::Settings::load_profile("test").unwrap();
    settings.telemetry.otlp_endpoint = url;
    settings.telemetry.sample_ratio = 1.0;
    chat_shared::telemetry::init(&settings.log, &settings.telemetry, "chat-tests");

    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;
    let stored = an.send_and_ack(conversation, "traced", "xin chào").await;
    assert_eq!(binh.next_of("message").await["message"], stored);
    let message_id = stored["id"].as_str().unwrap().to_owned();

    let find = |spans: &[Span]| -> Option<(Span, Vec<Span>, Span, Span)> {
        let send = spans.iter().find(|s| {
            s.name == "send chat.persist"
                && attribute(s, "chat.client_msg_id").as_deref() == Some("traced")
        })?;
        let deliveries: Vec<Span> = spans
            .iter()
            .filter(|s| {
                s.name == "process chat.fanout"
                    && s.trace_id == send.trace_id
                    && attribute(s, "message.id").as_deref() == Some(message_id.as_str())
            })
            .cloned()
            .collect();
        let batch = spans.iter().find(|s| {
            s.name == "process chat.persist"
                && s.links
                    .iter()
                    .any(|l| l.trace_id == send.trace_id && l.span_id == send.span_id)
        })?;
        let commit = spans
            .iter()
            .find(|s| s.name == "COMMIT" && s.parent_span_id == batch.span_id)?;
        (deliveries.len() >= 2).then(|| (send.clone(), deliveries, batch.clone(), commit.clone()))
    };
    let deadline = tokio::time::Instant::now() + chat_tests::DEADLINE;
    let (send, deliveries, batch, commit) = loop {
        chat_shared::telemetry::flush();
        if let Some(found) = find(&spans.lock().unwrap()) {
            break found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "trace incomplete; spans: {:?}",
            spans
                .lock()
                .unwrap()
                .iter()
                .map(|s| &s.name)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(
        attribute(&send, "messaging.system").as_deref(),
        Some("rabbitmq")
    );
    assert_eq!(send.kind, 4, "PRODUCER");
    for delivery in &deliveries {
        assert_eq!(delivery.parent_span_id, send.span_id, "a child of the send");
        assert_eq!(delivery.kind, 5, "CONSUMER");
        let since: f64 = attribute(delivery, "chat.stored_to_here_ms")
            .unwrap()
            .parse()
            .unwrap();
        assert!(since >= 0.0);
    }
    assert_eq!(batch.kind, 5, "CONSUMER");
    assert!(attribute(&batch, "messaging.batch.message_count").is_some());
    assert_eq!(commit.trace_id, batch.trace_id);
    assert_eq!(
        attribute(&commit, "db.system.name").as_deref(),
        Some("postgresql")
    );
}
