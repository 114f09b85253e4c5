//! The session loop, driven through channels with a paused clock: what it
//! writes, what it queues, and when it ends.

use super::blocks::Blocks;
use super::blocks::fake::FakeBlocks;
use super::close::{self, Ended};
use super::context::{SessionContext, Timing};
use super::frames::Rules;
use super::members::Memberships;
use super::members::fake::FakeMembers;
use super::session::Session;
use crate::auth::AuthUser;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::outbound::{Outbound, encode};
use crate::presence_feed::{self, PresenceFeed};
use crate::sender::Sender;
use axum::extract::ws::{Message as WsMessage, Utf8Bytes};
use chat_shared::bus::{PersistCommand, PresenceEvent};
use chat_shared::config::LimitSettings;
use chat_shared::ids::{ClientMsgId, ConversationId, UserId};
use chat_shared::protocol::ServerFrame;
use futures_util::{Sink, Stream};
use serde_json::{Value, json};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

const SEND_TIMEOUT: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_secs(30);

/// A client's end of a socket: what it sends, what it reads; a client that
/// stops reading makes every write wait.
struct TestSocket {
    incoming: mpsc::UnboundedReceiver<Result<WsMessage, axum::Error>>,
    outgoing: mpsc::UnboundedSender<WsMessage>,
    stalled: Arc<AtomicBool>,
}

impl Stream for TestSocket {
    type Item = Result<WsMessage, axum::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx)
    }
}

impl Sink<WsMessage> for TestSocket {
    type Error = axum::Error;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        if self.stalled.load(Ordering::Relaxed) {
            Poll::Pending // never woken: only the write deadline ends it
        } else {
            Poll::Ready(Ok(()))
        }
    }
    fn start_send(self: Pin<&mut Self>, item: WsMessage) -> Result<(), axum::Error> {
        self.outgoing.send(item).map_err(axum::Error::new)
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
}

/// One session of user 7 (a member of conversation 5 only), and every end
/// of it a test can hold.
struct Harness {
    client: mpsc::UnboundedSender<Result<WsMessage, axum::Error>>,
    written: mpsc::UnboundedReceiver<WsMessage>,
    stalled: Arc<AtomicBool>,
    commands: mpsc::Receiver<PersistCommand>,
    presence: mpsc::Receiver<presence_feed::Queued>,
    hub: mpsc::Sender<Outbound>,
    overflow: Arc<Notify>,
    shutdown: watch::Sender<bool>,
    broker_lost: watch::Sender<bool>,
    session: JoinHandle<Ended>,
}

fn limits() -> LimitSettings {
    LimitSettings {
        connections_per_ip: std::num::NonZeroUsize::new(10).unwrap(),
        connections_per_user: std::num::NonZeroUsize::new(10).unwrap(),
        sends_per_second: 100.0,
        sends_burst: 100,
        user_sends_per_second: 100.0,
        user_sends_burst: 100,
        reads_per_second: 10.0,
        reads_burst: 10,
        http_per_second: 1.0,
        http_burst: 1,
        server_api_per_second: 1.0,
        server_api_burst: 1,
        groups_per_hour: 1,
    }
}

/// User 7 is in the group 5, and in the direct conversation 9 with user 8.
fn members() -> FakeMembers {
    let members = FakeMembers::direct(9, 7, 8);
    members.add(5, 7);
    members
}

