//! The HTTP/1.1 server under every router (the gateway's public port, and
//! the internal metrics and health port of every service), written out
//! instead of `axum::serve` for the one thing that does not offer: a
//! deadline on reading a request head (`gateway.http_header_timeout_ms` on
//! the public port), so a client that trickles its headers (slow-loris)
//! holds a connection only that long. Each connection carries its peer
//! address as `ConnectInfo`.

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tower_service::Service;

/// Serves `router` on `listener` until `shutdown` resolves; then stops
/// accepting, lets each connection finish its request in flight, and
/// returns once they are done or `grace` has passed. (Upgraded WebSockets
/// are no longer HTTP connections: their sessions watch the shutdown
/// themselves.)
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    header_timeout: Duration,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener<Addr = std::net::SocketAddr>,
{
    let (closing_tx, closing) = watch::channel(false);
    let open = Arc::new(());
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().call(request)
        });
        let mut closing = closing.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let _open = open;
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = closing.wait_for(|closing| *closing) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
    // Stop accepting: the load balancer sends new connections elsewhere.
    drop(listener);
    let _ = closing_tx.send(true);
    let deadline = tokio::time::Instant::now() + grace;
    while Arc::strong_count(&open) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
