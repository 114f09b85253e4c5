//! The whole system in one process, for tests: real Postgres, RabbitMQ and
//! Redis (the `test` instance that `deploy/test.sh` starts), real gateways
//! and persisters started as libraries. Each [`TestSystem`] has its own
//! database and its own exchange and queue names, so tests run in parallel
//! without seeing each other.
//!
//! [`Client`] speaks the public contract only: HTTP with a bearer token and
//! JSON frames over a WebSocket, exactly as a browser or an app would.

pub mod chaos;
pub mod cli;
pub mod client;
pub mod load;
pub mod otlp;
pub mod webhook;

pub use client::Client;

use chaos::ChaosProxy;
use chat_gateway::Gateway;
use chat_persister::Persister;
use chat_presence::Presence;
use chat_shared::config::Settings;
use chat_shared::schema;
use sea_orm::sqlx::{self, Connection as _};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;

/// A server API key of the test profile (config/test.toml), and the
/// second one (a key being rotated in).
pub const SERVER_KEY: &str = "test-a:test-server-api-key-a-not-a-secret-0000000";
pub const SERVER_KEY_B: &str = "test-b:test-server-api-key-b-not-a-secret-0000000";

/// How long any wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub struct TestSystem {
    pub settings: Settings,
    pub gateways: Vec<SocketAddr>,
    /// Where each gateway serves `/metrics` (not its public address).
    pub gateway_metrics: Vec<SocketAddr>,
    /// Where each gateway serves the server API apart, if it does.
    pub server_api: Vec<Option<SocketAddr>>,
    /// Where each persister serves `/metrics`.
    pub persister_metrics: Vec<SocketAddr>,
    /// Where each presence service serves `/metrics`.
    pub presence_metrics: Vec<SocketAddr>,
    http: reqwest::Client,
    /// Dropping a sender stops the service it belongs to.
    stops: Vec<oneshot::Sender<()>>,
    gateway_stops: Vec<Option<oneshot::Sender<()>>>,
    presence_stops: Vec<Option<oneshot::Sender<()>>>,
    /// Its own database, dropped with it.
    database: TestDatabase,
}

impl TestSystem {
    /// Two gateways and one persister.
    pub async fn start() -> Self {
        Self::start_with(2, 1, |_| {}).await
    }

    /// `gateways` gateways and `persisters` persisters (and a presence
    /// service), with `adjust` applied to the settings first.
    pub async fn start_with(
        gateways: usize,
        persisters: usize,
        adjust: impl FnOnce(&mut Settings),
    ) -> Self {
        Self::start_services(gateways, persisters, true, adjust).await
    }

    /// Like [`Self::start_with`], with or without the presence service (a
    /// test that starts its own with other settings says `false`).
    pub async fn start_services(
        gateways: usize,
        persisters: usize,
        presence: bool,
        adjust: impl FnOnce(&mut Settings),
    ) -> Self {
        let mut settings = Settings::load_profile("test").unwrap_or_else(|e| {
            panic!("test settings: {e} (run the tests through deploy/test.sh)")
        });
        let unique = uuid::Uuid::new_v4().simple().to_string();
        settings.amqp.prefix = format!("t{}", &unique[..12]);
        settings.redis.prefix = settings.amqp.prefix.clone();
        let database = TestDatabase::create(&settings.database.url, &unique[..16]).await;
        settings.database.url = database.url.clone();
        chat_shared::telemetry::init(&settings.log, &settings.telemetry, "chat-tests");
        let db = schema::connect(&settings.database)
            .await
            .unwrap_or_else(|e| panic!("test database: {e}"));
        schema::migrate(&db)
            .await
            .unwrap_or_else(|e| panic!("migrating the test database: {e}"));
        db.close().await.ok();
        adjust(&mut settings);

        let mut system = TestSystem {
            settings: settings.clone(),
            gateways: Vec::new(),
            gateway_metrics: Vec::new(),
            server_api: Vec::new(),
            presence_stops: Vec::new(),
            persister_metrics: Vec::new(),
            presence_metrics: Vec::new(),
            http: http_client(),
            stops: Vec::new(),
            gateway_stops: Vec::new(),
            database,
        };
        for _ in 0..persisters {
            system.start_persister().await;
        }
        if presence {
            system.start_presence().await;
        }
        for _ in 0..gateways {
            system.start_gateway_with(settings.clone()).await;
        }
        system
    }

