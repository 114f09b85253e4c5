//! The rules for each client frame, without I/O: a frame read from the
//! socket, the session's state and the time become one [`Action`] (an
//! answer to write, or a command or event to forward once the membership
//! gate lets it pass). The session loop ([`super::session`]) carries the
//! actions out; the ledger of unanswered sends is part of the state.

use super::ledger::PendingSends;
use crate::auth::AuthUser;
use crate::limits::{Limits, TokenBucket, retry_after_ms};
use crate::metrics::Metrics;
use crate::outbound::{Outbound, encode};
use axum::extract::ws::Utf8Bytes;
use chat_shared::bus::{PersistCommand, PresenceEvent, ReadCommand, SendCommand};
use chat_shared::ids::{ClientMsgId, ConversationId, UserId};
use chat_shared::protocol::{ClientFrame, ErrorCode, SendFrame, ServerFrame, TypingState};
use chat_shared::telemetry::spans;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Typing frames one session may send per second (and at once); more are
/// `rate_limited`. Every one becomes a presence event, and the presence
/// queue is shared.
const TYPING_PER_SECOND: u32 = 10;

/// What the session loop does with one client frame.
#[derive(Debug)]
pub enum Action {
    /// Write this answer to the client.
    Reply(Utf8Bytes),
    /// Queue `command` for the broker (in frame order), once the user is
    /// known to be a member of `member_of` (when it is set).
    Persist {
        command: PersistCommand,
        span: tracing::Span,
        member_of: Option<ConversationId>,
    },
    /// Tell the presence service, once the user is known to be a member
    /// of `member_of`.
    Typing {
        event: PresenceEvent,
        span: tracing::Span,
        member_of: ConversationId,
    },
}

/// The limits and settings the rules apply (`[gateway]`, `[gateway.limits]`).
#[derive(Debug, Clone)]
pub struct Rules {
    pub max_body_chars: usize,
    pub max_pending_sends: usize,
    pub send_timeout: Duration,
    pub sends_per_second: f64,
    pub sends_burst: u32,
    pub reads_per_second: f64,
    pub reads_burst: u32,
}

impl Rules {
    pub fn from_settings(gateway: &chat_shared::config::GatewaySettings) -> Self {
        Self {
            max_body_chars: gateway.max_body_chars,
            max_pending_sends: gateway.max_pending_sends.get(),
            send_timeout: gateway.send_timeout,
            sends_per_second: gateway.limits.sends_per_second,
            sends_burst: gateway.limits.sends_burst,
            reads_per_second: gateway.limits.reads_per_second,
            reads_burst: gateway.limits.reads_burst,
        }
    }
}

/// One session's state: who it is, its rate limits, its unanswered sends.
pub struct SessionState {
    pub user: AuthUser,
    pub session_id: Arc<str>,
    /// This gateway's queue: where the persister answers this session.
    reply_to: Arc<str>,
    max_body_chars: usize,
    sends: TokenBucket,
    reads: TokenBucket,
    typing: TokenBucket,
    /// The buckets every session of the gateway shares (sends per user).
    shared: Arc<Limits>,
    metrics: Arc<Metrics>,
    pub ledger: PendingSends,
}

impl SessionState {
    pub fn new(
        user: AuthUser,
        session_id: Arc<str>,
        reply_to: Arc<str>,
        rules: &Rules,
        shared: Arc<Limits>,
        metrics: Arc<Metrics>,
        now: Instant,
    ) -> Self {
        let typing = f64::from(TYPING_PER_SECOND);
        Self {
            user,
            session_id,
            reply_to,
            max_body_chars: rules.max_body_chars,
            sends: TokenBucket::new(rules.sends_per_second, rules.sends_burst, now),
            reads: TokenBucket::new(rules.reads_per_second, rules.reads_burst, now),
            typing: TokenBucket::new(typing, TYPING_PER_SECOND, now),
            shared,
            metrics,
            ledger: PendingSends::new(rules.send_timeout, rules.max_pending_sends),
        }
    }

    pub fn user_id(&self) -> UserId {
        self.user.user_id
    }

