//! A TCP proxy a test can cut: every byte between a service and a real server
//! goes through it, and `cut` drops the live connections and closes the
//! port (new connections are refused, as by a stopped server) until
//! `restore` opens it again. How a test breaks a dependency mid-way without
//! touching the servers other tests share.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub struct ChaosProxy {
    pub addr: SocketAddr,
    target: SocketAddr,
    state: Arc<Mutex<State>>,
    /// While true, live connections stay open but nothing is forwarded
    /// (a network that drops packets without a reset, a broker that stopped
    /// reading): the peers' writes pile up until their buffers are full.
    frozen: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    /// The accept loop while the port is open.
    accept: Option<AbortHandle>,
    links: Vec<AbortHandle>,
}

impl ChaosProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("proxy bind: {e}"));
        Self::serve(listener, target)
    }

    /// A proxy on `listen` (for `chat-load proxy`).
    pub async fn start_on(listen: SocketAddr, target: SocketAddr) -> std::io::Result<Self> {
        Ok(Self::serve(TcpListener::bind(listen).await?, target))
    }

    fn serve(listener: TcpListener, target: SocketAddr) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy addr: {e}"));
        let proxy = Self {
            addr,
            target,
            state: Arc::default(),
            frozen: tokio::sync::watch::Sender::new(false),
        };
        proxy.accept(listener);
        proxy
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn accept(&self, listener: TcpListener) {
        let (state, target) = (self.state.clone(), self.target);
        let frozen = self.frozen.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let frozen = frozen.clone();
                let link = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        let (client_in, client_out) = client.into_split();
                        let (server_in, server_out) = server.into_split();
                        tokio::join!(
                            pump(client_in, server_out, frozen.subscribe()),
                            pump(server_in, client_out, frozen.subscribe()),
                        );
                    }
                });
                state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .links
                    .push(link.abort_handle());
            }
        })
        .abort_handle();
        self.lock().accept = Some(accept);
    }

    /// Drops every live connection and closes the port.
    pub fn cut(&self) {
        let mut state = self.lock();
        if let Some(accept) = state.accept.take() {
            accept.abort();
        }
        for link in state.links.drain(..) {
            link.abort();
        }
    }

    /// Stops forwarding on every connection, old and new, without closing
    /// any: [`ChaosProxy::thaw`] resumes where it stopped.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// Opens the port again (a no-op while it is open).
    pub fn restore(&self) {
        if self.lock().accept.is_some() {
            return;
        }
        let listener = std::net::TcpListener::bind(self.addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std)
            .unwrap_or_else(|e| panic!("proxy rebind {}: {e}", self.addr));
        self.accept(listener);
    }
}

/// Copies `from` to `to` until either side ends, waiting while frozen:
/// while it waits it reads nothing, so the sender's writes back up.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