/// Starts a session whose publisher queue holds `publish_queue` commands.
fn start(publish_queue: usize, expires_in_secs: i64) -> Harness {
    let (client, incoming) = mpsc::unbounded_channel();
    let (outgoing, written) = mpsc::unbounded_channel();
    let stalled = Arc::new(AtomicBool::new(false));
    let socket = TestSocket {
        incoming,
        outgoing,
        stalled: stalled.clone(),
    };
    let (sender, commands) = Sender::channel(publish_queue);
    let (presence_feed, presence) = PresenceFeed::new("gw-test");
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (broker_lost, broker_lost_rx) = watch::channel(false);
    let ctx = SessionContext {
        rules: Rules {
            max_body_chars: 100,
            max_pending_sends: 16,
            send_timeout: SEND_TIMEOUT,
            sends_per_second: 100.0,
            sends_burst: 100,
            reads_per_second: 10.0,
            reads_burst: 10,
        },
        timing: Timing {
            heartbeat: HEARTBEAT,
            heartbeat_timeout: Duration::from_secs(90),
            write_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(2),
        },
        sender,
        members: Arc::new(Memberships::new(Arc::new(members()))),
        // User 8 blocks user 7.
        blocks: Arc::new(Blocks::new(Arc::new(FakeBlocks::with(&[(8, 7)])))),
        presence: presence_feed,
        limits: Arc::new(Limits::new(&limits())),
        metrics: Arc::new(Metrics::new()),
        reply_to: "gw.q".into(),
        shutdown: shutdown_rx,
        broker_lost: broker_lost_rx,
    };
    let user = AuthUser {
        user_id: UserId::new(7).unwrap(),
        name: None,
        expires_at: crate::auth::unix_now() + expires_in_secs,
    };
    let (hub, rx) = mpsc::channel(64);
    let overflow = Arc::new(Notify::new());
    let session = Session::new(socket, Arc::new(ctx), user, "s1".into());
    let session = tokio::spawn(session.serve(rx, overflow.clone()));
    Harness {
        client,
        written,
        stalled,
        commands,
        presence,
        hub,
        overflow,
        shutdown,
        broker_lost,
        session,
    }
}

impl Harness {
    fn send_text(&self, frame: Value) {
        let text = WsMessage::Text(frame.to_string().into());
        self.client.send(Ok(text)).unwrap();
    }

    fn send(&self, id: &str) {
        self.send_text(
            json!({"type": "send", "conversation_id": 5, "client_msg_id": id, "body": "hi"}),
        );
    }