    /// The rules for one text frame.
    pub fn on_text(&mut self, text: &str, now: Instant) -> Action {
        match ClientFrame::parse(text) {
            Err(e) => Action::Reply(encode(&e.into_frame())),
            Ok(ClientFrame::Ping) => Action::Reply(encode(&ServerFrame::Pong)),
            Ok(ClientFrame::Send(send)) => self.on_send(send, now),
            Ok(ClientFrame::Auth { .. }) => {
                self.refuse(ErrorCode::BadRequest, "already authenticated")
            }
            Ok(ClientFrame::Typing {
                conversation_id,
                state,
            }) => self.on_typing(conversation_id, state, now),
            Ok(ClientFrame::Read {
                conversation_id,
                seq,
            }) => self.on_read(conversation_id, seq, now),
        }
    }

    /// Binary frames carry nothing of the protocol.
    pub fn on_binary(&mut self) -> Action {
        self.refuse(ErrorCode::BadRequest, "binary frames are not supported")
    }

    /// A frame about `conversation` from a user who is not in it.
    pub fn not_a_member(&self) -> Utf8Bytes {
        self.metrics.send_refused(ErrorCode::Forbidden);
        error(
            ErrorCode::Forbidden,
            "not a member of this conversation",
            None,
            None,
        )
    }

    /// A send refused by a block between its sender and the other member
    /// of the direct conversation.
    pub fn blocked(&self, client_msg_id: &ClientMsgId) -> Utf8Bytes {
        self.metrics.send_refused(ErrorCode::Blocked);
        error(
            ErrorCode::Blocked,
            "a block between you and this user refuses the message",
            Some(client_msg_id.as_str().to_owned()),
            None,
        )
    }

    /// Relayed (and throttled further) by the presence service.
    fn on_typing(
        &mut self,
        conversation_id: ConversationId,
        state: TypingState,
        now: Instant,
    ) -> Action {
        if let Err(wait) = self.typing.take(now) {
            return self.rate_limited("typing_per_second", "too many typing frames", None, wait);
        }
        // The producer span of this typing frame (only when traces are
        // exported): presence's relay and every delivery of it are its
        // children, and it is the publish's context in the AMQP headers.
        let (span, trace) = spans::create("presence", "typing", |span| {
            span.record("conversation.id", conversation_id.get());
        });
        let event = PresenceEvent::Typing {
            conversation_id,
            user_id: self.user.user_id,
            state,
            trace,
        };
        Action::Typing {
            event,
            span,
            member_of: conversation_id,
        }
    }

    /// A read marker goes down the persist path with the messages, so it is
    /// stored in the same group commits; the persister relays it if it moved.
    fn on_read(&mut self, conversation_id: ConversationId, seq: i64, now: Instant) -> Action {
        if seq < 0 {
            return self.refuse(ErrorCode::BadRequest, "seq must not be negative");
        }
        if let Err(wait) = self.reads.take(now) {
            return self.rate_limited("reads_per_second", "too many read frames", None, wait);
        }
        let command = PersistCommand::Read(ReadCommand {
            conversation_id,
            user_id: self.user.user_id,
            seq,
        });
        // The producer span of this read frame (only when traces are
        // exported), like a send's.
        let (span, _) = spans::create("persist", "read", |span| {
            span.record("conversation.id", conversation_id.get());
        });
        Action::Persist {
            command,
            span,
            member_of: Some(conversation_id),
        }
    }

