//! A minimal internal endpoint for the services that have no HTTP server of
//! their own (persister, presence): `GET /metrics`, Prometheus text from a
//! prometheus-client registry, and `GET /health`, the liveness probe: 200, or
//! 503 while the service says it is dead (its broker connection down for
//! `broker_dead_ms`). Anything else gets 404. Requests are read up to 8 KiB
//! within 5 s and answered once; the connection is then closed.

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `registry` and the health that `dead` tells on `listener` until
/// the task is dropped.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    dead: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        let is_dead = *dead.borrow();
        tokio::spawn(async move {
            let mut request = vec![0u8; 8192];
            let mut read = 0;
            // A client that sends nothing is dropped after the timeout.
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
                while read < request.len() {
                    match socket.read(&mut request[read..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                    if request[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            const TEXT: &str = "text/plain; charset=utf-8";
            let request = &request[..read];
            let (status, content_type, body) = if request.starts_with(b"GET /metrics ") {
                let mut body = String::new();
                let _ = encode(&mut body, &registry);
                (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                )
            } else if request.starts_with(b"GET /health ") {
                if is_dead {
                    let body = "broker unreachable for broker_dead_ms\n";
                    ("503 Service Unavailable", TEXT, body.to_owned())
                } else {
                    ("200 OK", TEXT, "ok\n".to_owned())
                }
            } else {
                ("404 Not Found", TEXT, "not found\n".to_owned())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}

/// Buckets for durations in seconds: 0.25 ms to about 4 s.
pub fn seconds_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.000_25, 2.0, 15)
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

    /// Serves until the returned task is aborted; `/health` answers 503
    /// while `dead` holds true.
    pub fn spawn(self, dead: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(serve(self.listener, self.registry, dead))
    }
}
