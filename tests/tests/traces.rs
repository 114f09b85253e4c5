//! One message, one trace: with an OTLP endpoint configured, the send on
//! the sender's gateway, the persister's batch (linked to the send, as the
//! messaging conventions say for batches) with its Postgres commit, and the
//! delivery on the recipient's gateway reach the collector, joined. The
//! links that only the AMQP headers can make (the batch to the gateway's
//! publish, each delivery to the persister's) prove the context crosses
//! the broker in the headers of every hop. HTTP
//! requests get server spans that continue the caller's trace; a typing
//! frame's trace runs through the presence service. What
//! `chat-traces show` prints for the message names every hop.
//!
//! Its own test binary: the tracing subscriber is global to a process, and
//! here it must be the first one installed, with the exporter.

use chat_tests::TestSystem;
use chat_tests::otlp::{self, SpanRecord};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_one_trace_from_the_senders_gateway_to_the_recipients() {
    let spans = otlp::trace_everything(false).await;

    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;
    let stored = an.send_and_ack(conversation, "traced", "xin chào").await;
    assert_eq!(binh.next_of("message").await["message"], stored);
    let message_id = stored["id"].as_str().unwrap().to_owned();

    let (send, deliveries, batch, commit) =
        otlp::wait_for(&spans, "the message's trace", |spans| {
            let send = spans.iter().find(|s| {
                s.name == "create chat.persist"
                    && s.attribute("chat.client_msg_id") == Some("traced")
            })?;
            let deliveries: Vec<SpanRecord> = spans
                .iter()
                .filter(|s| {
                    s.name == "process chat.fanout"
                        && s.trace_id == send.trace_id
                        && s.attribute("message.id") == Some(message_id.as_str())
                })
                .cloned()
                .collect();
            let batch = spans.iter().find(|s| {
                s.name == "process chat.persist"
                    && s.links
                        .iter()
                        .any(|(trace, span)| *trace == send.trace_id && *span == send.span_id)
            })?;
            let commit = spans
                .iter()
                .find(|s| s.name == "COMMIT" && s.parent_span_id == batch.span_id)?;
            (deliveries.len() >= 2)
                .then(|| (send.clone(), deliveries, batch.clone(), commit.clone()))
        })
        .await;
    assert_eq!(send.attribute("messaging.system"), Some("rabbitmq"));
    assert_eq!(send.attribute("messaging.operation.type"), Some("create"));
    assert_eq!(send.attribute("chat.frame"), Some("send"));
    assert_eq!(send.kind, 4, "PRODUCER");

    // The AMQP message that carried the send: a PRODUCER span of the
    // gateway, linked to the send; the batch links to it too, which only
    // the AMQP message's headers can have told the persister.
    let publish = otlp::wait_for(&spans, "the gateway's publish", |spans| {
        spans
            .iter()
            .find(|s| {
                s.name == "send chat.persist"
                    && s.links
                        .contains(&(send.trace_id.clone(), send.span_id.clone()))
            })
            .cloned()
    })
    .await;
    assert_eq!(publish.kind, 4, "PRODUCER");
    assert_eq!(publish.attribute("messaging.operation.type"), Some("send"));
    assert!(publish.attribute("messaging.batch.message_count").is_some());
    assert!(
        publish
            .attribute("messaging.rabbitmq.destination.routing_key")
            .is_some()
    );
    assert!(
        batch
            .links
            .contains(&(publish.trace_id.clone(), publish.span_id.clone())),
        "the batch names the publish that brought the send (AMQP headers)"
    );
    // The persister's publish of the stored message, which every delivery
    // names through the fan-out message's headers.
    let fanout = otlp::wait_for(&spans, "the persister's fan-out publish", |spans| {
        spans
            .iter()
            .find(|s| s.name == "send chat.fanout" && s.parent_span_id == batch.span_id)
            .cloned()
    })
    .await;
    for delivery in &deliveries {
        assert_eq!(delivery.parent_span_id, send.span_id, "a child of the send");
        assert_eq!(delivery.kind, 5, "CONSUMER");
        assert!(
            delivery
                .links
                .contains(&(fanout.trace_id.clone(), fanout.span_id.clone())),
            "a delivery names the persister's publish (AMQP headers)"
        );
        let since: f64 = delivery
            .attribute("chat.stored_to_here_ms")
            .unwrap()
            .parse()
            .unwrap();
        assert!(since >= 0.0);
        let whole_way: f64 = delivery
            .attribute("chat.send_to_here_ms")
            .unwrap()
            .parse()
            .unwrap();
        assert!(whole_way >= since, "the send was read before it was stored");
    }
    assert_eq!(batch.kind, 5, "CONSUMER");
    assert!(batch.attribute("messaging.batch.message_count").is_some());
    assert_eq!(commit.trace_id, batch.trace_id);
    assert_eq!(commit.attribute("db.system.name"), Some("postgresql"));

    // What `chat-traces show <message id>` prints: the send, both
    // deliveries, and the linked batch with its commit.
    let printed = {
        let all = spans.lock().unwrap();
        otlp::render(&otlp::trace_of(&all, &message_id))
    };
    for line in [
        "create chat.persist",
        "process chat.fanout",
        "process chat.persist",
        "COMMIT",
    ] {
        assert!(printed.contains(line), "{line} in:\n{printed}");
    }
    assert_eq!(
        printed.matches("process chat.fanout").count(),
        deliveries.len(),
        "{printed}"
    );

    // A read frame: a producer span of its own.
    an.send_json(serde_json::json!({"type": "read", "conversation_id": conversation, "seq": 1}))
        .await;
    let read = otlp::wait_for(&spans, "the read frame's span", |spans| {
        spans
            .iter()
            .find(|s| s.name == "create chat.persist" && s.attribute("chat.frame") == Some("read"))
            .cloned()
    })
    .await;
    assert_eq!(read.kind, 4, "PRODUCER");

    // A typing frame: the gateway's producer span, presence's relay as its
    // child, and the delivery on the recipient's gateway as the relay's,
    // linked to the relay's publish (the AMQP headers).
    binh.send_json(
        serde_json::json!({"type": "typing", "conversation_id": conversation, "state": "start"}),
    )
    .await;
    assert_eq!(an.next_of("typing").await["user_id"], 2);
    let (typing, relay, delivered) = otlp::wait_for(&spans, "the typing frame's trace", |spans| {
        let typing = spans.iter().find(|s| {
            s.name == "create chat.presence" && s.attribute("chat.frame") == Some("typing")
        })?;
        let relay = spans
            .iter()
            .find(|s| s.name == "process chat.presence" && s.parent_span_id == typing.span_id)?;
        let delivered = spans
            .iter()
            .find(|s| s.name == "process chat.typing" && s.parent_span_id == relay.span_id)?;
        Some((typing.clone(), relay.clone(), delivered.clone()))
    })
    .await;
    assert_eq!(typing.kind, 4, "PRODUCER");
    assert_eq!((relay.kind, delivered.kind), (5, 5), "CONSUMERs");
    assert_eq!(delivered.trace_id, typing.trace_id);
    assert!(
        delivered
            .links
            .contains(&(relay.trace_id.clone(), relay.span_id.clone())),
        "the typing delivery names the relay that published it (AMQP headers)"
    );

    // HTTP requests: a server span each, named by method and route (never
    // the path), continuing the caller's trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let token = system.token(1).await;
    let response = reqwest::Client::new()
        .get(format!(
            "http://{}/api/conversations/{conversation}/messages",
            system.gateways[0]
        ))
        .bearer_auth(&token)
        .header(
            "traceparent",
            format!("00-{caller_trace}-00f067aa0ba902b7-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request = otlp::wait_for(&spans, "the request's server span", |spans| {
        spans.iter().find(|s| s.trace_id == caller_trace).cloned()
    })
    .await;
    assert_eq!(request.name, "GET /api/conversations/{id}/messages");
    assert_eq!(request.kind, 2, "SERVER");
    assert_eq!(request.parent_span_id, "00f067aa0ba902b7");
    assert_eq!(
        request.attribute("http.route"),
        Some("/api/conversations/{id}/messages")
    );
    assert_eq!(request.attribute("http.response.status_code"), Some("200"));
}
