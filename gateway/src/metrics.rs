//! The gateway's Prometheus metrics (`GET /metrics`).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Why a WebSocket was refused before its session began.
pub const CONNECTION_REFUSALS: [&str; 6] = [
    "origin",
    "broker_lost",
    "at_capacity",
    "shutting_down",
    "unauthorized",
    "auth_frame",
];

/// Why the gateway drops a bus event (`gateway_events_dropped_total`).
pub const EVENT_DROPS: [&str; 3] = ["queue_full", "undecodable_event", "undecodable_message"];

pub struct Metrics {
    registry: Registry,
    pub connections_opened: Counter,
    pub connections_active: Gauge,
    /// Upgrades refused, by reason (`connections_refused`).
    connections_refused: Family<[(&'static str, &'static str); 1], Counter>,
    pub sends_received: Counter,
    /// Sends answered with an error, by its code (`send_refused`).
    sends_refused: Family<[(&'static str, &'static str); 1], Counter>,
    pub acks_sent: Counter,
    pub messages_delivered: Counter,
    pub session_overflows: Counter,
    pub bus_events_received: Counter,
    pub persist_publishes: Counter,
    pub persist_commands: Counter,
    /// Persist publishes the channel did not take within the confirm
    /// timeout (a stuck broker connection).
    pub persist_publish_stalls: Counter,
    pub persist_confirm_seconds: Histogram,
    pub session_queued_frames: Gauge,
    /// From a `send` frame read to its answer (ack or error) written back.
    pub send_ack_seconds: Histogram,
    /// From a message's `created_at` (stored) to its frame handed to the
    /// recipients' sessions on this gateway.
    pub delivery_seconds: Histogram,
    /// 1 while the broker connection is up.
    pub broker_connected: Gauge,
    /// `gateway.max_connections`, for saturation.
    pub connections_max: Gauge,
    /// Refusals by limit (`gateway_limit_refusals_total{limit="..."}`).
    limit_refusals: Family<[(&'static str, &'static str); 1], Counter>,
    /// Sessions closed by the gateway, by reason.
    sessions_closed: Family<[(&'static str, &'static str); 1], Counter>,
    /// Bus events dropped, by reason.
    events_dropped: Family<[(&'static str, &'static str); 1], Counter>,
    /// Server API requests, by key id, route and status.
    server_api_requests: Family<Vec<(&'static str, String)>, Counter>,
}

impl Metrics {
    /// Every metric, registered under its name and help. A list, one entry
    /// a metric: the one function allowed past 80 lines (issue 19).
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            connections_opened: Counter::default(),
            connections_active: Gauge::default(),
            connections_refused: Family::default(),
            sends_received: Counter::default(),
            sends_refused: Family::default(),
            acks_sent: Counter::default(),
            messages_delivered: Counter::default(),
            session_overflows: Counter::default(),
            bus_events_received: Counter::default(),
            persist_publishes: Counter::default(),
            persist_commands: Counter::default(),
            persist_publish_stalls: Counter::default(),
            persist_confirm_seconds: Histogram::new(chat_shared::metrics::seconds_buckets()),
            session_queued_frames: Gauge::default(),
            send_ack_seconds: Histogram::new(chat_shared::metrics::seconds_buckets()),
            delivery_seconds: Histogram::new(chat_shared::metrics::seconds_buckets()),
            broker_connected: Gauge::default(),
            connections_max: Gauge::default(),
            limit_refusals: Family::default(),
            sessions_closed: Family::default(),
            events_dropped: Family::default(),
            server_api_requests: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "gateway_connections_opened",
            "WebSocket sessions authenticated",
            m.connections_opened.clone(),
        );
        r.register(
            "gateway_connections_active",
            "WebSocket sessions open now",
            m.connections_active.clone(),
        );
        r.register(
            "gateway_connections_refused",
            "WebSocket upgrades refused, by reason",
            m.connections_refused.clone(),
        );
        r.register(
            "gateway_sends_received",
            "send frames accepted for storing",
            m.sends_received.clone(),
        );
        r.register(
            "gateway_sends_refused",
            "send frames answered with an error, by its code",
            m.sends_refused.clone(),
        );
        r.register(
            "gateway_acks_sent",
            "ack frames sent to senders",
            m.acks_sent.clone(),
        );
        r.register(
            "gateway_messages_delivered",
            "message frames queued to recipients' sessions",
            m.messages_delivered.clone(),
        );
        r.register(
            "gateway_session_overflows",
            "sessions closed because their outbound queue was full",
            m.session_overflows.clone(),
        );
        r.register(
            "gateway_bus_events_received",
            "events consumed from the gateway queue",
            m.bus_events_received.clone(),
        );
        r.register(
            "gateway_persist_publishes",
            "AMQP messages published on the persist path (each carries one or more commands)",
            m.persist_publishes.clone(),
        );
        r.register(
            "gateway_persist_commands",
            "commands (sends, read markers) published on the persist path",
            m.persist_commands.clone(),
        );
        r.register(
            "gateway_persist_publish_stalls",
            "persist publishes the broker connection did not take within amqp.confirm_timeout_ms (a stuck connection); their sends are answered unavailable",
            m.persist_publish_stalls.clone(),
        );
        r.register(
            "gateway_persist_confirm_seconds",
            "from publishing a persist-path message to the broker's confirm",
            m.persist_confirm_seconds.clone(),
        );
        r.register(
            "gateway_session_queued_frames",
            "frames waiting in all sessions' outbound queues (delivery queue depth)",
            m.session_queued_frames.clone(),
        );
        r.register(
            "gateway_send_ack_seconds",
            "from a send frame read to its answer (ack or error) written",
            m.send_ack_seconds.clone(),
        );
        r.register(
            "gateway_delivery_seconds",
            "from a message stored to its frame handed to recipients' sessions here",
            m.delivery_seconds.clone(),
        );
        r.register(
            "gateway_broker_connected",
            "1 while the RabbitMQ connection is up",
            m.broker_connected.clone(),
        );
        r.register(
            "gateway_connections_max",
            "the most sessions this gateway accepts (gateway.max_connections)",
            m.connections_max.clone(),
        );
        r.register(
            "gateway_limit_refusals",
            "requests, frames and connections refused by a limit, by limit",
            m.limit_refusals.clone(),
        );
        r.register(
            "gateway_sessions_closed",
            "sessions closed by the gateway, by reason",
            m.sessions_closed.clone(),
        );
        r.register(
            "gateway_events_dropped",
            "bus events dropped, by reason",
            m.events_dropped.clone(),
        );
        r.register(
            "gateway_server_api_requests",
            "server API requests, by key id (never the key), route and status",
            m.server_api_requests.clone(),
        );
        // Every series exists from the start, at 0, so that rates and
        // alerts see a refusal's first occurrence.
        for code in chat_shared::protocol::ErrorCode::ALL {
            let _ = m.sends_refused.get_or_create(&[("reason", code.as_str())]);
        }
        // Every reason at 0 from the start, so that rates and dashboards
        // see a series before the first one.
        for reason in CONNECTION_REFUSALS {
            let _ = m.connections_refused.get_or_create(&[("reason", reason)]);
        }
        for reason in EVENT_DROPS {
            let _ = m.events_dropped.get_or_create(&[("reason", reason)]);
        }
        m
    }

    /// Counts a send answered with the error `code`.
    pub fn send_refused(&self, code: chat_shared::protocol::ErrorCode) {
        self.sends_refused
            .get_or_create(&[("reason", code.as_str())])
            .inc();
    }

    /// Counts a refused WebSocket upgrade or authentication, by `reason`
    /// (one of [`CONNECTION_REFUSALS`]).
    pub fn connection_refused(&self, reason: &'static str) {
        debug_assert!(CONNECTION_REFUSALS.contains(&reason));
        self.connections_refused
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Counts a bus event the gateway dropped, by `reason` (one of
    /// [`EVENT_DROPS`]).
    pub fn dropped(&self, reason: &'static str) {
        debug_assert!(EVENT_DROPS.contains(&reason));
        self.events_dropped
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Counts `n` bus events the gateway dropped, by `reason`.
    pub fn dropped_many(&self, reason: &'static str, n: u64) {
        debug_assert!(EVENT_DROPS.contains(&reason));
        self.events_dropped
            .get_or_create(&[("reason", reason)])
            .inc_by(n);
    }

    /// How many bus events were dropped for `reason`.
    pub fn drops(&self, reason: &'static str) -> u64 {
        self.events_dropped
            .get_or_create(&[("reason", reason)])
            .get()
    }

    /// Counts one refusal by `limit` (a `gateway.limits` key or another rule).
    /// Counts one server API request (`key` is the key's id, or `none`).
    pub fn server_api_request(&self, key: &str, route: &str, status: u16) {
        let labels = vec![
            ("key", key.to_owned()),
            ("route", route.to_owned()),
            ("status", status.to_string()),
        ];
        self.server_api_requests.get_or_create(&labels).inc();
    }

    pub fn refused(&self, limit: &'static str) {
        self.limit_refusals.get_or_create(&[("limit", limit)]).inc();
    }

    pub fn refusals(&self, limit: &'static str) -> u64 {
        self.limit_refusals.get_or_create(&[("limit", limit)]).get()
    }

    /// Counts a session the gateway closed, by `reason`.
    pub fn closed(&self, reason: &'static str) {
        self.sessions_closed
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
