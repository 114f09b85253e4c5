//! Typed, layered configuration: `config/default.toml` -> `config/<profile>.toml`
//! -> the file in `CHAT_CONFIG_FILE` -> `CHAT_<SECTION>__<KEY>` variables.
//! Every key is documented once, in `config/default.toml`. Settings are
//! validated before any port opens.

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

// Counts that must be at least 1 are `NonZero*`: a 0 in a file or variable
// is refused when the settings are read, naming the key.

/// A `*_ms` key: whole milliseconds in the files and variables, a
/// `Duration` in the code.
fn millis<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}

/// An address that may be left empty (`""`: not set).
fn optional_addr<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let raw = String::deserialize(deserializer)?;
    if raw.trim().is_empty() {
        return Ok(None);
    }
    raw.trim()
        .parse()
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A file that may be left empty (`""`: not set).
fn optional_path<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<PathBuf>, D::Error> {
    let raw = String::deserialize(deserializer)?;
    Ok((!raw.trim().is_empty()).then(|| PathBuf::from(raw.trim())))
}

const DEFAULTS: &str = include_str!("../../config/default.toml");
const PROFILES: &[(&str, &str)] = &[
    ("local", include_str!("../../config/local.toml")),
    ("test", include_str!("../../config/test.toml")),
    ("production", include_str!("../../config/production.toml")),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown profile {0:?} (expected local, test or production)")]
    UnknownProfile(String),
    #[error(transparent)]
    Load(#[from] config::ConfigError),
    #[error("invalid setting {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub runtime: RuntimeSettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub redis: RedisSettings,
    pub auth: AuthSettings,
    pub gateway: GatewaySettings,
    pub persister: PersisterSettings,
    pub presence: PresenceSettings,
    pub notify: NotifySettings,
}

/// The unread webhook (version 2, `[notify]`): off while `webhook_url` is
/// empty.
#[derive(Debug, Clone, Deserialize)]
pub struct NotifySettings {
    pub webhook_url: String,
    pub webhook_secret: Secret,
    #[serde(rename = "delay_ms", deserialize_with = "millis")]
    pub delay: Duration,
    #[serde(rename = "timeout_ms", deserialize_with = "millis")]
    pub timeout: Duration,
    #[serde(rename = "retry_initial_ms", deserialize_with = "millis")]
    pub retry_initial: Duration,
    #[serde(rename = "retry_max_ms", deserialize_with = "millis")]
    pub retry_max: Duration,
    #[serde(rename = "retry_for_ms", deserialize_with = "millis")]
    pub retry_for: Duration,
    #[serde(rename = "sweep_ms", deserialize_with = "millis")]
    pub sweep: Duration,
    /// Webhook requests in flight at once, per presence service.
    pub concurrency: NonZeroUsize,
}

impl NotifySettings {
    pub fn enabled(&self) -> bool {
        !self.webhook_url.is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        if !(self.webhook_url.starts_with("https://") || self.webhook_url.starts_with("http://")) {
            return invalid("notify.webhook_url", "an http:// or https:// URL, or empty");
        }
        if self.webhook_secret.expose().len() < 32 {
            return invalid(
                "notify.webhook_secret",
                "must be set, at least 32 bytes, when notify.webhook_url is",
            );
        }
        positive(&[
            ("notify.delay_ms", self.delay),
            ("notify.timeout_ms", self.timeout),
            ("notify.retry_initial_ms", self.retry_initial),
            ("notify.retry_max_ms", self.retry_max),
            ("notify.sweep_ms", self.sweep),
        ])
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RuntimeSettings {
    /// Tokio worker threads; 0 means one per core (or TOKIO_WORKER_THREADS).
    pub worker_threads: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    /// OTLP collector base URL; empty (and no OTEL_EXPORTER_OTLP_*
    /// endpoint variable) means no tracing.
    pub otlp_endpoint: String,
    /// `http/protobuf` or `grpc`, unless OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL
    /// says.
    pub otlp_protocol: String,
    /// Share of traces kept (parent-based), unless OTEL_TRACES_SAMPLER says.
    pub sample_ratio: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    #[serde(rename = "connect_timeout_ms", deserialize_with = "millis")]
    pub connect_timeout: Duration,
    /// The CA (PEM) that signed the server's certificate, for a URL with
    /// `sslmode=verify-ca` or `verify-full` (shared/src/tls.rs).
    #[serde(default, deserialize_with = "optional_path")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Deserialize)]
pub struct AmqpSettings {
    pub url: String,
    pub prefix: String,
    pub partitions: NonZeroU16,
    pub route_shards: NonZeroU16,
    pub persistent_sends: bool,
    #[serde(rename = "confirm_timeout_ms", deserialize_with = "millis")]
    pub confirm_timeout: Duration,
    /// The type of the shared durable queues (persist partitions, dead
    /// letters, presence).
    pub queue_type: QueueType,
    /// For `amqps://`: the CA (PEM) that signed the broker's certificate, and
    /// a client certificate and its key (PEM, PKCS#8) when the broker asks.
    #[serde(default, deserialize_with = "optional_path")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "optional_path")]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "optional_path")]
    pub client_key_file: Option<PathBuf>,
}

/// RabbitMQ queue types the services can declare their shared queues as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// One node holds each queue (a node that stops takes its queues with it).
    Classic,
    /// Replicated over the cluster's nodes (Raft): a queue survives a node
    /// while a majority of its replicas run.
    Quorum,
}

#[derive(Clone, Deserialize)]
pub struct RedisSettings {
    pub url: String,
    pub prefix: String,
    /// For `rediss://`: the CA (PEM) that signed the server's certificate.
    #[serde(default, deserialize_with = "optional_path")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PresenceSettings {
    pub metrics_listen: SocketAddr,
    /// A broker connection down this long makes `/health` answer 503.
    #[serde(rename = "broker_dead_ms", deserialize_with = "millis")]
    pub broker_dead: Duration,
    #[serde(rename = "heartbeat_ms", deserialize_with = "millis")]
    pub heartbeat: Duration,
    #[serde(rename = "gateway_ttl_ms", deserialize_with = "millis")]
    pub gateway_ttl: Duration,
    #[serde(rename = "offline_grace_ms", deserialize_with = "millis")]
    pub offline_grace: Duration,
    #[serde(rename = "sweep_ms", deserialize_with = "millis")]
    pub sweep: Duration,
    #[serde(rename = "typing_lapse_ms", deserialize_with = "millis")]
    pub typing_lapse: Duration,
    #[serde(rename = "typing_throttle_ms", deserialize_with = "millis")]
    pub typing_throttle: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub jwt_secret: Secret,
    /// Required `iss` of every token; empty: not checked.
    pub issuer: String,
    /// Required `aud` of every token; empty: not checked.
    pub audience: String,
    pub dev_login: bool,
    pub dev_token_ttl_secs: u64,
    pub allowed_origins: Vec<String>,
    #[serde(rename = "auth_timeout_ms", deserialize_with = "millis")]
    pub auth_timeout: Duration,
    /// The host site's server API keys, each `<id>:<secret>` (version 2).
    #[serde(default)]
    pub server_api_keys: Vec<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GatewaySettings {
    pub listen: SocketAddr,
    /// Connections the kernel queues on `listen` before the gateway accepts
    /// them (capped by the host's `net.core.somaxconn`): when a gateway
    /// goes, its sessions all reconnect within a fraction of a second, and
    /// each connection over this queue loses its SYN and retries 1, 3, 7 s
    /// later.
    pub listen_backlog: NonZeroU32,
    /// Postgres connections of the sessions' own (membership and block
    /// checks of sends), apart from `database.max_connections`: thousands
    /// of history reads after a reconnect storm never make a send wait for
    /// a connection.
    pub gate_connections: NonZeroU32,
    #[serde(rename = "heartbeat_ms", deserialize_with = "millis")]
    pub heartbeat: Duration,
    #[serde(rename = "heartbeat_timeout_ms", deserialize_with = "millis")]
    pub heartbeat_timeout: Duration,
    pub max_frame_bytes: usize,
    pub max_body_chars: usize,
    pub session_queue: NonZeroUsize,
    pub max_pending_sends: NonZeroUsize,
    #[serde(rename = "send_timeout_ms", deserialize_with = "millis")]
    pub send_timeout: Duration,
    pub max_connections: usize,
    #[serde(rename = "shutdown_grace_ms", deserialize_with = "millis")]
    pub shutdown_grace: Duration,
    /// Lame-duck drain: the window over which a stopping gateway closes its
    /// sessions one after another (0: all at once).
    #[serde(rename = "drain_ms", deserialize_with = "millis")]
    pub drain: Duration,
    pub queue_max_length: u32,
    /// Where `GET /metrics` is served (never on the public `listen`).
    pub metrics_listen: SocketAddr,
    #[serde(rename = "write_timeout_ms", deserialize_with = "millis")]
    pub write_timeout: Duration,
    /// A broker connection down this long sends the gateway's sessions
    /// elsewhere (close 1011) until it is back.
    #[serde(rename = "broker_lost_ms", deserialize_with = "millis")]
    pub broker_lost: Duration,
    /// How long a new session waits for its shard's binding.
    #[serde(rename = "bind_timeout_ms", deserialize_with = "millis")]
    pub bind_timeout: Duration,
    /// A broker connection down this long makes `/health` answer 503, so a
    /// supervisor restarts a gateway whose AMQP client is stuck.
    #[serde(rename = "broker_dead_ms", deserialize_with = "millis")]
    pub broker_dead: Duration,
    /// Then also exit (after closing the sessions), for supervisors that
    /// restart a process that ends but do not probe `/health` (Compose,
    /// systemd).
    pub exit_when_broker_dead: bool,
    #[serde(rename = "http_request_timeout_ms", deserialize_with = "millis")]
    pub http_request_timeout: Duration,
    #[serde(rename = "http_header_timeout_ms", deserialize_with = "millis")]
    pub http_header_timeout: Duration,
    pub http_body_bytes: usize,
    /// Peers whose `X-Forwarded-For` names the client (the load balancers):
    /// addresses or networks (`10.0.0.0/8`).
    pub trusted_proxies: Vec<crate::net::IpNet>,
    /// Serve the web client from this folder instead of the files built
    /// into the binary (for working on gateway/web/ without rebuilding).
    #[serde(default)]
    pub web_dir: Option<std::path::PathBuf>,
    /// Where the server API is served, apart from the public `listen`;
    /// empty: on the public `listen`.
    #[serde(default, deserialize_with = "optional_addr")]
    pub server_api_listen: Option<SocketAddr>,
    /// Serve `GET /ws/echo`, a WebSocket that echoes every message, for the
    /// Autobahn conformance suite (deploy/autobahn.sh). Loopback only.
    pub conformance_echo: bool,
    /// How long a round of persist publishes waits for more sends.
    #[serde(rename = "publish_linger_ms", deserialize_with = "millis")]
    pub publish_linger: Duration,
    /// Commands (sends, read markers) waiting for the gateway's publisher;
    /// a session whose command finds it full holds that command and reads
    /// no more frames until there is room (backpressure, in frame order).
    pub publish_queue: NonZeroUsize,
    pub limits: LimitSettings,
}

/// What one client may consume (config/default.toml, `[gateway.limits]`).
#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    pub connections_per_ip: NonZeroUsize,
    pub connections_per_user: NonZeroUsize,
    pub sends_per_second: f64,
    pub sends_burst: u32,
    pub user_sends_per_second: f64,
    pub user_sends_burst: u32,
    pub reads_per_second: f64,
    pub reads_burst: u32,
    pub http_per_second: f64,
    pub http_burst: u32,
    pub groups_per_hour: u32,
    pub server_api_per_second: f64,
    pub server_api_burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PersisterSettings {
    pub batch_max: NonZeroUsize,
    pub linger_from: usize,
    pub linger_until: usize,
    #[serde(rename = "linger_ms", deserialize_with = "millis")]
    pub linger: Duration,
    /// The most unacknowledged deliveries (AMQP prefetch); fewer when
    /// `max_inflight_bytes` asks for fewer ([`PersisterSettings::prefetch_per_channel`]).
    pub prefetch: NonZeroU16,
    /// Most bytes of deliveries held between consuming and acking.
    pub max_inflight_bytes: NonZeroUsize,
    pub metrics_listen: SocketAddr,
    /// A broker connection down this long makes `/health` answer 503.
    #[serde(rename = "broker_dead_ms", deserialize_with = "millis")]
    pub broker_dead: Duration,
}

impl Settings {
    /// The profile named by `CHAT_PROFILE`, with the file and environment
    /// layers on top. No profile means production: a process started
    /// without one must never get the local profile's dev login.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_profile(&profile_name(std::env::var("CHAT_PROFILE").ok()))
    }

    pub fn load_profile(profile: &str) -> Result<Self, ConfigError> {
        let profile_toml = PROFILES
            .iter()
            .find(|(name, _)| *name == profile)
            .map(|(_, toml)| *toml)
            .ok_or_else(|| ConfigError::UnknownProfile(profile.to_owned()))?;
        let mut builder = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(File::from_str(profile_toml, FileFormat::Toml));
        if let Ok(path) = std::env::var("CHAT_CONFIG_FILE") {
            builder = builder.add_source(File::with_name(&path).format(FileFormat::Toml));
        }
        let settings: Settings = builder
            .add_source(
                Environment::with_prefix("CHAT")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("auth.allowed_origins")
                    .with_list_parse_key("auth.server_api_keys")
                    .with_list_parse_key("gateway.trusted_proxies"),
            )
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Every section's own rules, and the one rule across sections (the dev
    /// login only on a loopback gateway), the most dangerous first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.auth.validate()?;
        if self.auth.dev_login && !self.gateway.listen.ip().is_loopback() {
            return invalid(
                "auth.dev_login",
                "mints a token for any user: allowed only on a loopback gateway.listen",
            );
        }
        self.gateway.validate()?;
        self.amqp.validate()?;
        self.database.validate()?;
        self.redis.validate()?;
        self.telemetry.validate()?;
        self.persister.validate()?;
        self.presence.validate()?;
        self.notify.validate()
    }
}

fn invalid(key: &'static str, reason: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key,
        reason: reason.to_owned(),
    })
}

/// The first of `durations` that is zero, refused.
fn positive(durations: &[(&'static str, Duration)]) -> Result<(), ConfigError> {
    match durations.iter().find(|(_, d)| d.is_zero()) {
        Some((key, _)) => invalid(key, "must be positive"),
        None => Ok(()),
    }
}

impl AuthSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.jwt_secret.expose().len() < 32 {
            return invalid("auth.jwt_secret", "must be set, at least 32 bytes");
        }
        positive(&[("auth.auth_timeout_ms", self.auth_timeout)])
    }
}

impl TelemetrySettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if !["http/protobuf", "grpc"].contains(&self.otlp_protocol.as_str()) {
            return invalid("telemetry.otlp_protocol", "http/protobuf or grpc");
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return invalid("telemetry.sample_ratio", "must be between 0 and 1");
        }
        Ok(())
    }
}

