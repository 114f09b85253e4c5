//! Building and running the presence service.

use crate::notify::{Notifier, NotifyMetrics};
use crate::online::Online;
use crate::service::{Metrics, Service};
use crate::typing::Typing;
use anyhow::Context;
use chat_shared::amqp::Announcer;
use chat_shared::amqp::{self, ConfirmedPublisher, Inbound, Received, Unreadable};
use chat_shared::bus::PresenceEvent;
use chat_shared::config::Settings;
use chat_shared::directory::Directory;
use chat_shared::presence_state::{self, Keys};
use chat_shared::service::{Background, connect_database};
use chat_shared::tls::Backend;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::future::Future;
use std::time::Duration;

pub struct Presence {
    metrics_endpoint: chat_shared::metrics::Endpoint,
    conn: std::sync::Arc<lapin::Connection>,
    /// To tell a stuck AMQP client from an outage (`amqp::recovery`).
    amqp: chat_shared::config::AmqpSettings,
    /// Ends its connection's reconnecting when the service ends.
    retirement: amqp::Retirement,
    broker_dead: Duration,
    consumer: Inbound,
    /// The channel it consumes on, watched with the connection.
    channel: lapin::Channel,
    service: Service,
    sweep_every: Duration,
    /// The unread webhook, when one is configured: its notifier and the
    /// notify queue's consumer.
    notify: Option<(std::sync::Arc<Notifier>, Inbound)>,
}

impl Presence {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let backends = [Backend::Postgres, Backend::RabbitMq, Backend::Redis];
        let db = connect_database(&settings, &backends).await?;
        let retirement = amqp::Retirement::new();
        let (conn, topo) = amqp::connect_and_declare(&settings.amqp, "presence", &retirement)
            .await
            .context("connecting to RabbitMQ and declaring the topology")?;
        let channel = conn.create_channel().await?;
        channel.basic_qos(500, BasicQosOptions::default()).await?;
        let consumer = channel
            .basic_consume(
                topo.presence_queue().into(),
                "presence".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("consuming the presence queue")?;
        let consumer = Inbound::new(consumer, topo.presence_queue());
        let keys = Keys::new(&settings.redis);
        let (metrics, mut registry) = Metrics::new();
        let notify = if settings.notify.enabled() {
            Some(start_notifier(&settings, &conn, &topo, &db, &keys, &mut registry).await?)
        } else {
            None
        };
        let metrics_endpoint =
            chat_shared::metrics::Endpoint::bind(settings.presence.metrics_listen, registry)
                .await
                .with_context(|| format!("binding {}", settings.presence.metrics_listen))?;
        let service = Service {
            metrics,
            redis: presence_state::connect(&settings.redis).context("the Redis URL")?,
            online: Online::new(keys.clone(), &settings.presence),
            typing: Typing::new(keys.clone(), &settings.presence),
            keys,
            directory: Directory::new(db.get_postgres_connection_pool().clone()),
            announcer: Announcer::new(
                ConfirmedPublisher::new(&conn, settings.amqp.confirm_timeout).await?,
                &topo,
            ),
        };
        let sweep_every = settings.presence.sweep;
        Ok(Self {
            metrics_endpoint,
            conn: std::sync::Arc::new(conn),
            amqp: settings.amqp.clone(),
            retirement,
            broker_dead: settings.presence.broker_dead,
            consumer,
            channel,
            service,
            sweep_every,
            notify,
        })
    }

    /// Where `GET /metrics` and `GET /health` are served.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_endpoint.local_addr()
    }

    /// Runs until `shutdown` resolves. Failures (Redis or Postgres down) are
    /// logged and the event dropped: presence is ephemeral, and the gateways'
    /// next heartbeats rebuild it once the store is back.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            metrics_endpoint,
            conn,
            amqp: amqp_settings,
            retirement,
            broker_dead,
            mut consumer,
            channel,
            mut service,
            sweep_every,
            notify,
        } = self;
        let mut background = Background::new();
        if let Some((notifier, inbound)) = notify {
            background.spawn(crate::notify::schedule(inbound, notifier.clone()));
            background.spawn(crate::notify::deliver(notifier));
            tracing::info!("unread webhook on");
        }
        let mut stuck = background.watch_and_serve(
            vec![conn.clone()],
            vec![channel],
            broker_dead,
            &amqp_settings,
            metrics_endpoint,
        );
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        tracing::info!("presence running");
        let mut stuck_client = false;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                true = async { stuck.wait_for(|stuck| *stuck).await.is_ok() } => {
                    // the caller starts a fresh one (`service::restarting`)
                    stuck_client = true;
                    break;
                }
                _ = sweep.tick() => {
                    let swept = service.sweep().await;
                    service.metrics.redis_up.set(i64::from(swept.is_ok()));
                    if let Err(e) = swept {
                        tracing::warn!(error = %e, "presence sweep failed");
                    }
                }
                delivery = consumer.next::<PresenceEvent>() => {
                    let Some(delivery) = delivery else { break };
                    handle(&mut service, delivery).await;
                }
            }
        }
        background.stop();
        let _ = conn.close(200, "presence shutdown".into()).await;
        tracing::info!("presence stopped");
        drop(retirement);
        if stuck_client {
            return Err(amqp::RecoveryStuck.into());
        }
        Ok(())
    }
}

/// The unread webhook's notifier, consuming the notify queue on a channel
/// of its own.
async fn start_notifier(
    settings: &Settings,
    conn: &lapin::Connection,
    topo: &amqp::Topology,
    db: &sea_orm::DatabaseConnection,
    keys: &Keys,
    registry: &mut prometheus_client::registry::Registry,
) -> anyhow::Result<(std::sync::Arc<Notifier>, Inbound)> {
    let channel = conn.create_channel().await?;
    amqp::declare_notify_queue(&channel, topo)
        .await
        .context("declaring the notify queue")?;
    channel.basic_qos(64, BasicQosOptions::default()).await?;
    let consumer = channel
        .basic_consume(
            topo.notify_queue().into(),
            "notify".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("consuming the notify queue")?;
    let notifier = Notifier::new(
        db.get_postgres_connection_pool().clone(),
        presence_state::connect(&settings.redis).context("the Redis URL")?,
        keys.clone(),
        settings.notify.clone(),
        NotifyMetrics::register(registry),
    )?;
    Ok((
        std::sync::Arc::new(notifier),
        Inbound::new(consumer, topo.notify_queue()),
    ))
}

/// Handles the events of one delivery, then acks it. A failure (Redis or
/// Postgres down) drops the event: the gateways' next heartbeats rebuild
/// what it would have changed.
async fn handle(service: &mut Service, delivery: Result<Received<PresenceEvent>, Unreadable>) {
    let acker = match delivery {
        Ok(received) => {
            for bad in received.undecodable {
                tracing::error!(error = %bad.error, event = %bad.raw, "undecodable presence event dropped");
            }
            for event in received.events {
                if let Err(e) = service.handle(event, received.via.as_ref()).await {
                    tracing::warn!(error = %e, "presence event dropped");
                }
            }
            received.acker
        }
        Err(bad) => {
            tracing::error!(error = %bad.error, "undecodable presence event dropped");
            bad.acker
        }
    };
    let _ = acker.ack(BasicAckOptions::default()).await;
}
