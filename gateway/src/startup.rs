//! Building and running a gateway: connect, declare, bind (port 0 allowed),
//! then serve until the shutdown future resolves and drain with a deadline.

use crate::auth::JwtKeys;
use crate::http::server::keys::ServerKeys;
use crate::hub::{AmqpBindings, Hub};
use crate::limits::Limits;
use crate::listener::CountingListener;
use crate::metrics::Metrics;
use crate::presence_feed::{self, PresenceFeed};
use crate::profiles::Profiles;
use crate::sender::Sender;
use crate::state::AppState;
use crate::store::Store;
use crate::ws::blocks::Blocks;
use crate::ws::context::{SessionContext, Timing};
use crate::ws::frames::Rules;
use crate::ws::members::Memberships;
use crate::{http, inbox};
use anyhow::Context;
use chat_shared::amqp::{self, Announcer, ConfirmedPublisher, Inbound, Topology};
use chat_shared::config::Settings;
use chat_shared::directory::Directory;
use chat_shared::http_server;
use chat_shared::presence_state;
use chat_shared::service::{Background, BrokerWatch, connect_database};
use chat_shared::tls::Backend;
use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

pub struct Gateway {
    listener: TcpListener,
    metrics_listener: TcpListener,
    /// The server API's own listener (`gateway.server_api_listen`).
    server_api_listener: Option<TcpListener>,
    state: AppState,
    /// This gateway's queue, and what it dropped (to be counted).
    inbox: Inbox,
    signals: Signals,
    /// Ends its connection's reconnecting when the gateway ends.
    retirement: amqp::Retirement,
}

/// The gateway's own queue, consumed.
struct Inbox {
    consumer: Inbound,
    dropped: Inbound,
}

/// The senders of the signals every session and handler watches.
struct Signals {
    /// The gateway stops: no new sessions, not ready.
    shutdown: watch::Sender<bool>,
    /// The sessions still open end (after the drain, `gateway.drain_ms`).
    sessions_end: watch::Sender<bool>,
    broker_lost: watch::Sender<bool>,
    broker_dead: watch::Sender<bool>,
    /// The AMQP client is stuck (`amqp::recovery`): the gateway stops, and
    /// its caller starts a fresh one (`service::restarting`).
    broker_stuck: watch::Sender<bool>,
}

/// The receivers of [`Signals`].
struct Watchers {
    shutdown: watch::Receiver<bool>,
    sessions_end: watch::Receiver<bool>,
    broker_lost: watch::Receiver<bool>,
    broker_dead: watch::Receiver<bool>,
}

impl Signals {
    /// Every signal lowered, and their receivers.
    fn new() -> (Self, Watchers) {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (sessions_end, sessions_end_rx) = watch::channel(false);
        let (broker_lost, broker_lost_rx) = watch::channel(false);
        let (broker_dead, broker_dead_rx) = watch::channel(false);
        let signals = Self {
            shutdown,
            sessions_end,
            broker_lost,
            broker_dead,
            broker_stuck: watch::Sender::new(false),
        };
        let watchers = Watchers {
            shutdown: shutdown_rx,
            sessions_end: sessions_end_rx,
            broker_lost: broker_lost_rx,
            broker_dead: broker_dead_rx,
        };
        (signals, watchers)
    }
}

/// The broker side of a gateway, as `build` makes it.
struct Broker {
    conn: lapin::Connection,
    topo: Topology,
    queue: String,
    /// Declares the queue, binds it (the hub) and consumes it.
    setup: lapin::Channel,
    inbox: Inbox,
}

impl Broker {
    /// The hub of the gateway's sessions, binding its queue to the shards
    /// they need on the setup channel.
    fn hub(&self, bind_timeout: Duration, metrics: &Arc<Metrics>) -> Arc<Hub> {
        let bindings = AmqpBindings::new(self.setup.clone(), self.queue.clone(), &self.topo);
        let shards = self.topo.route_shards;
        Arc::new(Hub::new(
            Arc::new(bindings),
            shards,
            bind_timeout,
            metrics.clone(),
        ))
    }
}

/// What publishes for the gateway, and the channels it cannot work without.
struct Publishers {
    sender: Sender,
    events: Announcer,
    presence: PresenceFeed,
    channels: Vec<lapin::Channel>,
}