impl DatabaseSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        positive(&[("database.connect_timeout_ms", self.connect_timeout)])?;
        if self.ca_file.is_some() && !crate::tls::postgres_verifies(&self.url) {
            return invalid(
                "database.ca_file",
                "is used only when database.url says sslmode=verify-full (or verify-ca)",
            );
        }
        Ok(())
    }
}

impl AmqpSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        positive(&[("amqp.confirm_timeout_ms", self.confirm_timeout)])?;
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            return invalid("amqp.prefix", "must be a non-empty word");
        }
        let tls = crate::tls::scheme_is(&self.url, "amqps");
        for (key, file) in [
            ("amqp.ca_file", &self.ca_file),
            ("amqp.client_cert_file", &self.client_cert_file),
            ("amqp.client_key_file", &self.client_key_file),
        ] {
            if file.is_some() && !tls {
                return invalid(key, "is used only with an amqps:// amqp.url");
            }
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return invalid(
                "amqp.client_cert_file",
                "and amqp.client_key_file go together: set both or neither",
            );
        }
        Ok(())
    }
}

impl RedisSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.ca_file.is_some() && !crate::tls::scheme_is(&self.url, "rediss") {
            return invalid("redis.ca_file", "is used only with a rediss:// redis.url");
        }
        Ok(())
    }
}

