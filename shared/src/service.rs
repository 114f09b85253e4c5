//! What every service runs beside its own work, written once: a watch on
//! its broker connections that raises signals when they stay down, an
//! internal HTTP endpoint (metrics, health), and whatever else it spawns;
//! all of it stopped together when the service stops (or is dropped); and
//! the `main` of every service binary.

use crate::config::{AmqpSettings, Settings};
use crate::telemetry;
use crate::tls::{self, Backend};
use crate::{amqp, http_server, schema};
use anyhow::Context as _;
use lapin::{Channel, Connection};
use sea_orm::DatabaseConnection;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a scraper may take to send a request head to an internal port.
pub const INTERNAL_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The tasks a service runs beside its own work.
#[derive(Default)]
pub struct Background {
    tasks: Vec<JoinHandle<()>>,
}

/// What the broker watch looks at, and what it raises.
pub struct BrokerWatch {
    /// Connections that must be up.
    pub connections: Vec<Arc<Connection>>,
    /// Channels the service cannot work without.
    pub channels: Vec<Channel>,
    /// Each raised once they have been down this long (lowered when back).
    pub signals: Vec<(Duration, watch::Sender<bool>)>,
    /// Raised for good when they stay down while the broker of these
    /// settings accepts new connections ([`amqp::recovery`]).
    pub stuck: Option<(AmqpSettings, watch::Sender<bool>)>,
}

impl Background {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` until the service stops.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }

    /// Stops `task` with the others.
    pub fn adopt(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Watches the broker ([`amqp::watch_connections`]); `on_tick` hears
    /// every 100 ms whether all is connected.
    pub fn watch_broker(&mut self, watch: BrokerWatch, on_tick: impl FnMut(bool) + Send + 'static) {
        if let Some((settings, stuck)) = watch.stuck {
            self.spawn(amqp::watch_recovery(
                watch.connections.clone(),
                watch.channels.clone(),
                settings,
                stuck,
            ));
        }
        self.spawn(amqp::watch_connections(
            watch.connections,
            watch.channels,
            watch.signals,
            on_tick,
        ));
    }

    /// The broker watch and the internal endpoint of a service that needs
    /// no other signal from them (the persister, presence): `/health` turns
    /// unhealthy once its `connections` or `channels` have been down for
    /// `dead_after`. Returns the signal raised for good when its AMQP client
    /// is stuck ([`amqp::recovery`]): the service then ends with
    /// [`amqp::RecoveryStuck`] and [`restarting`] starts it afresh.
    pub fn watch_and_serve(
        &mut self,
        connections: Vec<Arc<Connection>>,
        channels: Vec<Channel>,
        dead_after: Duration,
        amqp: &AmqpSettings,
        endpoint: crate::metrics::Endpoint,
    ) -> watch::Receiver<bool> {
        let (dead_tx, dead) = watch::channel(false);
        let (stuck_tx, stuck) = watch::channel(false);
        let watch = BrokerWatch {
            connections,
            channels,
            signals: vec![(dead_after, dead_tx)],
            stuck: Some((amqp.clone(), stuck_tx)),
        };
        self.watch_broker(watch, |_| {});
        let (listener, router) = endpoint.into_parts(dead);
        self.serve(listener, router);
        stuck
    }

    /// Serves `router` on `listener` (the internal port: metrics, health)
    /// until the service stops; a request head must arrive within
    /// [`INTERNAL_HEADER_TIMEOUT`].
    pub fn serve(&mut self, listener: TcpListener, router: axum::Router) {
        let forever = std::future::pending::<()>();
        let serving = http_server::serve(
            listener,
            router,
            INTERNAL_HEADER_TIMEOUT,
            Duration::ZERO,
            forever,
        );
        self.spawn(serving);
    }

    /// Stops every task.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What every service does first: refuses a TLS certificate of one of its
/// `backends` that it cannot trust (naming the backend, see
/// [`tls::check_certificates`]), connects to Postgres, and checks that its
/// bus settings agree with those of the services already running.
pub async fn connect_database(
    settings: &Settings,
    backends: &[Backend],
) -> anyhow::Result<DatabaseConnection> {
    tls::check_certificates(settings, backends).await?;
    let db = schema::connect(&settings.database)
        .await
        .context("connecting to Postgres")?;
    schema::check_bus_settings(&db, &settings.amqp).await?;
    Ok(db)
}

/// Runs a service until `shutdown`, starting it afresh, in this process,
/// each time it ends because its AMQP client was stuck
/// ([`amqp::RecoveryStuck`]): `start` builds and runs it until the future it
/// is given resolves. Any other end, an error or `shutdown`, ends this too.
/// `on_restart` hears each fresh start (a test counts them).
pub async fn restarting<S, Fut>(
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut on_restart: impl FnMut(),
    mut start: S,
) -> anyhow::Result<()>
where
    S: FnMut(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let (stop, stopped) = watch::channel(false);
    let relay = tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let outcome = loop {
        let mut until = stopped.clone();
        let outcome = start(Box::pin(async move {
            let _ = until.wait_for(|stop| *stop).await;
        }))
        .await;
        let stopping = *stopped.borrow();
        match outcome {
            Err(e) if e.downcast_ref::<amqp::RecoveryStuck>().is_some() && !stopping => {
                tracing::warn!(error = %e, "starting the service afresh");
                on_restart();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => break other,
        }
    };
    relay.abort();
    outcome
}

/// What every service binary runs: the service that `start` builds from the
/// settings and runs until the future it is given resolves, until SIGTERM
/// or Ctrl-C, started afresh after a stuck AMQP client ([`restarting`]).
pub async fn run_until_signal<S, Fut>(settings: Settings, start: S) -> anyhow::Result<()>
where
    S: Fn(Settings, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    restarting(
        crate::shutdown::signal(),
        || {},
        move |stop| start(settings.clone(), stop),
    )
    .await
}

/// A service binary's whole `main`: load the settings (the profile named by
/// `CHAT_PROFILE`), start the Tokio runtime they size, set up telemetry as
/// `name`, run `service`, and flush the traces it left.
pub fn main<F, Fut>(name: &'static str, service: F) -> anyhow::Result<()>
where
    F: FnOnce(Settings) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let settings = Settings::load().context("loading configuration")?;
    let runtime_settings = settings.runtime.clone();
    let run = async move {
        telemetry::init(&settings.log, &settings.telemetry, name);
        let result = service(settings).await;
        telemetry::flush();
        result
    };
    crate::runtime::run(&runtime_settings, run).context("starting the Tokio runtime")?
}
