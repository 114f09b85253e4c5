//! Building and running a persister: connect, declare, consume, bind the
//! metrics endpoint; then run the pipeline ([`crate::pipeline`]) until
//! shutdown, with the broker watch and the endpoint beside it.

use crate::announcer::Announcer;
use crate::consumer::{Budget, Incoming, PartitionConsumers};
use crate::metrics::Metrics;
use crate::notices::Notices;
use crate::pipeline::Pipeline;
use crate::writer::Writer;
use anyhow::Context;
use chat_shared::amqp::{self, ConfirmedPublisher};
use chat_shared::batch;
use chat_shared::config::Settings;
use chat_shared::schema;
use chat_shared::service::{Background, BrokerWatch};
use chat_shared::tls::{self, Backend};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub struct Persister {
    settings: Settings,
    /// Consumes and acks; publishing has a connection of its own, so a
    /// broker that blocks publishers (memory alarm) cannot hold the acks.
    conn: Arc<lapin::Connection>,
    publish_conn: Arc<lapin::Connection>,
    topo: amqp::Topology,
    consumers: PartitionConsumers,
    writer: Writer,
    announcer: Announcer,
    metrics: Metrics,
    metrics_endpoint: chat_shared::metrics::Endpoint,
    /// Ends its connections' reconnecting when the persister ends.
    retirement: amqp::Retirement,
}

impl Persister {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        tls::check_certificates(&settings, &[Backend::Postgres, Backend::RabbitMq]).await?;
        let db = schema::connect(&settings.database)
            .await
            .context("connecting to Postgres")?;
        let retirement = amqp::Retirement::new();
        let (conn, topo) = amqp::connect_and_declare(&settings.amqp, "persister", &retirement)
            .await
            .context("connecting to RabbitMQ and declaring the topology")?;
        let consumers = PartitionConsumers::start(&conn, &topo, settings.persister.prefetch.get())
            .await
            .context("consuming the persist partitions")?;
        schema::check_bus_settings(&db, &settings.amqp).await?;
        let publish_conn = amqp::connect(
            &settings.amqp,
            "persister publish",
            Duration::from_secs(30),
            &retirement,
        )
        .await
        .context("connecting to RabbitMQ to publish")?;
        let notify = settings.notify.enabled();
        if notify {
            let channel = conn.create_channel().await?;
            amqp::declare_notify_queue(&channel, &topo)
                .await
                .context("declaring the notify queue")?;
            let _ = channel.close(200, "declared".into()).await;
        }
        let notices = if notify {
            let publisher =
                ConfirmedPublisher::new(&publish_conn, settings.amqp.confirm_timeout).await?;
            Some(Notices::spawn(publisher, topo.notify_queue()))
        } else {
            None
        };
        let announcer = Announcer::new(
            ConfirmedPublisher::new(&publish_conn, settings.amqp.confirm_timeout).await?,
            &topo,
            notices,
        );
        let (metrics, registry) = Metrics::new();
        let writer = Writer::new(
            db.get_postgres_connection_pool().clone(),
            metrics.statements.clone(),
            metrics.poisoned.clone(),
            metrics.database_errors.clone(),
        );
        let metrics_endpoint =
            chat_shared::metrics::Endpoint::bind(settings.persister.metrics_listen, registry)
                .await
                .with_context(|| format!("binding {}", settings.persister.metrics_listen))?;
        Ok(Self {
            settings,
            conn: Arc::new(conn),
            publish_conn: Arc::new(publish_conn),
            topo,
            consumers,
            writer,
            announcer,
            metrics,
            metrics_endpoint,
            retirement,
        })
    }

    /// Where `GET /metrics` is served.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_endpoint.local_addr()
    }

    /// Runs until `shutdown` resolves. The batch in hand is finished (stored,
    /// announced, acked) before it returns; whatever was not acked is
    /// redelivered by the broker to the next persister.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            settings,
            conn,
            publish_conn,
            topo,
            consumers,
            writer,
            announcer,
            metrics,
            metrics_endpoint,
            retirement,
        } = self;
        let p = &settings.persister;
        let mut background = Background::new();
        let (dead_tx, dead) = watch::channel(false);
        let (stuck_tx, mut stuck) = watch::channel(false);
        let watch = BrokerWatch {
            connections: vec![conn.clone(), publish_conn.clone()],
            channels: consumers.channels.clone(),
            signals: vec![(p.broker_dead, dead_tx)],
            stuck: Some((settings.amqp.clone(), stuck_tx)),
        };
        background.watch_broker(watch, |_| {});
        let (listener, router) = metrics_endpoint.into_parts(dead);
        background.serve(listener, router);
        let depths = metrics.queue_messages.clone();
        background.spawn(crate::queues::watch(conn.clone(), topo, depths));
        let (tx, rx) = mpsc::channel::<Incoming>(usize::from(p.prefetch.get()));
        let budget = Budget::new(p.max_commands_in_memory);
        // Dead letters are published on the publishing connection: a
        // consuming connection that published would be blocked by a broker
        // alarm, and its acks with it.
        let dead_letter_channel = publish_conn
            .create_channel()
            .await
            .context("a channel for dead letters")?;
        let dead_lettered = metrics.dead_lettered.clone();
        for feeder in consumers.spawn(tx, dead_letter_channel, dead_lettered, budget.clone()) {
            background.adopt(feeder);
        }
        // Stops at `shutdown`, or when the AMQP client is stuck: then the
        // caller starts a fresh persister (`service::restarting`).
        let (stop_tx, stop) = watch::channel(false);
        let stopper = tokio::spawn(async move {
            let stuck = tokio::select! {
                () = shutdown => false,
                Ok(_) = stuck.wait_for(|stuck| *stuck) => true,
            };
            let _ = stop_tx.send(true);
            stuck
        });
        let limits = batch::Limits {
            max: p.batch_max.get(),
            linger_from: p.linger_from,
            linger_until: p.linger_until,
            linger: p.linger,
        };
        let pipeline = Pipeline {
            writer,
            announcer,
            metrics,
            budget,
            limits,
        };
        pipeline.run(rx, stop).await;
        let stuck = stopper.is_finished() && stopper.await.unwrap_or(false);
        background.stop();
        let _ = conn.close(200, "persister shutdown".into()).await;
        let _ = publish_conn.close(200, "persister shutdown".into()).await;
        tracing::info!("persister stopped");
        // From here on, lapin's reconnecting of these connections fails.
        drop(retirement);
        if stuck {
            return Err(amqp::RecoveryStuck.into());
        }
        Ok(())
    }
}