impl GatewaySettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.conformance_echo && !self.listen.ip().is_loopback() {
            return invalid(
                "gateway.conformance_echo",
                "an echo endpoint is for conformance tests: allowed only on a loopback gateway.listen",
            );
        }
        positive(&[
            ("gateway.heartbeat_ms", self.heartbeat),
            ("gateway.send_timeout_ms", self.send_timeout),
            ("gateway.write_timeout_ms", self.write_timeout),
            ("gateway.broker_lost_ms", self.broker_lost),
            ("gateway.bind_timeout_ms", self.bind_timeout),
            ("gateway.broker_dead_ms", self.broker_dead),
            ("gateway.http_request_timeout_ms", self.http_request_timeout),
        ])?;
        if self.heartbeat_timeout <= self.heartbeat {
            return invalid(
                "gateway.heartbeat_timeout_ms",
                "must be longer than heartbeat_ms",
            );
        }
        if self.max_frame_bytes > crate::bus::MAX_COMMAND_BYTES {
            return invalid(
                "gateway.max_frame_bytes",
                "at most 131072 (a send must fit one message to the persister)",
            );
        }
        if self.max_body_chars == 0 || self.max_body_chars * 6 + 1024 > self.max_frame_bytes {
            return invalid(
                "gateway.max_body_chars",
                "must be at least 1 and fit max_frame_bytes escaped (6 bytes a character)",
            );
        }
        self.limits.validate()
    }
}

