//! The gateway's TCP accept loop: every connection is counted against its
//! client address from the moment it is accepted, before any request or
//! authentication, so a client that opens sockets and sends nothing still
//! hits `gateway.limits.connections_per_ip`. Connections from a trusted
//! load balancer are not counted here: the client they carry is counted at
//! the WebSocket upgrade, by the address in `X-Forwarded-For`.

use crate::limits::{ConnectionCounter, ConnectionSlot};
use crate::metrics::Metrics;
use axum::serve::Listener;
use chat_shared::net::IpNet;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// What a client over the limit reads before the gateway closes its socket.
const TOO_MANY: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 105\r\n\r\n{\"error\":{\"code\":\"rate_limited\",\"message\":\"too many connections from one address\",\"retry_after_ms\":1000}}";

pub struct CountingListener {
    inner: TcpListener,
    counter: Arc<ConnectionCounter>,
    limit: usize,
    trusted: Vec<IpNet>,
    metrics: Arc<Metrics>,
}

impl CountingListener {
    pub fn new(
        inner: TcpListener,
        counter: Arc<ConnectionCounter>,
        limit: usize,
        trusted: Vec<IpNet>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner,
            counter,
            limit,
            trusted,
            metrics,
        }
    }
}

impl Listener for CountingListener {
    type Io = CountedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Without it small frames wait for Nagle and tails reach 40 ms.
            let _ = stream.set_nodelay(true);
            if self.trusted.iter().any(|net| net.contains(peer.ip())) {
                return (
                    CountedStream {
                        stream,
                        _slot: None,
                    },
                    peer,
                );
            }
            match self.counter.acquire(peer.ip(), self.limit) {
                Some(slot) => {
                    return (
                        CountedStream {
                            stream,
                            _slot: Some(slot),
                        },
                        peer,
                    );
                }
                None => {
                    self.metrics.refused("connections_per_ip");
                    // Best effort: the socket is new, its send buffer empty.
                    let _ = stream.try_write(TOO_MANY);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A TCP stream that holds its client's connection slot until it closes.
pub struct CountedStream {
    stream: TcpStream,
    _slot: Option<ConnectionSlot>,
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::TOO_MANY;

    #[test]
    fn the_refusal_is_a_complete_http_response() {
        let text = std::str::from_utf8(TOO_MANY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "rate_limited");
    }
}