    /// Another gateway, with its own settings; returns its index.
    pub async fn start_gateway_with(&mut self, settings: Settings) -> usize {
        let gateway = Gateway::build(settings)
            .await
            .unwrap_or_else(|e| panic!("gateway: {e:#}"));
        self.gateways.push(gateway.local_addr());
        self.gateway_metrics.push(gateway.metrics_addr());
        self.server_api.push(gateway.server_api_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(gateway.run_until(async move {
            let _ = stopped.await;
        }));
        self.gateway_stops.push(Some(stop));
        self.gateways.len() - 1
    }

    pub async fn start_persister(&mut self) {
        let settings = self.settings.clone();
        self.start_persister_with(settings).await;
    }

    /// A persister with its own settings (e.g. its database behind a proxy).
    pub async fn start_persister_with(&mut self, settings: Settings) {
        let persister = Persister::build(settings)
            .await
            .unwrap_or_else(|e| panic!("persister: {e:#}"));
        self.persister_metrics.extend(persister.metrics_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(persister.run_until(async move {
            let _ = stopped.await;
        }));
        self.stops.push(stop);
    }

    pub async fn start_presence(&mut self) {
        let settings = self.settings.clone();
        self.start_presence_with(settings).await;
    }

    /// A presence service with its own settings (e.g. its broker behind a
    /// proxy); returns its index (for [`Self::stop_presence`]).
    pub async fn start_presence_with(&mut self, settings: Settings) -> usize {
        let presence = Presence::build(settings)
            .await
            .unwrap_or_else(|e| panic!("presence: {e:#}"));
        self.presence_metrics.extend(presence.metrics_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(presence.run_until(async move {
            let _ = stopped.await;
        }));
        self.presence_stops.push(Some(stop));
        self.presence_stops.len() - 1
    }

    /// Stops presence service `index` (as a shutdown would).
    pub fn stop_presence(&mut self, index: usize) {
        if let Some(stop) = self.presence_stops.get_mut(index).and_then(Option::take) {
            let _ = stop.send(());
        }
    }

    /// The text of presence service `index`'s `/metrics`.
    pub async fn presence_metrics_text(&self, index: usize) -> String {
        let url = format!("http://{}/metrics", self.presence_metrics[index]);
        let (_, body) = self.get_url(&url).await;
        body.as_str().unwrap_or_default().to_owned()
    }

    /// A chaos proxy in front of the test broker, and these settings with
    /// the AMQP URL pointing through it (for a service a test then starts).
    pub async fn broker_proxy(&self) -> (ChaosProxy, Settings) {
        let mut settings = self.settings.clone();
        let proxy = proxy_for(&mut settings.amqp.url).await;
        (proxy, settings)
    }

    /// A chaos proxy in front of the test database, and these settings with
    /// the database URL pointing through it.
    pub async fn database_proxy(&self) -> (ChaosProxy, Settings) {
        let mut settings = self.settings.clone();
        let proxy = proxy_for(&mut settings.database.url).await;
        (proxy, settings)
    }

    /// `ALTER DATABASE <this test's database> <change>`, e.g. `SET
    /// default_transaction_read_only = on`: the sessions opened after it
    /// take it (those already open keep what they had).
    pub async fn alter_database(&self, change: &str) {
        let name = &self.database.name;
        let mut admin = sqlx::PgConnection::connect(&self.database.admin_url)
            .await
            .expect("the test Postgres");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {name} {change}"
        )))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("ALTER DATABASE {name} {change}: {e}"));
        admin.close().await.ok();
    }

    /// A connection of the test's own to its database (to hold a lock, say).
    pub async fn database_connection(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.database.url)
            .await
            .expect("the test database")
    }

    /// A service binary (`chat-gateway`, `chat-persister`) as a process of
    /// its own, on this system's servers and names; killed when dropped.
    pub fn service_process(&self, binary: &str) -> tokio::process::Command {
        let path = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join(binary)))
            .unwrap_or_else(|| panic!("cannot locate the {binary} binary"));
        if !path.exists() {
            panic!(
                "{} is missing (build it: cargo build -p {})",
                path.display(),
                binary
            );
        }
        let s = &self.settings;
        let mut command = tokio::process::Command::new(path);
        command
            .env("CHAT_PROFILE", "test")
            .env("CHAT_DATABASE__URL", &s.database.url)
            .env("CHAT_AMQP__URL", &s.amqp.url)
            .env("CHAT_AMQP__PREFIX", &s.amqp.prefix)
            .env("CHAT_REDIS__URL", &s.redis.url)
            .env("CHAT_REDIS__PREFIX", &s.redis.prefix)
            .kill_on_drop(true);
        command
    }

    /// A gateway in its own process (the `chat-gateway` binary), so a test
    /// can kill it with SIGKILL.
    pub async fn spawn_gateway_process(&self) -> GatewayProcess {
        let s = &self.settings;
        // The free port may be taken by another test before the process
        // binds it: then it exits at once, and another port is tried.
        for _attempt in 0..5 {
            let port = free_port();
            let mut child = self
                .service_process("chat-gateway")
                .env(
                    "CHAT_PRESENCE__HEARTBEAT_MS",
                    s.presence.heartbeat.as_millis().to_string(),
                )
                .env("CHAT_GATEWAY__LISTEN", format!("127.0.0.1:{port}"))
                .env("CHAT_GATEWAY__METRICS_LISTEN", "127.0.0.1:0")
                .spawn()
                .unwrap_or_else(|e| panic!("spawning chat-gateway: {e}"));
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let ready = format!("http://{addr}/ready?require=broker,database");
            // Ready (true), or exited because its port was taken (false).
            let started = eventually_within(DEADLINE, async || {
                let answer = self.http.get(&ready).send().await;
                if answer.is_ok_and(|r| r.status().is_success()) {
                    Ok(true)
                } else if child.try_wait().ok().flatten().is_some() {
                    Ok(false)
                } else {
                    Err(format!("gateway process not ready at {addr}"))
                }
            })
            .await;
            if started {
                return GatewayProcess { child, addr };
            }
            // Another port.
        }
        panic!("no gateway process started in five attempts");
    }

    /// Stops gateway `index` gracefully (its sessions get close code 1012).
    pub fn stop_gateway(&mut self, index: usize) {
        if let Some(stop) = self.gateway_stops.get_mut(index).and_then(Option::take) {
            let _ = stop.send(());
        }
    }

    pub fn url(&self, gateway: usize, path: &str) -> String {
        format!("http://{}{path}", self.gateways[gateway])
    }

    /// A token for `user`, without a name, from the dev login of gateway 0.
    pub async fn token(&self, user: i64) -> String {
        self.dev_token(json!({"user_id": user})).await
    }

    /// A token for `user` whose `name` claim is `name`.
    pub async fn token_named(&self, user: i64, name: &str) -> String {
        self.dev_token(json!({"user_id": user, "name": name})).await
    }

    async fn dev_token(&self, request: Value) -> String {
        let (status, body) = self.post(0, "/api/dev/token", None, request).await;
        assert_eq!(status, 200, "dev token: {body}");
        body["token"].as_str().unwrap_or_default().to_owned()
    }

    /// A connected, authenticated client of `user` on `gateway` (header auth).
    pub async fn connect(&self, gateway: usize, user: i64) -> Client {
        let token = self.token(user).await;
        Client::connect(self.gateways[gateway], Some(&token), None)
            .await
            .unwrap_or_else(|e| panic!("connect user {user}: {e}"))
            .authenticated()
            .await
    }

    /// The Prometheus text of gateway `gateway`.
    pub async fn gateway_metrics(&self, gateway: usize) -> String {
        let url = format!("http://{}/metrics", self.gateway_metrics[gateway]);
        let (status, text) = self.get_url(&url).await;
        assert_eq!(status, 200, "gateway metrics: {text}");
        text.as_str().unwrap_or_default().to_owned()
    }

    /// The Prometheus text of persister `persister`.
    pub async fn persister_metrics_text(&self, persister: usize) -> String {
        let url = format!("http://{}/metrics", self.persister_metrics[persister]);
        let (status, text) = self.get_url(&url).await;
        assert_eq!(status, 200, "persister metrics: {text}");
        text.as_str().unwrap_or_default().to_owned()
    }

    /// GET of a full URL (other services' endpoints).
    pub async fn get_url(&self, url: &str) -> (u16, Value) {
        respond(self.http.get(url)).await
    }

    pub async fn get(&self, gateway: usize, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call(reqwest::Method::GET, gateway, path, token, None)
            .await
    }

    pub async fn post(
        &self,
        gateway: usize,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        self.call(reqwest::Method::POST, gateway, path, token, Some(body))
            .await
    }

    pub async fn put(
        &self,
        gateway: usize,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        self.call(reqwest::Method::PUT, gateway, path, token, Some(body))
            .await
    }

    pub async fn delete(&self, gateway: usize, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, gateway, path, token, None)
            .await
    }

    /// A server API request through gateway `gateway` with
    /// [`SERVER_KEY`].
    pub async fn server_api(
        &self,
        gateway: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = self.url(gateway, path);
        let authorization = format!("ApiKey {SERVER_KEY}");
        self.server_api_at(&url, Some(&authorization), method, body)
            .await
    }

    /// A request to `url` with this `Authorization` header (or none).
    pub async fn server_api_at(
        &self,
        url: &str,
        authorization: Option<&str>,
        method: reqwest::Method,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(authorization) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        respond(request).await
    }

    /// One API request; the body, when there is one, as JSON.
    async fn call(
        &self,
        method: reqwest::Method,
        gateway: usize,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(gateway, path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        respond(request).await
    }

    /// The direct conversation of `user` and `peer`; returns its id.
    pub async fn direct(&self, user: i64, peer: i64) -> i64 {
        let token = self.token(user).await;
        let (status, body) = self
            .post(
                0,
                "/api/conversations",
                Some(&token),
                json!({"peer_id": peer}),
            )
            .await;
        assert!(
            status == 200 || status == 201,
            "create direct: {status} {body}"
        );
        body["id"].as_i64().unwrap_or_default()
    }

    /// A group created by `user` with `others`; returns its id.
    pub async fn group(&self, user: i64, others: &[i64]) -> i64 {
        let token = self.token(user).await;
        let body = json!({"title": "group", "member_ids": others});
        let (status, body) = self.post(0, "/api/conversations", Some(&token), body).await;
        assert_eq!(status, 201, "create group: {body}");
        body["id"].as_i64().unwrap_or_default()
    }

    /// History as `user` sees it, through gateway `gateway`.
    pub async fn history(
        &self,
        gateway: usize,
        user: i64,
        conversation: i64,
        query: &str,
    ) -> Vec<Value> {
        let token = self.token(user).await;
        let path = format!("/api/conversations/{conversation}/messages{query}");
        let (status, body) = self.get(gateway, &path, Some(&token)).await;
        assert_eq!(status, 200, "history: {body}");
        body["messages"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for TestSystem {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for stop in self.gateway_stops.iter_mut().filter_map(Option::take) {
            let _ = stop.send(());
        }
        // The services stop in the background and may still hold
        // connections to it: the drop ends them (`WITH (FORCE)`).
        self.database.drop_database();
    }
}

/// The `seq` of each message in a list, in order.
/// Starts a proxy to the server of `url` (`scheme://[user@]host:port/...`)
/// and points `url` at the proxy.
async fn proxy_for(url: &mut String) -> ChaosProxy {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    let start = after_scheme + rest.find('@').map_or(0, |i| i + 1);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let server: SocketAddr = url[start..end]
        .parse()
        .unwrap_or_else(|e| panic!("{url}: the server is not host:port ({e})"));
    let proxy = ChaosProxy::start(server).await;
    url.replace_range(start..end, &proxy.addr.to_string());
    proxy
}

pub fn seqs(messages: &[Value]) -> Vec<i64> {
    messages
        .iter()
        .map(|m| m["seq"].as_i64().unwrap_or_default())
        .collect()
}

/// A gateway running as a child process.
pub struct GatewayProcess {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
}

impl GatewayProcess {
    /// SIGKILL: no goodbye to anyone.
    pub async fn kill_9(&mut self) {
        self.child
            .kill()
            .await
            .unwrap_or_else(|e| panic!("kill -9: {e}"));
    }
}

/// Waits until `check` says yes, asking every 50 ms; fails the test with
/// `what` after [`DEADLINE`].
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    eventually_within(DEADLINE, async || check().await.then_some(()).ok_or(what)).await
}

/// Asks `check` every 50 ms until it answers `Ok`, and returns what it
/// answered; once `within` has passed, fails the test with its last `Err`
/// (what did not happen, and how things stood) and how long it waited.
/// `check` may change what it captures (count its attempts, send again).
pub async fn eventually_within<T, E: std::fmt::Display>(
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) => assert!(
                tokio::time::Instant::now() < deadline,
                "{last} (waited {within:?})"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port nothing listens on right now.
/// An HTTP client. reqwest is built with rustls and no crypto provider of
/// its own (for the presence service's webhook), so ring's is installed
/// first, as the presence service does.
pub fn http_client() -> reqwest::Client {
    #[allow(deprecated)] // ring lacks post-quantum key exchange; tests need none
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Idle connections kept for reuse, per host: reqwest keeps every one
    // (for 90 s) by default, and the load generator's thousands of set-up
    // requests then held thousands of descriptors it needed for sockets.
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap_or_else(|e| panic!("HTTP client: {e}"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

async fn respond(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("http request: {e}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The database of one [`TestSystem`].
struct TestDatabase {
    /// The maintenance database of its server, to create and drop it from.
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// How long dropping it may take before the test goes on without.
    const DROP_WAIT: Duration = Duration::from_secs(5);

    /// Creates database `test_{suffix}` next to the one in `url` (with the
    /// same parameters, `?sslmode=disable` say).
    async fn create(url: &str, suffix: &str) -> Self {
        let (path, query) = url.split_once('?').map_or((url, ""), |(p, q)| (p, q));
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let (base, _) = path.rsplit_once('/').unwrap_or((path, ""));
        let database = TestDatabase {
            admin_url: format!("{base}/postgres{query}"),
            name: format!("test_{suffix}"),
            url: format!("{base}/test_{suffix}{query}"),
        };
        let name = &database.name;
        let mut admin = sqlx::PgConnection::connect(&database.admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!("test Postgres at {base}: {e} (run the tests through deploy/test.sh)")
            });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        admin.close().await.ok();
        database
    }

    /// Drops it, connections and all, waiting at most [`Self::DROP_WAIT`].
    /// This runs in `Drop`, maybe on a runtime's thread, so the work is done
    /// on a thread of its own with a runtime of its own. A database left
    /// behind is only a warning: deploy/test.sh drops every `test_%` one
    /// before the tests run.
    fn drop_database(&self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let (done, result) = std::sync::mpsc::channel();
        let dropping = move || {
            let outcome = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("a runtime: {e}"))
                .and_then(|runtime| {
                    runtime.block_on(async {
                        let drop = async {
                            let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                            sqlx::query(sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            )))
                            .execute(&mut admin)
                            .await?;
                            admin.close().await
                        };
                        match tokio::time::timeout(Self::DROP_WAIT, drop).await {
                            Ok(dropped) => dropped.map_err(|e| e.to_string()),
                            Err(_) => Err(format!("not done in {:?}", Self::DROP_WAIT)),
                        }
                    })
                });
            let _ = done.send(outcome);
        };
        let outcome = match std::thread::Builder::new()
            .name(format!("drop {}", self.name))
            .spawn(dropping)
        {
            Err(e) => Err(format!("a thread: {e}")),
            // A little longer than the drop may take, to hear why it failed.
            Ok(_) => match result.recv_timeout(Self::DROP_WAIT + Duration::from_secs(1)) {
                Ok(outcome) => outcome,
                Err(e) => Err(format!("no answer: {e}")),
            },
        };
        if let Err(e) = outcome {
            eprintln!(
                "warning: test database {} not dropped: {e} (deploy/test.sh drops it before the next run)",
                self.name
            );
        }
    }
}
