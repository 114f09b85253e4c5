//! A TCP proxy a test can cut: every byte between a service and a real server
//! goes through it, and `cut` drops the live connections and closes the
//! port (new connections are refused, as by a stopped server) until
//! `restore` opens it again. `freeze` stops forwarding without closing
//! anything; `strand` closes the service's side of the live connections but
//! keeps the server's open (the server still counts them alive, as after a
//! partition that only one side noticed). `slam` drops the live
//! connections and then accepts each new one only to close it after its
//! first bytes (a server still starting, or a load balancer with no
//! backend). How a test breaks a dependency mid-way without touching the
//! servers other tests share.

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
    links: Vec<Link>,
    /// Server sides of stranded connections, kept open until `cut`.
    stranded: Vec<std::net::TcpStream>,
    /// New connections are closed after their first bytes (`slam`).
    slamming: bool,
}

struct Link {
    task: AbortHandle,
    strand: tokio::sync::oneshot::Sender<()>,
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
                if state.lock().unwrap_or_else(|p| p.into_inner()).slamming {
                    tokio::spawn(close_after_first_bytes(client));
                    continue;
                }
                let frozen = frozen.clone();
                let (strand, stranded) = tokio::sync::oneshot::channel();
                let links = state.clone();
                let link = tokio::spawn(async move {
                    let Some((server, keep)) = connect_keeping(target).await else {
                        return;
                    };
                    let (client_in, client_out) = client.into_split();
                    // Not `into_split`: dropping its write half would shut
                    // the server's side down, and a stranded one must stay.
                    let (server_in, server_out) = tokio::io::split(server);
                    tokio::select! {
                        _ = async {
                            tokio::join!(
                                pump(client_in, server_out, frozen.subscribe()),
                                pump(server_in, client_out, frozen.subscribe()),
                            )
                        } => {}
                        Ok(()) = stranded => {
                            links
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .stranded
                                .push(keep);
                        }
                    }
                });
                state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .links
                    .push(Link {
                        task: link.abort_handle(),
                        strand,
                    });
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
            link.task.abort();
        }
        state.stranded.clear();
    }

    /// Closes the service's side of every live connection, keeping the
    /// server's side open (until `cut`); new connections pass as before.
    pub fn strand(&self) {
        for link in self.lock().links.drain(..) {
            let _ = link.strand.send(());
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

    /// Drops every live connection; from now on each new one is accepted,
    /// and closed once its first bytes arrive (the AMQP protocol header,
    /// say), until `restore`.
    pub fn slam(&self) {
        let mut state = self.lock();
        state.slamming = true;
        for link in state.links.drain(..) {
            link.task.abort();
        }
        state.stranded.clear();
    }

    /// Opens the port again, or forwards again after `slam`.
    pub fn restore(&self) {
        {
            let mut state = self.lock();
            state.slamming = false;
            if state.accept.is_some() {
                return;
            }
        }
        let listener = std::net::TcpListener::bind(self.addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std)
            .unwrap_or_else(|e| panic!("proxy rebind {}: {e}", self.addr));
        self.accept(listener);
    }
}

/// Reads what the client sends first (at most a second's worth), then
/// closes the connection.
async fn close_after_first_bytes(mut client: TcpStream) {
    use tokio::io::AsyncReadExt as _;
    let mut first = [0u8; 64];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.read(&mut first)).await;
}

/// A connection to `target`, and a second handle on its socket that keeps
/// it open when the first is dropped.
async fn connect_keeping(target: SocketAddr) -> Option<(TcpStream, std::net::TcpStream)> {
    let server = TcpStream::connect(target).await.ok()?.into_std().ok()?;
    let keep = server.try_clone().ok()?;
    Some((TcpStream::from_std(server).ok()?, keep))
}

/// Copies `from` to `to` until either side ends, waiting while frozen:
/// while it waits it reads nothing, so the sender's writes back up.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
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
