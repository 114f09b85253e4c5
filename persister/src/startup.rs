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
use chat_shared::service::{Background, connect_database};
use chat_shared::tls::Backend;
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
        let db = connect_database(&settings, &[Backend::Postgres, Backend::RabbitMq]).await?;
        let retirement = amqp::Retirement::new();
        let (conn, topo) = amqp::connect_and_declare(&settings.amqp, "persister", &retirement)
            .await
            .context("connecting to RabbitMQ and declaring the topology")?;
        let per_channel = settings.persister.prefetch_per_channel(topo.partitions);
        let consumers = PartitionConsumers::start(&conn, &topo, per_channel)
            .await
            .context("consuming the persist partitions")?;
        let publish_conn = amqp::connect(
            &settings.amqp,
            "persister publish",
            Duration::from_secs(30),
            &retirement,
        )
        .await
        .context("connecting to RabbitMQ to publish")?;
        // The unread webhook's notices, when one is configured.
        let notices = if settings.notify.enabled() {
            let channel = conn.create_channel().await?;
            amqp::declare_notify_queue(&channel, &topo)
                .await
                .context("declaring the notify queue")?;
            let _ = channel.close(200, "declared".into()).await;
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
        let p = &self.settings.persister;
        let mut background = Background::new();
        let mut stuck = background.watch_and_serve(
            vec![self.conn.clone(), self.publish_conn.clone()],
            self.consumers.channels.clone(),
            p.broker_dead,
            &self.settings.amqp,
            self.metrics_endpoint,
        );
        let depths = self.metrics.queue_messages.clone();
        background.spawn(crate::queues::watch(self.conn.clone(), self.topo, depths));
        let (tx, rx) = mpsc::channel::<Incoming>(usize::from(p.prefetch.get()));
        let budget = Budget::new(p.max_inflight_bytes.get());
        // Dead letters are published on the publishing connection: a
        // consuming connection that published would be blocked by a broker
        // alarm, and its acks with it.
        let dead_letter_channel = self
            .publish_conn
            .create_channel()
            .await
            .context("a channel for dead letters")?;
        let dead_lettered = self.metrics.dead_lettered.clone();
        let feeders = self
            .consumers
            .spawn(tx, dead_letter_channel, dead_lettered, budget.clone());
        for feeder in feeders {
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
            writer: self.writer,
            announcer: self.announcer,
            metrics: self.metrics,
            budget,
            limits,
        };
        pipeline.run(rx, stop).await;
        let stuck = stopper.is_finished() && stopper.await.unwrap_or(false);
        background.stop();
        let _ = self.conn.close(200, "persister shutdown".into()).await;
        let _ = self
            .publish_conn
            .close(200, "persister shutdown".into())
            .await;
        tracing::info!("persister stopped");
        // From here on, lapin's reconnecting of these connections fails.
        drop(self.retirement);
        if stuck {
            return Err(amqp::RecoveryStuck.into());
        }
        Ok(())
    }
}