    /// The next text frame the session writes (pings skipped).
    async fn next_frame(&mut self) -> Value {
        loop {
            match self
                .written
                .recv()
                .await
                .expect("the session wrote nothing more")
            {
                WsMessage::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                WsMessage::Ping(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The close frame's code, skipping what comes before it.
    async fn close_code(&mut self) -> u16 {
        loop {
            match self.written.recv().await.expect("no close frame") {
                WsMessage::Close(Some(frame)) => return frame.code,
                WsMessage::Close(None) => panic!("a close frame without a code"),
                _ => continue,
            }
        }
    }

    /// Nothing but pings written for `how_long` (of the paused clock).
    async fn writes_nothing_for(&mut self, how_long: Duration) {
        tokio::time::sleep(how_long).await;
        while let Ok(message) = self.written.try_recv() {
            assert!(
                matches!(message, WsMessage::Ping(_)),
                "unexpected {message:?}"
            );
        }
    }

    async fn command(&mut self) -> PersistCommand {
        self.commands
            .recv()
            .await
            .expect("the session queued nothing")
    }

    async fn ended(self) -> Ended {
        self.session.await.unwrap()
    }
}

fn sent_id(command: &PersistCommand) -> String {
    match command {
        PersistCommand::Send(send) => send.client_msg_id.as_str().to_owned(),
        PersistCommand::Read(_) => panic!("expected a send"),
    }
}

fn msg_id(id: &str) -> Box<ClientMsgId> {
    Box::new(ClientMsgId::try_from(id.to_owned()).unwrap())
}

#[tokio::test(start_paused = true)]
async fn hello_comes_first_then_every_frame_is_answered() {
    let mut h = start(8, 3600);
    let hello = h.next_frame().await;
    assert_eq!(
        (hello["type"].as_str(), hello["user_id"].as_i64()),
        (Some("hello"), Some(7))
    );
    assert_eq!(hello["heartbeat_ms"], 30_000);
    assert_eq!(hello["max_body_chars"], 100);
    h.send_text(json!({"type": "ping"}));
    assert_eq!(h.next_frame().await["type"], "pong");
    h.client
        .send(Ok(WsMessage::Binary(vec![1].into())))
        .unwrap();
    assert_eq!(h.next_frame().await["code"], "bad_request");
    h.client.send(Ok(WsMessage::Close(None))).unwrap();
    assert_eq!(h.ended().await, Ended::ClientLeft);
}

#[tokio::test(start_paused = true)]
async fn an_acked_send_is_settled_and_never_answered_again() {
    let mut h = start(8, 3600);
    h.next_frame().await; // hello
    h.send("m1");
    let command = h.command().await;
    assert_eq!(sent_id(&command), "m1");
    let ack = encode(&ServerFrame::Pong); // any frame: the hub wrote it
    let answered = Outbound::SendAnswered {
        client_msg_id: msg_id("m1"),
        frame: ack,
    };
    h.hub.send(answered).await.unwrap();
    assert_eq!(h.next_frame().await["type"], "pong");
    h.writes_nothing_for(SEND_TIMEOUT * 2).await;
}

#[tokio::test(start_paused = true)]
async fn each_unanswered_send_times_out_on_its_own_deadline_and_a_late_refusal_writes_nothing() {
    let mut h = start(8, 3600);
    h.next_frame().await;
    let t0 = tokio::time::Instant::now();
    h.send("m1");
    h.command().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.send("m2");
    h.command().await;
    let first = h.next_frame().await;
    assert_eq!(
        (first["code"].as_str(), first["client_msg_id"].as_str()),
        (Some("unavailable"), Some("m1"))
    );
    assert_eq!(t0.elapsed().as_secs(), 10);
    let second = h.next_frame().await;
    assert_eq!(second["client_msg_id"], "m2");
    assert_eq!(t0.elapsed().as_secs(), 13);
    // The broker's refusal of an answered send comes too late: nothing.
    h.hub
        .send(Outbound::SendRefused(msg_id("m1")))
        .await
        .unwrap();
    h.writes_nothing_for(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_send_the_broker_refused_is_answered_unavailable_once() {
    let mut h = start(8, 3600);
    h.next_frame().await;
    h.send("m1");
    h.command().await;
    h.hub
        .send(Outbound::SendRefused(msg_id("m1")))
        .await
        .unwrap();
    let answer = h.next_frame().await;
    assert_eq!(
        (answer["code"].as_str(), answer["client_msg_id"].as_str()),
        (Some("unavailable"), Some("m1"))
    );
    h.writes_nothing_for(SEND_TIMEOUT * 2).await;
}

#[tokio::test(start_paused = true)]
async fn with_the_publisher_full_the_session_holds_its_send_reads_nothing_and_keeps_writing() {
    let mut h = start(1, 3600);
    h.next_frame().await;
    h.send("m1"); // fills the publisher's queue
    h.send("m2"); // held: no room
    h.send_text(json!({"type": "ping"})); // not read while m2 is held
    h.writes_nothing_for(Duration::from_secs(1)).await;
    // Frames from the hub are still written.
    let frame = encode(&ServerFrame::Pong);
    h.hub.send(Outbound::Frame(frame)).await.unwrap();
    assert_eq!(h.next_frame().await["type"], "pong");
    // And the session's timer still answers m1, which the broker never took.
    let timed_out = h.next_frame().await;
    assert_eq!(timed_out["client_msg_id"], "m1");
    // Held past the heartbeat timeout (90 s): the silence is the
    // session's own, so it is not closed.
    h.writes_nothing_for(Duration::from_secs(100)).await;
    // Room: m2 goes out after m1, then the ping is read and answered.
    assert_eq!(sent_id(&h.command().await), "m1");
    assert_eq!(sent_id(&h.command().await), "m2");
    assert_eq!(h.next_frame().await["type"], "pong");
}

#[tokio::test(start_paused = true)]
async fn typing_and_reads_pass_the_membership_gate_or_are_forbidden() {
    let mut h = start(8, 3600);
    h.next_frame().await;
    h.send_text(json!({"type": "typing", "conversation_id": 5, "state": "start"}));
    let (event, _) = h.presence.recv().await.unwrap();
    assert!(
        matches!(event, PresenceEvent::Typing { conversation_id, .. } if conversation_id == ConversationId::new(5).unwrap())
    );
    h.send_text(json!({"type": "typing", "conversation_id": 6, "state": "start"}));
    assert_eq!(h.next_frame().await["code"], "forbidden");
    h.send_text(json!({"type": "read", "conversation_id": 6, "seq": 3}));
    assert_eq!(h.next_frame().await["code"], "forbidden");
    h.send_text(json!({"type": "read", "conversation_id": 5, "seq": 3}));
    assert!(matches!(h.command().await, PersistCommand::Read(r) if r.seq == 3));
    assert!(
        h.presence.try_recv().is_err(),
        "nothing from a non-member reached presence"
    );
    assert!(
        h.commands.try_recv().is_err(),
        "nothing from a non-member was queued"
    );
}

#[tokio::test(start_paused = true)]
async fn a_send_across_a_block_is_refused_blocked_and_never_queued() {
    let mut h = start(8, 3600);
    h.next_frame().await;
    h.send_text(json!({"type": "send", "conversation_id": 9, "client_msg_id": "m1", "body": "hi"}));
    let refused = h.next_frame().await;
    assert_eq!(
        (refused["code"].as_str(), refused["client_msg_id"].as_str()),
        (Some("blocked"), Some("m1"))
    );
    assert!(h.commands.try_recv().is_err(), "nothing was queued");
    // The block is between 7 and 8 only: a group send goes on.
    h.send("m2");
    assert_eq!(sent_id(&h.command().await), "m2");
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_answers_the_sends_in_flight_then_closes_with_1012() {
    let mut h = start(8, 3600);
    h.next_frame().await;
    h.send("m1");
    h.command().await;
    h.shutdown.send(true).unwrap();
    // The session sees the shutdown first (the clock moves only once it
    // waits): the answer comes while it drains.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let answered = Outbound::SendAnswered {
        client_msg_id: msg_id("m1"),
        frame: encode(&ServerFrame::Pong),
    };
    h.hub.send(answered).await.unwrap();
    assert_eq!(h.next_frame().await["type"], "pong");
    assert_eq!(h.close_code().await, close::SERVICE_RESTART);
    assert_eq!(h.ended().await, Ended::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_waits_for_answers_only_within_its_grace() {
    let mut h = start(8, 3600);
    h.next_frame().await;
    h.send("m1");
    h.command().await;
    let t0 = tokio::time::Instant::now();
    h.shutdown.send(true).unwrap();
    assert_eq!(h.close_code().await, close::SERVICE_RESTART);
    assert_eq!(t0.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_lost_broker_sends_the_session_elsewhere_with_1011() {
    let mut h = start(8, 3600);
    h.next_frame().await;
    h.broker_lost.send(true).unwrap();
    assert_eq!(h.close_code().await, close::INTERNAL);
    assert_eq!(h.ended().await, Ended::BrokerLost);
}

#[tokio::test(start_paused = true)]
async fn a_session_that_fell_behind_is_closed_with_1013() {
    let mut h = start(8, 3600);
    h.next_frame().await;
    h.overflow.notify_one();
    assert_eq!(h.close_code().await, close::TOO_SLOW);
    assert_eq!(h.ended().await, Ended::TooSlow);
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_pinged_then_closed_after_the_heartbeat_timeout() {
    let mut h = start(8, 3600);
    h.next_frame().await;
    let t0 = tokio::time::Instant::now();
    let mut pings = 0;
    loop {
        match h.written.recv().await.unwrap() {
            WsMessage::Ping(_) => pings += 1,
            WsMessage::Close(Some(frame)) => {
                assert_eq!(frame.code, close::NORMAL);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pings, 3);
    assert_eq!(t0.elapsed(), Duration::from_secs(120));
    assert_eq!(h.ended().await, Ended::Unresponsive);
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_closes_the_session_with_4001() {
    let mut h = start(8, -1);
    h.next_frame().await;
    assert_eq!(h.close_code().await, close::UNAUTHORIZED);
    assert_eq!(h.ended().await, Ended::TokenExpired);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    let mut h = start(8, 3600);
    h.next_frame().await;
    h.stalled.store(true, Ordering::Relaxed);
    let t0 = tokio::time::Instant::now();
    let frame: Utf8Bytes = encode(&ServerFrame::Pong);
    h.hub.send(Outbound::Frame(frame)).await.unwrap();
    assert_eq!(h.ended().await, Ended::WriteStalled);
    assert_eq!(t0.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_stopped_publisher_answers_a_send_unavailable() {
    let mut h = start(8, 3600);
    h.next_frame().await;
    h.commands.close();
    h.send("m1");
    let answer = h.next_frame().await;
    assert_eq!(
        (answer["code"].as_str(), answer["client_msg_id"].as_str()),
        (Some("unavailable"), Some("m1"))
    );
}
