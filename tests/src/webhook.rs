//! A webhook receiver for the unread-event tests: records every request
//! (headers and body) and answers as told (a status, after a delay).

use http_body_util::BodyExt as _;
use serde_json::Value;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hook {
    pub event_id: String,
    pub signature: String,
    pub body: String,
    pub json: Value,
}

#[derive(Default)]
struct State {
    hooks: Mutex<Vec<Hook>>,
    /// Answer this status to the next `failing` requests (then 200).
    failing: AtomicUsize,
    fail_status: AtomicU16,
    /// Answer after this long.
    delay_ms: AtomicU64,
}

pub struct Receiver {
    pub url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// A receiver on a free port.
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    /// A receiver on `port` (0: any).
    pub async fn start_on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("webhook receiver on {port}: {e}"));
        Self::serving(listener)
    }

    /// A port held for a receiver that is not listening yet: a connection
    /// to it is refused until [`Receiver::start_at`] listens on it (and no
    /// other socket can take it meanwhile).
    pub fn reserve() -> (tokio::net::TcpSocket, u16) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("socket: {e}"));
        socket
            .bind(([127, 0, 0, 1], 0).into())
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let port = socket.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
        (socket, port)
    }

    /// A receiver on a port held by [`Receiver::reserve`].
    pub fn start_at(socket: tokio::net::TcpSocket) -> Self {
        let listener = socket
            .listen(1024)
            .unwrap_or_else(|e| panic!("listen: {e}"));
        Self::serving(listener)
    }

    fn serving(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let state = Arc::new(State::default());
        let task = tokio::spawn(serve(listener, state.clone()));
        Self {
            url: format!("http://{addr}/hooks/chat"),
            state,
            task,
        }
    }

    /// The next `n` requests are answered `status`.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.state.fail_status.store(status, Ordering::SeqCst);
        self.state.failing.store(n, Ordering::SeqCst);
    }

    /// Every request is answered after `delay`.
    pub fn answer_after(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn hooks(&self) -> Vec<Hook> {
        self.state
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(request, &state).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                .await;
        });
    }
}

async fn answer(
    request: hyper::Request<hyper::body::Incoming>,
    state: &State,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (event_id, signature) = (header("x-chat-event-id"), header("x-chat-signature"));
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    state
        .hooks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Hook {
            event_id,
            signature,
            body,
            json,
        });
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let failing = state
        .failing
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if failing {
        state.fail_status.load(Ordering::SeqCst)
    } else {
        200
    };
    let mut response = hyper::Response::new(http_body_util::Full::new(hyper::body::Bytes::new()));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    response
}
