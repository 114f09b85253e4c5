//! Connecting to the broker (with lapin's recovery), declaring the whole
//! topology, and watching the connection for as long as a service runs.

use super::declare::{declare_fanout, declare_persist_path, declare_presence_path};
use super::topology::Topology;
use crate::config::AmqpSettings;
use lapin::tcp::{AMQPUriTcpExt, OwnedTLSConfig};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Owned by the service whose connections it was given to: once it is
/// dropped (the service ended), those connections never connect again.
/// lapin's recovery runs on a thread of its own that nothing else stops,
/// so a connection left behind by a service started afresh
/// ([`super::recovery`]) could otherwise come back later, consumers and
/// all, and take deliveries that nobody handles.
#[derive(Debug, Default)]
pub struct Retirement {
    retired: Arc<AtomicBool>,
}

impl Retirement {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Drop for Retirement {
    fn drop(&mut self) {
        self.retired.store(true, Ordering::Relaxed);
    }
}

/// Connects with lapin's automatic recovery (connection, channels, topology)
/// switched on, retrying the first connection until `deadline` passes. The
/// connection (and lapin's reconnections) stop connecting once
/// `retirement` is dropped.
pub async fn connect(
    settings: &AmqpSettings,
    name: &str,
    deadline: Duration,
    retirement: &Retirement,
) -> Result<Connection, lapin::Error> {
    // the CA and client files, read once for every try
    let tls = crate::tls::amqp_config(settings).map_err(std::io::Error::other)?;
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        // Recovery retries after 1 s, then every 2 s, for ever: lapin's
        // default (1 s doubling to 60 s, 16 tries) left a service 15-30 s
        // behind a 10 s broker restart, and gave up for good after a quarter
        // of an hour. (A first retry after 100 ms was tried: lapin then
        // sometimes never recovered from a short cut, stuck reconnecting.)
        let props = ConnectionProperties::default()
            .with_connection_name(name.into())
            .configure_backoff(|backoff| {
                backoff
                    .with_min_delay(Duration::from_secs(1))
                    .with_max_delay(Duration::from_secs(2))
                    .with_jitter()
                    .without_max_times()
            })
            .enable_auto_recover();
        match open(
            &settings.url,
            props,
            tls.clone(),
            retirement.retired.clone(),
        )
        .await
        {
            Ok(conn) => return Ok(conn),
            // a setting to fix, not an outage to wait out
            Err(e) if crate::tls::certificate_refusal(&e).is_some() => return Err(e),
            Err(e) if started.elapsed() + delay < deadline => {
                tracing::warn!(error = %e, "amqp connect failed, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens a connection whose every TCP connect (the first and lapin's
/// reconnections) is refused once `retired` is set.
async fn open(
    url: &str,
    props: ConnectionProperties,
    tls: OwnedTLSConfig,
    retired: Arc<AtomicBool>,
) -> Result<Connection, lapin::Error> {
    let uri: AMQPUri = url
        .parse()
        .map_err(|e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let runtime = lapin::runtime::default_runtime()?;
    let tcp = async move |uri: AMQPUri, runtime| {
        if retired.load(Ordering::Relaxed) {
            let why = "the service that made this connection has ended (started afresh)";
            return Err(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, why).into());
        }
        uri.connect_with_config_async(tls.as_ref(), &runtime)
            .await
            .map_err(lapin::Error::from)
    };
    Connection::connector(uri, runtime, tcp, props).await
}

/// Whether every connection and channel is up.
pub(crate) fn all_connected(conns: &[std::sync::Arc<Connection>], channels: &[Channel]) -> bool {
    conns.iter().all(|conn| conn.status().connected())
        && channels.iter().all(|channel| channel.status().connected())
}

/// Watches broker connections and the channels a service cannot work
/// without, every 100 ms, for as long as it runs. Each `(after, signal)` is
/// raised once any of `conns` or `channels` has been down `after` (and
/// lowered when all are back): a service without its broker can do nothing
/// useful, and one whose AMQP client stays stuck reconnecting (seen with
/// lapin after an interrupted handshake, docs/reliability.md), or whose
/// channel the broker closed while recovering it (a gateway's exclusive
/// queue still held by its old connection: `RESOURCE_LOCKED`), is better
/// restarted. `on_tick` hears, each time, whether all are connected.
pub async fn watch_connections(
    conns: Vec<std::sync::Arc<Connection>>,
    channels: Vec<Channel>,
    signals: Vec<(Duration, tokio::sync::watch::Sender<bool>)>,
    mut on_tick: impl FnMut(bool),
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down_since: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        let connected = all_connected(&conns, &channels);
        on_tick(connected);
        if connected {
            down_since = None;
        } else {
            down_since.get_or_insert(now);
        }
        let down_for = down_since.map_or(Duration::ZERO, |since| now.duration_since(since));
        for (after, signal) in &signals {
            let down = !connected && down_for >= *after;
            if down != *signal.borrow() {
                if down {
                    tracing::warn!(
                        down_ms = down_for.as_millis() as u64,
                        after_ms = after.as_millis() as u64,
                        "broker unreachable"
                    );
                } else {
                    tracing::info!(
                        after_ms = after.as_millis() as u64,
                        "broker reachable again"
                    );
                }
                let _ = signal.send(down);
            }
        }
    }
}

/// Connects as `name` and declares the whole topology. Every service
/// declares all of it (idempotent), so any of them can start first.
pub async fn connect_and_declare(
    settings: &AmqpSettings,
    name: &str,
    retirement: &Retirement,
) -> Result<(Connection, Topology), lapin::Error> {
    let conn = connect(settings, name, Duration::from_secs(30), retirement).await?;
    let topo = Topology::new(settings);
    let channel = conn.create_channel().await?;
    declare_persist_path(&channel, &topo).await?;
    declare_fanout(&channel, &topo).await?;
    declare_presence_path(&channel, &topo).await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok((conn, topo))
}