    /// A send is checked here (body, pending sends, rates); whether the
    /// sender may write to the conversation, the persister decides.
    fn on_send(&mut self, send: SendFrame, now: Instant) -> Action {
        let body = match send.body(self.max_body_chars) {
            Ok(body) => body,
            Err(e) => {
                self.metrics.send_refused(e.code);
                return Action::Reply(encode(&e.into_frame()));
            }
        };
        let client_msg_id = send.client_msg_id;
        let id = Some(client_msg_id.as_str().to_owned());
        if self.ledger.is_full_for(&client_msg_id) {
            self.metrics.send_refused(ErrorCode::RateLimited);
            let message = "too many sends waiting for their ack";
            return self.rate_limited("max_pending_sends", message, id, Duration::from_secs(1));
        }
        let limited = match self.sends.take(now) {
            Err(wait) => Some(("sends_per_second", wait)),
            Ok(()) => match self.shared.user_sends.take(self.user.user_id, now) {
                Err(wait) => Some(("user_sends_per_second", wait)),
                Ok(()) => None,
            },
        };
        if let Some((limit, wait)) = limited {
            self.metrics.send_refused(ErrorCode::RateLimited);
            let message = "too many sends; wait and send it again";
            return self.rate_limited(limit, message, id, wait);
        }
        // The producer span of this send (only when traces are exported):
        // the persister's batch links to it, and every gateway's delivery
        // of the message is its child.
        let (span, trace) = spans::create("persist", "send", |span| {
            span.record("chat.client_msg_id", client_msg_id.as_str());
            span.record("conversation.id", send.conversation_id.get());
        });
        let received_at_us = trace
            .as_ref()
            .map(|_| chrono::Utc::now().timestamp_micros());
        let command = SendCommand {
            trace,
            received_at_us,
            session_id: self.session_id.to_string(),
            reply_to: self.reply_to.to_string(),
            conversation_id: send.conversation_id,
            sender_id: self.user.user_id.into(),
            client_msg_id,
            body: body.into_inner(),
            card: send.card.map(Box::new),
            reply_when_stored: false,
        };
        Action::Persist {
            command: PersistCommand::Send(command),
            span,
            member_of: None,
        }
    }

    /// `command` is queued for the broker: a send now waits for its answer.
    /// Returns when it times out (a read marker waits for nothing).
    pub fn queued(&mut self, command: &PersistCommand, now: Instant) -> Option<Instant> {
        let PersistCommand::Send(send) = command else {
            return None;
        };
        self.metrics.sends_received.inc();
        tracing::debug!(
            user.id = %self.user.user_id,
            session.id = %self.session_id,
            conversation.id = %send.conversation_id,
            client_msg_id = send.client_msg_id.as_str(),
            "send queued"
        );
        Some(self.ledger.insert(send.client_msg_id.clone(), now))
    }

    /// The publisher has stopped (the gateway is shutting down): a send is
    /// answered `unavailable` (send it again, elsewhere); a read marker is
    /// dropped (the client's next `read` moves it).
    pub fn not_queued(&mut self, command: &PersistCommand) -> Option<Utf8Bytes> {
        match command {
            PersistCommand::Send(send) => {
                self.metrics.send_refused(ErrorCode::Unavailable);
                Some(PendingSends::not_taken(&send.client_msg_id))
            }
            PersistCommand::Read(read) => {
                tracing::debug!(user.id = %self.user.user_id, conversation.id = %read.conversation_id, "read marker not queued: the publisher stopped");
                None
            }
        }
    }

    /// What to write for something the hub handed this session.
    pub fn on_outbound(&mut self, out: Outbound) -> Option<Utf8Bytes> {
        match out {
            Outbound::Frame(frame) => Some(frame),
            Outbound::SendAnswered {
                client_msg_id,
                frame,
            } => {
                if let Some(waited) = self.ledger.settle(&client_msg_id, Instant::now()) {
                    self.metrics.send_ack_seconds.observe(waited.as_secs_f64());
                }
                Some(frame)
            }
            Outbound::SendRefused(client_msg_id) => {
                let answer = self.ledger.refuse(&client_msg_id)?;
                self.metrics.send_refused(ErrorCode::Unavailable);
                Some(answer)
            }
            // The session loop acts on it (it ends the session).
            Outbound::Restart => None,
        }
    }

    /// The `unavailable` answers of the sends that timed out by `now`.
    pub fn expired(&mut self, now: Instant) -> Vec<Utf8Bytes> {
        let answers = self.ledger.expired(now);
        for _ in &answers {
            self.metrics.send_refused(ErrorCode::Unavailable);
        }
        answers
    }

    /// When the session must next look at its clock: its token's expiry,
    /// or the timeout of its oldest unanswered send, never now or earlier.
    pub fn deadline(&self, now: Instant) -> Instant {
        let expiry = instant_of_unix(now, self.user.expires_at);
        self.ledger
            .next_deadline()
            .map_or(expiry, |due| due.min(expiry))
            .max(now + Duration::from_millis(1))
    }

    pub fn token_expired(&self) -> bool {
        crate::auth::unix_now() >= self.user.expires_at
    }

    fn refuse(&mut self, code: ErrorCode, message: &str) -> Action {
        self.metrics.send_refused(code);
        Action::Reply(error(code, message, None, None))
    }

