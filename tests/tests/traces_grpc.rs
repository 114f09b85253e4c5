//! Traces over OTLP/gRPC (`telemetry.otlp_protocol = "grpc"`, as
//! `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` would say): one message's spans, from
//! both gateways and the persister, reach a gRPC receiver, joined in one
//! trace as over OTLP/HTTP (`traces.rs` checks every attribute; this checks
//! that the other transport carries them).
//!
//! Its own test binary: the tracing subscriber is global to a process.

use chat_tests::TestSystem;
use chat_tests::otlp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_one_trace_over_otlp_grpc() {
    let spans = otlp::trace_everything(true).await;

    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;
    let stored = an.send_and_ack(conversation, "over-grpc", "xin chào").await;
    assert_eq!(binh.next_of("message").await["message"], stored);
    let message_id = stored["id"].as_str().unwrap().to_owned();

    otlp::wait_for(&spans, "the message's spans over gRPC", |all| {
        let create = all.iter().find(|s| {
            s.name == "create chat.persist"
                && s.attribute("chat.client_msg_id") == Some("over-grpc")
        })?;
        let delivered = all.iter().any(|s| {
            s.name == "process chat.fanout"
                && s.trace_id == create.trace_id
                && s.attribute("message.id") == Some(message_id.as_str())
        });
        let batch = all.iter().any(|s| {
            s.name == "process chat.persist"
                && s.links
                    .contains(&(create.trace_id.clone(), create.span_id.clone()))
        });
        (delivered && batch).then_some(())
    })
    .await;
}
