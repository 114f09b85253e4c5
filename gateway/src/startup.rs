//! Building and running a gateway: connect, declare, bind (port 0 allowed),
//! then serve until the shutdown future resolves and drain with a deadline.

use crate::auth::JwtKeys;
use crate::hub::{AmqpBindings, Hub};
use crate::limits::Limits;
use crate::listener::CountingListener;
use crate::metrics::Metrics;
use crate::presence_feed::{self, PresenceFeed};
use crate::sender::Sender;
use crate::state::AppState;
use crate::store::Store;
use crate::ws::context::{SessionContext, Timing};
use crate::ws::frames::Rules;
use crate::{http, inbox, server};
use anyhow::Context;
use chat_shared::amqp::Inbound;
use chat_shared::amqp::{self, ConfirmedPublisher};
use chat_shared::cache;
use chat_shared::config::Settings;
use chat_shared::schema;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub struct Gateway {
    listener: TcpListener,
    metrics_listener: TcpListener,
    state: AppState,
    consumer: Inbound,
    /// What the gateway queue dropped (dead-lettered), to be counted.
    dropped: Inbound,
    shutdown_tx: watch::Sender<bool>,
    broker_lost_tx: watch::Sender<bool>,
    broker_dead_tx: watch::Sender<bool>,
}

impl Gateway {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = schema::connect(&settings.database)
            .await
            .context("connecting to Postgres")?;
        schema::check_bus_settings(&db, &settings.amqp).await?;
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let (conn, topo) =
            amqp::connect_and_declare(&settings.amqp, &format!("gateway {instance}"))
                .await
                .context("connecting to RabbitMQ and declaring the topology")?;
        // One channel declares the gateway's queue, binds it (the hub) and
        // consumes it: lapin's recovery replays a channel's topology in
        // order, so after a lost connection the exclusive queue exists again
        // before its bindings and its consumer are restored.
        let setup = conn.create_channel().await?;
        let queue = topo.gateway_queue(&instance);
        inbox::declare_queue(&setup, &queue, settings.gateway.queue_max_length)
            .await
            .context("declaring the gateway queue")?;
        let consumer = inbox::consume(&setup, &queue).await?;
        let dropped = inbox::consume(&setup, &inbox::dropped_queue(&queue)).await?;

        let metrics = Arc::new(Metrics::new());
        let mut amqp_channels = vec![setup.clone()];
        let bindings = AmqpBindings::new(setup, queue.clone(), &topo);
        let hub = Arc::new(Hub::new(
            Arc::new(bindings),
            topo.route_shards,
            metrics.clone(),
        ));
        let confirm_timeout = settings.amqp.confirm_timeout();
        let publisher = ConfirmedPublisher::new(&conn, confirm_timeout).await?;
        amqp_channels.push(publisher.channel().clone());
        let sender = Sender::spawn(
            publisher,
            &topo,
            Duration::from_millis(settings.gateway.publish_linger_ms),
            settings.gateway.publish_queue,
            hub.clone(),
            metrics.clone(),
        );
        let events = ConfirmedPublisher::new(&conn, confirm_timeout).await?;
        amqp_channels.push(events.channel().clone());
        let (presence, presence_queue) = PresenceFeed::new(&instance);
        let presence_channel = conn.create_channel().await?;
        tokio::spawn(presence_feed::publish(
            presence_queue,
            presence_channel,
            topo.clone(),
        ));
        let redis = cache::connect(&settings.redis).context("the Redis URL")?;
        let cache_keys = cache::Keys::new(&settings.redis);