    /// `rate_limited`, counted under `limit`.
    fn rate_limited(
        &mut self,
        limit: &'static str,
        message: &str,
        id: Option<String>,
        wait: Duration,
    ) -> Action {
        self.metrics.refused(limit);
        let wait = Some(retry_after_ms(wait));
        Action::Reply(error(ErrorCode::RateLimited, message, id, wait))
    }
}

fn error(
    code: ErrorCode,
    message: &str,
    client_msg_id: Option<String>,
    retry_after_ms: Option<u64>,
) -> Utf8Bytes {
    encode(&ServerFrame::Error {
        code,
        message: message.to_owned(),
        client_msg_id,
        retry_after_ms,
    })
}

/// The instant of a Unix time in seconds, at most a day ahead (a timer set
/// that far is set again when it fires; `Instant` cannot hold any time).
fn instant_of_unix(now: Instant, unix_secs: i64) -> Instant {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let at = Duration::from_secs(u64::try_from(unix_secs).unwrap_or(0));
    now + at
        .saturating_sub(since_epoch)
        .min(Duration::from_secs(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_shared::config::LimitSettings;
    use chat_shared::ids::ClientMsgId;
    use serde_json::{Value, json};

    fn rules() -> Rules {
        Rules {
            max_body_chars: 10,
            max_pending_sends: 3,
            send_timeout: Duration::from_secs(10),
            sends_per_second: 10.0,
            sends_burst: 5,
            reads_per_second: 2.0,
            reads_burst: 2,
        }
    }

    fn shared_limits(user_sends_burst: u32) -> Arc<Limits> {
        Arc::new(Limits::new(&LimitSettings {
            connections_per_ip: std::num::NonZeroUsize::new(10).unwrap(),
            connections_per_user: std::num::NonZeroUsize::new(10).unwrap(),
            sends_per_second: 10.0,
            sends_burst: 5,
            user_sends_per_second: 10.0,
            user_sends_burst,
            reads_per_second: 2.0,
            reads_burst: 2,
            http_per_second: 1.0,
            http_burst: 1,
            server_api_per_second: 1.0,
            server_api_burst: 1,
            groups_per_hour: 1,
        }))
    }

    fn session(shared: Arc<Limits>, now: Instant) -> SessionState {
        let user = AuthUser {
            user_id: UserId::new(7).unwrap(),
            name: None,
            expires_at: crate::auth::unix_now() + 3600,
        };
        let metrics = Arc::new(Metrics::new());
        SessionState::new(
            user,
            "s1".into(),
            "gw.q".into(),
            &rules(),
            shared,
            metrics,
            now,
        )
    }

    fn reply(action: Action) -> Value {
        match action {
            Action::Reply(frame) => serde_json::from_str(frame.as_str()).unwrap(),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn send(id: &str, body: &str) -> String {
        json!({"type": "send", "conversation_id": 5, "client_msg_id": id, "body": body}).to_string()
    }

    fn read(seq: i64) -> String {
        json!({"type": "read", "conversation_id": 5, "seq": seq}).to_string()
    }

    fn typing() -> String {
        json!({"type": "typing", "conversation_id": 5, "state": "start"}).to_string()
    }

    fn persisted(action: Action) -> (PersistCommand, Option<ConversationId>) {
        match action {
            Action::Persist {
                command, member_of, ..
            } => (command, member_of),
            other => panic!("expected a command, got {other:?}"),
        }
    }

    #[test]
    fn malformed_frames_ping_auth_and_binary_get_their_answers() {
        let t0 = Instant::now();
        let mut s = session(shared_limits(100), t0);
        let bad = reply(s.on_text("{not json", t0));
        assert_eq!(
            (bad["type"].as_str(), bad["code"].as_str()),
            (Some("error"), Some("bad_request"))
        );
        let unknown = reply(s.on_text(r#"{"type":"dance","client_msg_id":"x"}"#, t0));
        assert_eq!(unknown["code"], "bad_request");
        assert_eq!(unknown["client_msg_id"], "x");
        assert_eq!(reply(s.on_text(r#"{"type":"ping"}"#, t0))["type"], "pong");
        let auth = reply(s.on_text(r#"{"type":"auth","token":"t"}"#, t0));
        assert_eq!(auth["message"], "already authenticated");
        assert_eq!(reply(s.on_binary())["code"], "bad_request");
    }

    #[test]
    fn an_invalid_frame_is_bad_request_naming_its_send_when_it_can() {
        let t0 = Instant::now();
        let mut s = session(shared_limits(100), t0);
        let cases = [
            ("not json", None),
            (r#"{"type":"dance"}"#, None),
            (r#"{"no_type":1}"#, None),
            (
                r#"{"type":"send","conversation_id":"twelve","client_msg_id":"k1","body":"x"}"#,
                Some("k1"),
            ),
            (
                r#"{"type":"send","conversation_id":1,"body":"missing id"}"#,
                None,
            ),
            (
                r#"{"type":"send","conversation_id":1,"client_msg_id":"k2","body":""}"#,
                Some("k2"),
            ),
            (
                r#"{"type":"send","conversation_id":1,"client_msg_id":"k3","body":"nul\u0000inside"}"#,
                Some("k3"),
            ),
        ];
        for (text, client_msg_id) in cases {
            let error = reply(s.on_text(text, t0));
            assert_eq!(error["code"], "bad_request", "{text}: {error}");
            assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert_eq!(error["client_msg_id"].as_str(), client_msg_id, "{text}");
        }
    }

    #[test]
    fn a_send_becomes_a_command_answered_through_this_gateway_queue() {
        let t0 = Instant::now();
        let mut s = session(shared_limits(100), t0);
        let (command, member_of) = persisted(s.on_text(&send("m1", "xin chào"), t0));
        // Membership of a send is the persister's to decide.
        assert_eq!(member_of, None);
        let PersistCommand::Send(command) = command else {
            panic!("not a send")
        };
        assert_eq!(command.sender_id.get(), 7);
        assert_eq!(command.session_id, "s1");
        assert_eq!(command.reply_to, "gw.q");
        assert_eq!(command.client_msg_id.as_str(), "m1");
        assert_eq!(command.body, "xin chào");
    }

    #[test]
    fn a_body_over_the_limit_is_too_large_and_names_the_send() {
        let t0 = Instant::now();
        let mut s = session(shared_limits(100), t0);
        let answer = reply(s.on_text(&send("m1", "0123456789a"), t0));
        assert_eq!(answer["code"], "too_large");
        assert_eq!(answer["client_msg_id"], "m1");
        // Counted in characters, not bytes: ten of "ư" (two bytes each) fit.
        persisted(s.on_text(&send("m3", &"ư".repeat(10)), t0));
        let answer = reply(s.on_text(&send("m4", &"ư".repeat(11)), t0));
        assert_eq!(answer["code"], "too_large");
        assert_eq!(reply(s.on_text(&send("m2", ""), t0))["code"], "bad_request");
    }

    #[test]
    fn sends_beyond_the_session_burst_are_rate_limited_until_the_bucket_refills() {
        let t0 = Instant::now();
        let mut s = session(shared_limits(100), t0);
        for i in 0..5 {
            persisted(s.on_text(&send(&format!("m{i}"), "hi"), t0));
        }
        let limited = reply(s.on_text(&send("m5", "hi"), t0));
        assert_eq!(limited["code"], "rate_limited");
        assert_eq!(limited["client_msg_id"], "m5");
        assert_eq!(limited["retry_after_ms"], 100);
        // 100 ms later one token is back.
        persisted(s.on_text(&send("m5", "hi"), t0 + Duration::from_millis(100)));
    }

    #[test]
    fn a_user_cannot_multiply_their_send_rate_with_more_sessions() {
        let t0 = Instant::now();
        let shared = shared_limits(3);
        let mut first = session(shared.clone(), t0);
        let mut second = session(shared, t0);
        persisted(first.on_text(&send("a", "hi"), t0));
        persisted(first.on_text(&send("b", "hi"), t0));
        persisted(second.on_text(&send("c", "hi"), t0));
        let limited = reply(second.on_text(&send("d", "hi"), t0));
        assert_eq!(limited["code"], "rate_limited");
        // Another user is not affected.
        let mut other = session(Arc::clone(&first.shared), t0);
        other.user.user_id = UserId::new(8).unwrap();
        persisted(other.on_text(&send("e", "hi"), t0));
    }

    #[test]
    fn sends_beyond_the_pending_limit_wait_but_a_resend_of_a_pending_one_goes() {
        let t0 = Instant::now();
        let mut s = session(shared_limits(100), t0);
        for id in ["a", "b", "c"] {
            let (command, _) = persisted(s.on_text(&send(id, "hi"), t0));
            assert!(s.queued(&command, t0).is_some());
        }
        let limited = reply(s.on_text(&send("d", "hi"), t0));
        assert_eq!(limited["code"], "rate_limited");
        assert_eq!(limited["message"], "too many sends waiting for their ack");
        assert_eq!(limited["retry_after_ms"], 1000);
        persisted(s.on_text(&send("b", "hi"), t0));
    }

    #[test]
    fn read_markers_are_checked_limited_and_gated_on_membership() {
        let t0 = Instant::now();
        let mut s = session(shared_limits(100), t0);
        assert_eq!(reply(s.on_text(&read(-1), t0))["code"], "bad_request");
        let (command, member_of) = persisted(s.on_text(&read(3), t0));
        assert!(matches!(
            command,
            PersistCommand::Read(ReadCommand { seq: 3, .. })
        ));
        assert_eq!(member_of, Some(ConversationId::new(5).unwrap()));
        // A read marker waits for no answer.
        assert_eq!(s.queued(&command, t0), None);
        persisted(s.on_text(&read(4), t0));
        let limited = reply(s.on_text(&read(5), t0));
        assert_eq!(limited["code"], "rate_limited");
        assert_eq!(limited["retry_after_ms"], 500);
    }

    #[test]
    fn more_than_ten_typing_frames_a_second_are_rate_limited() {
        let t0 = Instant::now();
        let mut s = session(shared_limits(100), t0);
        for _ in 0..10 {
            let action = s.on_text(&typing(), t0);
            assert!(matches!(action, Action::Typing { .. }), "{action:?}");
        }
        let limited = reply(s.on_text(&typing(), t0));
        assert_eq!(limited["code"], "rate_limited");
        assert_eq!(limited["retry_after_ms"], 100);
        let later = s.on_text(&typing(), t0 + Duration::from_millis(100));
        let Action::Typing {
            event, member_of, ..
        } = later
        else {
            panic!("expected typing, got {later:?}")
        };
        assert_eq!(member_of, ConversationId::new(5).unwrap());
        assert!(matches!(event, PresenceEvent::Typing { user_id, .. } if user_id.get() == 7));
    }

    #[test]
    fn answers_settle_the_ledger_and_a_refusal_after_an_answer_writes_nothing() {
        let t0 = Instant::now();
        let mut s = session(shared_limits(100), t0);
        let (command, _) = persisted(s.on_text(&send("m1", "hi"), t0));
        let due = s.queued(&command, t0).unwrap();
        assert_eq!(due, t0 + Duration::from_secs(10));
        assert_eq!(s.deadline(t0), due);
        let id = || Box::new(ClientMsgId::try_from("m1".to_owned()).unwrap());
        let ack = crate::outbound::encode(&ServerFrame::Pong);
        let answered = Outbound::SendAnswered {
            client_msg_id: id(),
            frame: ack.clone(),
        };
        assert_eq!(s.on_outbound(answered), Some(ack));
        assert!(s.ledger.is_empty());
        assert_eq!(s.on_outbound(Outbound::SendRefused(id())), None);
        assert!(s.expired(due).is_empty());
        // With nothing pending the next look is at the token's expiry.
        assert!(s.deadline(t0) > t0 + Duration::from_secs(3000));
    }

    #[test]
    fn a_send_the_publisher_could_not_take_is_answered_unavailable() {
        let t0 = Instant::now();
        let mut s = session(shared_limits(100), t0);
        let (command, _) = persisted(s.on_text(&send("m1", "hi"), t0));
        let answer = s.not_queued(&command).unwrap();
        let answer: Value = serde_json::from_str(answer.as_str()).unwrap();
        assert_eq!(
            (answer["code"].as_str(), answer["client_msg_id"].as_str()),
            (Some("unavailable"), Some("m1"))
        );
        let (read, _) = persisted(s.on_text(&read(1), t0));
        assert_eq!(s.not_queued(&read), None);
    }
}