impl Gateway {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let backends = [Backend::Postgres, Backend::RabbitMq, Backend::Redis];
        let db = connect_database(&settings, &backends).await?;
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let retirement = amqp::Retirement::new();
        let broker = connect_broker(&settings, &instance, &retirement).await?;
        let metrics = Arc::new(Metrics::new());
        let hub = broker.hub(settings.gateway.bind_timeout, &metrics);
        let publishers = start_publishers(&settings, &broker, &hub, &metrics, &instance).await?;
        let listener = listen(
            settings.gateway.listen,
            settings.gateway.listen_backlog.get(),
        )?;
        let metrics_listener = bind(settings.gateway.metrics_listen).await?;
        let server_api_listener = match settings.gateway.server_api_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let (signals, watchers) = Signals::new();
        let store = Store::new(db.get_postgres_connection_pool().clone());
        let gates = Arc::new(gate_store(&settings).await?);
        let directory = Directory::new(db.get_postgres_connection_pool().clone());
        let limits = Arc::new(Limits::new(&settings.gateway.limits));
        let queue: Arc<str> = broker.queue.into();
        let sessions = Arc::new(SessionContext {
            rules: Rules::from_settings(&settings.gateway),
            timing: Timing::from_settings(&settings.gateway),
            sender: publishers.sender.clone(),
            members: Arc::new(Memberships::new(gates.clone())),
            blocks: Arc::new(Blocks::new(gates)),
            presence: publishers.presence.clone(),
            limits: limits.clone(),
            metrics: metrics.clone(),
            reply_to: queue.clone(),
            shutdown: watchers.sessions_end,
            broker_lost: watchers.broker_lost.clone(),
        });
        let mut amqp_channels = publishers.channels;
        amqp_channels.push(broker.setup);
        let state = AppState {
            keys: JwtKeys::from_settings(&settings.auth).context("auth.jwt_secret")?,
            server_keys: Arc::new(ServerKeys::parse(
                settings.auth.server_api_keys.iter().map(|k| k.expose()),
            )?),
            limits,
            redis: presence_state::connect(&settings.redis).context("the Redis URL")?,
            presence_keys: presence_state::Keys::new(&settings.redis),
            settings: Arc::new(settings),
            store: store.clone(),
            sessions,
            profiles: Arc::new(Profiles::new(
                store.clone(),
                directory.clone(),
                publishers.events.clone(),
            )),
            directory,
            events: publishers.events,
            hub,
            metrics,
            amqp: Arc::new(broker.conn),
            amqp_channels: amqp_channels.into(),
            presence: publishers.presence,
            queue,
            shutdown: watchers.shutdown,
            broker_lost: watchers.broker_lost,
            broker_dead: watchers.broker_dead,
        };
        Ok(Self {
            listener,
            metrics_listener,
            server_api_listener,
            state,
            inbox: broker.inbox,
            retirement,
            signals,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Where the server API is served apart (`gateway.server_api_listen`).
    pub fn server_api_addr(&self) -> Option<SocketAddr> {
        self.server_api_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Where `GET /metrics` is served (`gateway.metrics_listen`).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` resolves; then stops accepting, closes its
    /// sessions with 1012 one after another over `gateway.drain_ms`
    /// ([`crate::drain`]), then those left at once, and gives them
    /// `gateway.shutdown_grace_ms` to finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            metrics_listener,
            server_api_listener,
            state,
            inbox,
            signals,
            retirement,
        } = self;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, queue = %state.queue, "gateway serving");
        let gateway = &state.settings.gateway;
        state
            .metrics
            .connections_max
            .set(gateway.max_connections as i64);
        let mut background = start_background(&state, inbox, metrics_listener, &signals);
        if let Some(server_api) = server_api_listener {
            tracing::info!(addr = ?server_api.local_addr().ok(), "server API served apart");
            background.serve(server_api, http::server_router(state.clone()));
        }
        let listener = CountingListener::new(
            listener,
            state.limits.connections.clone(),
            gateway.limits.connections_per_ip.get(),
            gateway.trusted_proxies.clone(),
            state.metrics.clone(),
        );
        let header_timeout = gateway.http_header_timeout;
        let grace = gateway.shutdown_grace;
        let drain = gateway.drain;
        // Set when the gateway stops because its broker is dead, whatever
        // the broker does during the drain: the exit status says why.
        let died = Arc::new(AtomicBool::new(false));
        let stuck = Arc::new(AtomicBool::new(false));
        let stop = stop_signal(
            &state,
            shutdown,
            &signals,
            Ended {
                died: died.clone(),
                stuck: stuck.clone(),
            },
        );
        let (hub, amqp, presence) = (
            state.hub.clone(),
            state.amqp.clone(),
            state.presence.clone(),
        );
        http_server::serve(listener, http::router(state), header_timeout, grace, stop).await;
        let without_broker = died.load(Ordering::Relaxed) || stuck.load(Ordering::Relaxed);
        let drain = if without_broker {
            Duration::ZERO
        } else {
            drain
        };
        wind_down(&hub, drain, grace, &signals).await;
        // The sessions' last presence events go out before the connection.
        presence.flushed(Duration::from_secs(1)).await;
        let _ = amqp.close(200, "gateway shutdown".into()).await;
        background.stop();
        drop(retirement);
        tracing::info!(%addr, "gateway stopped");
        if died.load(Ordering::Relaxed) {
            anyhow::bail!("the broker was unreachable for gateway.broker_dead_ms");
        }
        if stuck.load(Ordering::Relaxed) {
            return Err(amqp::RecoveryStuck.into());
        }
        Ok(())
    }
}

/// Ends the sessions left once the gateway stopped accepting: closes them
/// one after another over `drain` (none when zero: a gateway without its
/// broker closes them at once), then tells those left to end and gives them
/// `grace` to finish.
async fn wind_down(hub: &Hub, drain: Duration, grace: Duration, signals: &Signals) {
    let sessions = hub.sessions();
    if !drain.is_zero() && !sessions.is_empty() {
        tracing::info!(
            sessions = sessions.len(),
            drain_ms = drain.as_millis() as u64,
            "draining: closing sessions one after another"
        );
        crate::drain::close_evenly(sessions, drain).await;
    }
    let _ = signals.sessions_end.send(true);
    let deadline = tokio::time::Instant::now() + grace;
    while hub.session_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects as `gateway <instance>`, declares the topology and this
/// gateway's queue, and consumes it.
async fn connect_broker(
    settings: &Settings,
    instance: &str,
    retirement: &amqp::Retirement,
) -> anyhow::Result<Broker> {
    let name = format!("gateway {instance}");
    let (conn, topo) = amqp::connect_and_declare(&settings.amqp, &name, retirement)
        .await
        .context("connecting to RabbitMQ and declaring the topology")?;
    // One channel declares the gateway's queue, binds it (the hub) and
    // consumes it: lapin's recovery replays a channel's topology in order,
    // so after a lost connection the exclusive queue exists again before
    // its bindings and its consumer are restored.
    let setup = conn.create_channel().await?;
    let queue = topo.gateway_queue(instance);
    amqp::declare_gateway_queue(&setup, &queue, settings.gateway.queue_max_length)
        .await
        .context("declaring the gateway queue")?;
    // Every gateway hears what is broadcast (changes that empty caches).
    setup
        .queue_bind(
            queue.as_str().into(),
            topo.broadcast_exchange().as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("binding the gateway queue to the broadcast exchange")?;
    let consumer = inbox::consume(&setup, &queue).await?;
    let dropped = inbox::consume(&setup, &amqp::gateway_dropped_queue(&queue)).await?;
    Ok(Broker {
        conn,
        topo,
        queue,
        setup,
        inbox: Inbox { consumer, dropped },
    })
}

/// The persist-path publisher (answering what the broker refuses through
/// the hub), the announcer of new conversations, and the presence feed.
async fn start_publishers(
    settings: &Settings,
    broker: &Broker,
    hub: &Arc<Hub>,
    metrics: &Arc<Metrics>,
    instance: &str,
) -> anyhow::Result<Publishers> {
    let confirm_timeout = settings.amqp.confirm_timeout;
    let publisher = ConfirmedPublisher::new(&broker.conn, confirm_timeout).await?;
    let mut channels = vec![publisher.channel().clone()];
    let sender = Sender::spawn(
        publisher,
        &broker.topo,
        settings.gateway.publish_linger,
        settings.gateway.publish_queue.get(),
        hub.clone(),
        metrics.clone(),
    );
    let events_publisher = ConfirmedPublisher::new(&broker.conn, confirm_timeout).await?;
    let events = Announcer::new(events_publisher, &broker.topo);
    channels.push(events.channel().clone());
    let (presence, presence_queue) = PresenceFeed::new(instance);
    let presence_channel = broker.conn.create_channel().await?;
    let topo = broker.topo.clone();
    tokio::spawn(presence_feed::publish(
        presence_queue,
        presence_channel,
        topo,
    ));
    Ok(Publishers {
        sender,
        events,
        presence,
        channels,
    })
}

/// The sessions' own Postgres pool (`gateway.gate_connections`), for their
/// membership and block checks.
async fn gate_store(settings: &Settings) -> anyhow::Result<Store> {
    let gates = chat_shared::config::DatabaseSettings {
        max_connections: settings.gateway.gate_connections.get(),
        ..settings.database.clone()
    };
    let db = chat_shared::schema::connect(&gates)
        .await
        .context("connecting to Postgres (the sessions' pool)")?;
    let pool = db.get_postgres_connection_pool().clone();
    // The pool connects lazily: open one connection now, so that the first
    // send does not wait for a connection's set-up (authentication
    // included). Postgres answered a moment ago; should it not now, the
    // first send connects.
    if let Err(e) = sea_orm::sqlx::query("SELECT 1").execute(&pool).await {
        tracing::warn!(error = %e, "the sessions' Postgres pool could not connect yet");
    }
    Ok(Store::new(pool))
}

/// The public listener, with its accept queue as long as configured
/// (`TcpListener::bind`, through Rust's standard library, asks for 128).
fn listen(addr: SocketAddr, backlog: u32) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("opening the listening socket")?;
    // As std's bind: a restarted gateway gets its port back at once.
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    socket
        .listen(backlog)
        .with_context(|| format!("listening on {addr}"))
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// What runs beside the HTTP server: the inbox, the count of what it
/// dropped, presence heartbeats, the broker watch and the metrics port.
fn start_background(
    state: &AppState,
    inbox: Inbox,
    metrics_listener: TcpListener,
    signals: &Signals,
) -> Background {
    let mut background = Background::new();
    let (hub, metrics) = (state.hub.clone(), state.metrics.clone());
    let gates = inbox::Gates {
        members: state.sessions.members.clone(),
        blocks: state.sessions.blocks.clone(),
    };
    background.spawn(inbox::run(
        inbox.consumer,
        hub.clone(),
        gates,
        metrics.clone(),
    ));
    let queue = state.queue.to_string();
    background.spawn(inbox::count_dropped(inbox.dropped, queue, metrics.clone()));
    let every = state.settings.presence.heartbeat;
    background.spawn(state.presence.clone().heartbeats(hub, every));
    // A gateway without its broker can neither store nor deliver: its
    // sessions are better off on another gateway (`broker_lost`), and after
    // much longer the process is better restarted (`broker_dead`, `/health`
    // 503).
    let gateway = &state.settings.gateway;
    let watch = BrokerWatch {
        connections: vec![state.amqp.clone()],
        channels: state.amqp_channels.to_vec(),
        signals: vec![
            (gateway.broker_lost, signals.broker_lost.clone()),
            (gateway.broker_dead, signals.broker_dead.clone()),
        ],
        stuck: Some((state.settings.amqp.clone(), signals.broker_stuck.clone())),
    };
    background.watch_broker(watch, move |connected| {
        metrics.broker_connected.set(i64::from(connected));
    });
    background.serve(metrics_listener, http::metrics_router(state.clone()));
    background
}

/// Why a gateway stopped, besides `shutdown`.
struct Ended {
    /// Its broker was dead for `gateway.broker_dead_ms` and
    /// `gateway.exit_when_broker_dead` is set.
    died: Arc<AtomicBool>,
    /// Its AMQP client was stuck (`amqp::recovery`).
    stuck: Arc<AtomicBool>,
}

/// Resolves when the gateway must stop: `shutdown`, a stuck AMQP client,
/// or a broker dead for `gateway.broker_dead_ms` when
/// `gateway.exit_when_broker_dead`; `ended` says which. Either way every
/// session hears it at once.
fn stop_signal(
    state: &AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    signals: &Signals,
    ended: Ended,
) -> impl Future<Output = ()> + Send + 'static {
    let mut broker_dead = state.broker_dead.clone();
    let mut broker_stuck = signals.broker_stuck.subscribe();
    let tx = signals.shutdown.clone();
    let exit_when_dead = state.settings.gateway.exit_when_broker_dead;
    async move {
        let dead = async {
            if !exit_when_dead || broker_dead.wait_for(|dead| *dead).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = shutdown => {}
            () = dead => {
                ended.died.store(true, Ordering::Relaxed);
                tracing::error!("the broker has been unreachable for gateway.broker_dead_ms: exiting (gateway.exit_when_broker_dead)");
            }
            Ok(_) = broker_stuck.wait_for(|stuck| *stuck) => {
                ended.stuck.store(true, Ordering::Relaxed);
            }
        }
        let _ = tx.send(true);
    }
}