        let listener = TcpListener::bind(settings.gateway.listen)
            .await
            .with_context(|| format!("binding {}", settings.gateway.listen))?;
        let metrics_listener = TcpListener::bind(settings.gateway.metrics_listen)
            .await
            .with_context(|| format!("binding {}", settings.gateway.metrics_listen))?;
        let (shutdown_tx, shutdown) = watch::channel(false);
        let (broker_lost_tx, broker_lost) = watch::channel(false);
        let (broker_dead_tx, broker_dead) = watch::channel(false);
        let store = Store::new(db.get_postgres_connection_pool().clone());
        let limits = Arc::new(Limits::new(&settings.gateway.limits));
        let queue: Arc<str> = queue.into();
        let sessions = Arc::new(SessionContext {
            rules: Rules::from_settings(&settings.gateway),
            timing: Timing::from_settings(&settings.gateway),
            sender: sender.clone(),
            members: Arc::new(store.clone()),
            presence: presence.clone(),
            limits: limits.clone(),
            metrics: metrics.clone(),
            reply_to: queue.clone(),
            shutdown: shutdown.clone(),
            broker_lost: broker_lost.clone(),
        });
        let state = AppState {
            keys: JwtKeys::from_settings(&settings.auth).context("auth.jwt_secret")?,
            limits,
            settings: Arc::new(settings),
            store,
            sessions,
            sender,
            events,
            hub,
            metrics,
            amqp: Arc::new(conn),
            amqp_channels: amqp_channels.into(),
            presence,
            redis,
            cache_keys,
            topo,
            queue,
            shutdown,
            broker_lost,
            broker_dead,
        };
        Ok(Self {
            listener,
            metrics_listener,
            state,
            consumer,
            dropped,
            shutdown_tx,
            broker_lost_tx,
            broker_dead_tx,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Where `GET /metrics` is served (`gateway.metrics_listen`).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` resolves, then closes every session with
    /// 1012 and gives them `gateway.shutdown_grace_ms` to finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            metrics_listener,
            state,
            consumer,
            dropped,
            shutdown_tx,
            broker_lost_tx,
            broker_dead_tx,
        } = self;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, queue = %state.queue, "gateway serving");
        let inbox = tokio::spawn(inbox::run(
            consumer,
            state.hub.clone(),
            state.metrics.clone(),
        ));
        let drops = tokio::spawn(inbox::count_dropped(
            dropped,
            state.queue.to_string(),
            state.metrics.clone(),
        ));
        let heartbeats = tokio::spawn(state.presence.clone().heartbeats(
            state.hub.clone(),
            Duration::from_millis(state.settings.presence.heartbeat_ms),
        ));
        state
            .metrics
            .connections_max
            .set(state.settings.gateway.max_connections as i64);
        // A gateway without its broker can neither store nor deliver: its
        // sessions are better off on another gateway (`broker_lost`), and
        // after much longer the process is better restarted (`broker_dead`,
        // `/health` 503).
        let metrics = state.metrics.clone();
        let broker_watch = tokio::spawn(amqp::watch_connections(
            vec![state.amqp.clone()],
            state.amqp_channels.to_vec(),
            vec![
                (
                    Duration::from_millis(state.settings.gateway.broker_lost_ms),
                    broker_lost_tx,
                ),
                (
                    Duration::from_millis(state.settings.gateway.broker_dead_ms),
                    broker_dead_tx,
                ),
            ],
            move |connected| {
                metrics.broker_connected.set(i64::from(connected));
            },
        ));
        let metrics = tokio::spawn(
            axum::serve(metrics_listener, http::metrics_router(state.clone())).into_future(),
        );
        let gateway = &state.settings.gateway;
        let listener = CountingListener::new(
            listener,
            state.limits.connections.clone(),
            state.settings.gateway.limits.connections_per_ip,
            gateway.trusted_proxies.clone(),
            state.metrics.clone(),
        );
        let header_timeout = Duration::from_millis(gateway.http_header_timeout_ms);
        let grace = Duration::from_millis(gateway.shutdown_grace_ms);
        let hub = state.hub.clone();
        let amqp = state.amqp.clone();
        let tx = shutdown_tx.clone();
        let mut broker_dead = state.broker_dead.clone();
        let exit_when_dead = state.settings.gateway.exit_when_broker_dead;
        // Set when the gateway stops because its broker is dead, whatever
        // the broker does during the drain: the exit status says why.
        let died = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let died_flag = died.clone();
        server::serve(
            listener,
            http::router(state),
            header_timeout,
            grace,
            async move {
                let dead = async {
                    if !exit_when_dead || broker_dead.wait_for(|dead| *dead).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    () = shutdown => {}
                    () = dead => {
                        died_flag.store(true, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!("the broker has been unreachable for gateway.broker_dead_ms: exiting (gateway.exit_when_broker_dead)");
                    }
                }
                let _ = tx.send(true);
            },
        )
        .await;
        let _ = shutdown_tx.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        while hub.session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = amqp.close(200, "gateway shutdown".into()).await;
        inbox.abort();
        drops.abort();
        heartbeats.abort();
        metrics.abort();
        broker_watch.abort();
        tracing::info!(%addr, "gateway stopped");
        if died.load(std::sync::atomic::Ordering::Relaxed) {
            anyhow::bail!("the broker was unreachable for gateway.broker_dead_ms");
        }
        Ok(())
    }
}
