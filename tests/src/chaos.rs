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
        };
        proxy.accept(listener);
        proxy
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn accept(&self, listener: TcpListener) {
        let (state, target) = (self.state.clone(), self.target);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
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

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
