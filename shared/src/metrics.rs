//! The internal endpoint of the services that have no HTTP server of their
//! own (persister, presence), served by axum: `GET /metrics`, Prometheus
//! text from a prometheus-client registry, and `GET /health`, the liveness
//! probe: 200, or 503 while the service says it is dead (its broker
//! connection down for `broker_dead_ms`). Another path gets 404, another
//! method 405. Served by [`crate::http_server`] ([`crate::service::Background::serve`]).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The latency SLO's threshold (docs/observability.md, "SLOs"): a bucket
/// bound of its own, so the SLI counts exactly the sends acked within it.
pub const SLO_SECONDS: f64 = 0.1;

/// Buckets for durations in seconds: 0.25 ms doubling to about 4 s, and
/// [`SLO_SECONDS`] among them.
pub fn seconds_buckets() -> impl Iterator<Item = f64> {
    let doubling = prometheus_client::metrics::histogram::exponential_buckets(0.000_25, 2.0, 15);
    let (below, above): (Vec<f64>, Vec<f64>) = doubling.partition(|b| *b < SLO_SECONDS);
    below
        .into_iter()
        .chain(std::iter::once(SLO_SECONDS))
        .chain(above)
}

/// The content type of Prometheus's OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct Endpoints {
    registry: Arc<Registry>,
    dead: watch::Receiver<bool>,
}

/// `/metrics` from `registry`, and `/health` answering 503 while `dead`
/// holds true.
pub fn router(registry: Arc<Registry>, dead: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(Endpoints { registry, dead })
}

async fn metrics(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    let mut body = String::new();
    let _ = encode(&mut body, &endpoints.registry);
    ([(header::CONTENT_TYPE, OPENMETRICS)], body)
}

async fn health(State(endpoints): State<Endpoints>) -> (StatusCode, &'static str) {
    if *endpoints.dead.borrow() {
        let body = "broker unreachable for broker_dead_ms\n";
        (StatusCode::SERVICE_UNAVAILABLE, body)
    } else {
        (StatusCode::OK, "ok\n")
    }
}

/// A bound `/metrics` endpoint, served once the service runs.
pub struct Endpoint {
    listener: TcpListener,
    registry: Arc<Registry>,
}

impl Endpoint {
    /// Binds `addr` (port 0 allowed) before the service starts.
    pub async fn bind(addr: std::net::SocketAddr, registry: Registry) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            registry: Arc::new(registry),
        })
    }

    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The listener and what to serve on it; `/health` answers 503 while
    /// `dead` holds true.
    pub fn into_parts(self, dead: watch::Receiver<bool>) -> (TcpListener, Router) {
        (self.listener, router(self.registry, dead))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slo_threshold_is_a_bucket_bound_among_the_doubling_ones() {
        let buckets: Vec<f64> = seconds_buckets().collect();
        assert_eq!(buckets.len(), 16);
        assert!(buckets.contains(&SLO_SECONDS));
        assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{buckets:?}");
        assert_eq!((buckets[0], buckets[15]), (0.000_25, 4.096));
    }
}