impl LimitSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let rates = [
            ("gateway.limits.sends_per_second", self.sends_per_second),
            (
                "gateway.limits.user_sends_per_second",
                self.user_sends_per_second,
            ),
            ("gateway.limits.reads_per_second", self.reads_per_second),
            ("gateway.limits.http_per_second", self.http_per_second),
        ];
        if let Some((key, _)) = rates
            .iter()
            .find(|(_, rate)| !(*rate > 0.0 && rate.is_finite()))
        {
            return invalid(key, "must be a positive number");
        }
        Ok(())
    }
}

impl PersisterSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        positive(&[("persister.broker_dead_ms", self.broker_dead)])?;
        let batch_max = self.batch_max.get();
        if self.linger_from < 2
            || self.linger_until < self.linger_from
            || self.linger_until > batch_max
        {
            return invalid(
                "persister.linger_from",
                "need 2 <= linger_from <= linger_until <= batch_max (a lone message never lingers)",
            );
        }
        if self.linger > Duration::from_secs(1) {
            return invalid("persister.linger_ms", "at most 1000");
        }
        Ok(())
    }

    /// The AMQP prefetch of each of the `partitions` consuming channels: as
    /// many deliveries as `max_inflight_bytes` holds when each is as large
    /// as a gateway makes one ([`crate::bus::MAX_PERSIST_MESSAGE_BYTES`]),
    /// shared among the partitions, at least one each and at most
    /// `prefetch` in all.
    pub fn prefetch_per_channel(&self, partitions: u16) -> u16 {
        let partitions = usize::from(partitions.max(1));
        let by_bytes = self.max_inflight_bytes.get() / crate::bus::MAX_PERSIST_MESSAGE_BYTES;
        let total = by_bytes.min(usize::from(self.prefetch.get()));
        u16::try_from(total / partitions).unwrap_or(u16::MAX).max(1)
    }
}

impl PresenceSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        positive(&[
            ("presence.heartbeat_ms", self.heartbeat),
            ("presence.broker_dead_ms", self.broker_dead),
        ])?;
        if self.gateway_ttl < 2 * self.heartbeat {
            return invalid(
                "presence.gateway_ttl_ms",
                "must be at least twice presence.heartbeat_ms",
            );
        }
        if self.sweep.is_zero() || self.typing_throttle >= self.typing_lapse {
            return invalid(
                "presence.typing_throttle_ms",
                "sweep_ms must be positive, throttle shorter than lapse",
            );
        }
        Ok(())
    }
}

/// The profile to load: the one named, or production.
fn profile_name(named: Option<String>) -> String {
    named
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "production".to_owned())
}

/// A value that must never reach a log: `Debug` prints `[redacted]`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// `url` with the password of its user part replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    match url[after_scheme..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &url[after_scheme..after_scheme + at];
            let user = userinfo.split(':').next().unwrap_or_default();
            let password = if userinfo.contains(':') { ":***" } else { "" };
            format!(
                "{}{user}{password}{}",
                &url[..after_scheme],
                &url[after_scheme + at..]
            )
        }
        None => url.to_owned(),
    }
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl std::fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSettings")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("partitions", &self.partitions)
            .field("route_shards", &self.route_shards)
            .field("persistent_sends", &self.persistent_sends)
            .field("confirm_timeout", &self.confirm_timeout)
            .finish()
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_loads_and_validates_except_production_without_a_secret() {
        assert!(Settings::load_profile("local").is_ok());
        assert!(Settings::load_profile("test").is_ok());
        // Production has no secret in files: it must come from the environment.
        assert!(matches!(
            Settings::load_profile("production"),
            Err(ConfigError::Invalid {
                key: "auth.jwt_secret",
                ..
            })
        ));
        assert!(matches!(
            Settings::load_profile("staging"),
            Err(ConfigError::UnknownProfile(_))
        ));
    }

    #[test]
    fn a_linger_that_would_hold_a_lone_message_is_refused() {
        let mut settings =
            Settings::load_profile("local").unwrap_or_else(|e| panic!("local profile: {e}"));
        settings.persister.linger_from = 1;
        assert!(matches!(
            settings.validate(),
            Err(ConfigError::Invalid {
                key: "persister.linger_from",
                ..
            })
        ));
        settings.persister.linger_from = 16;
        settings.persister.linger_until = settings.persister.batch_max.get() + 1;
        assert!(settings.validate().is_err());
    }

    fn local() -> Settings {
        Settings::load_profile("local").unwrap()
    }

    #[test]
    fn the_persister_prefetch_holds_max_inflight_bytes_of_the_largest_messages() {
        let mut p = local().persister;
        // 128 MiB / 256 KiB = 512 messages, over 8 partitions.
        p.max_inflight_bytes = NonZeroUsize::new(128 << 20).unwrap();
        assert_eq!(p.prefetch_per_channel(8), 64);
        // Never more than `prefetch` in all.
        p.prefetch = NonZeroU16::new(80).unwrap();
        assert_eq!(p.prefetch_per_channel(8), 10);
        // At least one each, however small the budget.
        p.max_inflight_bytes = NonZeroUsize::new(1).unwrap();
        assert_eq!(p.prefetch_per_channel(8), 1);
        assert_eq!(p.prefetch_per_channel(0), 1);
    }

    #[test]
    fn a_frame_that_would_not_fit_one_message_to_the_persister_is_refused() {
        let mut settings = local();
        settings.gateway.max_frame_bytes = crate::bus::MAX_COMMAND_BYTES + 1;
        assert!(matches!(
            settings.validate(),
            Err(ConfigError::Invalid {
                key: "gateway.max_frame_bytes",
                ..
            })
        ));
    }

    #[test]
    fn an_empty_server_api_listen_is_unset_and_an_address_is_parsed() {
        #[derive(Deserialize)]
        struct Listen {
            #[serde(deserialize_with = "optional_addr")]
            at: Option<SocketAddr>,
        }
        let parse = |raw: &str| {
            serde_json::from_value::<Listen>(serde_json::json!({ "at": raw })).map(|l| l.at)
        };
        assert_eq!(parse("").ok(), Some(None));
        assert_eq!(parse(" ").ok(), Some(None));
        assert_eq!(
            parse("0.0.0.0:8081").ok(),
            Some(Some("0.0.0.0:8081".parse().unwrap()))
        );
        assert!(parse("8081").is_err());
        assert_eq!(local().gateway.server_api_listen, None);
    }

    #[test]
    fn no_profile_means_production() {
        assert_eq!(profile_name(None), "production");
        assert_eq!(profile_name(Some(String::new())), "production");
        assert_eq!(profile_name(Some("local".into())), "local");
    }

    #[test]
    fn the_dev_login_is_refused_on_an_address_that_is_not_loopback() {
        let mut settings = local();
        settings.gateway.listen = "0.0.0.0:8080".parse().unwrap();
        assert!(matches!(
            settings.validate(),
            Err(ConfigError::Invalid {
                key: "auth.dev_login",
                ..
            })
        ));
        settings.auth.dev_login = false;
        assert!(settings.validate().is_ok());
    }

    #[test]
    fn the_conformance_echo_is_refused_on_an_address_that_is_not_loopback() {
        let mut settings = local();
        settings.auth.dev_login = false;
        settings.gateway.conformance_echo = true;
        settings.gateway.listen = "0.0.0.0:8080".parse().unwrap();
        assert!(matches!(
            settings.validate(),
            Err(ConfigError::Invalid {
                key: "gateway.conformance_echo",
                ..
            })
        ));
        settings.gateway.listen = "127.0.0.1:8080".parse().unwrap();
        assert!(settings.validate().is_ok());
    }

    #[test]
    fn the_queue_type_is_classic_unless_asked_and_quorum_is_understood() {
        assert_eq!(local().amqp.queue_type, QueueType::Classic);
        let quorum: QueueType = serde_json::from_str("\"quorum\"").unwrap();
        assert_eq!(quorum, QueueType::Quorum);
        assert!(serde_json::from_str::<QueueType>("\"stream\"").is_err());
    }

    #[test]
    fn zero_intervals_and_rates_are_refused_before_anything_starts() {
        let mut settings = local();
        settings.gateway.heartbeat = Duration::ZERO;
        settings.gateway.heartbeat_timeout = Duration::from_millis(10);
        assert!(matches!(
            settings.validate(),
            Err(ConfigError::Invalid {
                key: "gateway.heartbeat_ms",
                ..
            })
        ));
        let mut settings = local();
        settings.gateway.limits.sends_per_second = 0.0;
        assert!(settings.validate().is_err());
        let mut settings = local();
        settings.gateway.limits.reads_per_second = f64::NAN;
        assert!(settings.validate().is_err());
    }

    #[test]
    fn a_zero_count_is_refused_when_read_naming_its_key() {
        let read: Result<Settings, _> = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(File::from_str(
                "[gateway]\nsession_queue = 0",
                FileFormat::Toml,
            ))
            .build()
            .and_then(|c| c.try_deserialize());
        let error = read.unwrap_err().to_string();
        assert!(error.contains("gateway.session_queue"), "{error}");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let mut settings = local();
        settings.database.url = "postgres://chat:pg-password@db:5432/chat".into();
        settings.amqp.url = "amqp://chat:mq-password@mq:5672/%2f".into();
        settings.redis.url = "redis://:redis-password@cache:6379/".into();
        let printed = format!("{settings:?}");
        for secret in [
            settings.auth.jwt_secret.expose(),
            "pg-password",
            "mq-password",
            "redis-password",
        ] {
            assert!(!printed.contains(secret), "{secret} leaked: {printed}");
        }
        assert!(
            printed.contains("postgres://chat:***@db:5432/chat"),
            "{printed}"
        );
        assert_eq!(redact_url("redis://cache:6379/"), "redis://cache:6379/");
    }

    #[test]
    fn the_dev_login_exists_only_in_local_and_test() {
        let local = Settings::load_profile("local").map(|s| s.auth.dev_login);
        assert_eq!(local.ok(), Some(true));
        let defaults: Settings = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .unwrap_or_else(|e| panic!("defaults must deserialize: {e}"));
        assert!(!defaults.auth.dev_login);
    }
}
