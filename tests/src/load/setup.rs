//! Getting ready: a token per user (the dev login), conversations (pairs or
//! groups of consecutive users), and one WebSocket per user.

use super::Scenario;
use anyhow::{Context, bail};
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Users of this run: ids unique per run, so runs never share conversations.
pub fn user_ids(count: usize) -> Vec<i64> {
    let base = (chrono::Utc::now().timestamp() % 1_000_000) * 100_000 + 1;
    (0..count as i64).map(|i| base + i).collect()
}

/// Tokens for `users`: signed here with the gateways' JWT secret when it is
/// given (a production gateway has no dev login), else from the dev login.
pub async fn tokens_for(
    http: &reqwest::Client,
    url: &str,
    users: &[i64],
    jwt_secret: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let Some(secret) = jwt_secret else {
        return tokens(http, url, users).await;
    };
    let keys = chat_gateway::auth::JwtKeys::new(secret)?;
    let exp = chat_gateway::auth::unix_now() + 3600;
    users
        .iter()
        .map(|u| chat_shared::ids::UserId::new(*u).map(|u| keys.issue(u, None, exp)))
        .collect::<Result<_, _>>()
        .map_err(Into::into)
}

/// Tokens for `users` from the dev login (`auth.dev_login`).
pub async fn tokens(
    http: &reqwest::Client,
    url: &str,
    users: &[i64],
) -> anyhow::Result<Vec<String>> {
    let results: Vec<anyhow::Result<String>> = stream::iter(users.iter().copied())
        .map(|user| async move {
            let answer: Value = http
                .post(format!("{url}/api/dev/token"))
                .json(&json!({"user_id": user}))
                .send()
                .await?
                .error_for_status()
                .context("dev login (is auth.dev_login on?)")?
                .json()
                .await?;
            answer["token"]
                .as_str()
                .map(str::to_owned)
                .context("no token")
        })
        .buffered(32)
        .collect()
        .await;
    results.into_iter().collect()
}

/// One conversation per `group_size` consecutive users. Returns, per
/// conversation, its id and member indexes.
pub async fn conversations(
    http: &reqwest::Client,
    url: &str,
    users: &[i64],
    tokens: &[String],
    group_size: usize,
) -> anyhow::Result<Vec<(i64, Vec<usize>)>> {
    let groups: Vec<Vec<usize>> = (0..users.len())
        .collect::<Vec<_>>()
        .chunks(group_size)
        .map(<[usize]>::to_vec)
        .collect();
    let results: Vec<anyhow::Result<(i64, Vec<usize>)>> = stream::iter(groups)
        .map(|members| async move {
            if members.len() < 2 {
                bail!("{} users do not split into groups of {group_size}", users.len());
            }
            let creator = members[0];
            let body = if group_size == 2 {
                json!({"peer_id": users[members[1]]})
            } else {
                json!({"title": "load", "member_ids": members[1..].iter().map(|&m| users[m]).collect::<Vec<_>>()})
            };
            let answer: Value = http
                .post(format!("{url}/api/conversations"))
                .bearer_auth(&tokens[creator])
                .json(&body)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            Ok((answer["id"].as_i64().context("no conversation id")?, members))
        })
        .buffered(32)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Opens an authenticated WebSocket and waits for `hello`.
pub async fn connect(url: &str, token: &str) -> anyhow::Result<Socket> {
    Ok(connect_from(url, token, None).await?.0)
}

/// How long a connection took to open: the WebSocket upgrade (TCP, the
/// HTTP exchange, the gateway's checks and the header token), then the
/// session's set-up until its `hello` (the hub's registration, the shard's
/// binding on the broker).
#[derive(Debug, Clone, Copy)]
pub struct ConnectTimes {
    pub upgrade: std::time::Duration,
    pub hello: std::time::Duration,
}

/// A client address on the loopback network, one of many: all of
/// 127.0.0.0/8 reaches this host, and thousands of connections from one
/// address to one port made the kernel search its ports on every connect
/// (`__inet_hash_connect`: two thirds of the load generator's CPU in a
/// reconnect storm). Real clients come from many addresses anyway.
pub fn loopback_source(i: usize) -> std::net::IpAddr {
    std::net::Ipv4Addr::new(127, 1, (i / 250 % 250) as u8, (i % 250 + 1) as u8).into()
}

/// [`connect`] from the address `from` (when the gateway is on the
/// loopback network; elsewhere it is ignored), and how long its two steps
/// took.
pub async fn connect_from(
    url: &str,
    token: &str,
    from: Option<std::net::IpAddr>,
) -> anyhow::Result<(Socket, ConnectTimes)> {
    let start = tokio::time::Instant::now();
    let mut request = format!("{}/ws", url.replacen("http", "ws", 1)).into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    // tungstenite zeroes its whole read buffer (128 KiB by default) before
    // every read: with thousands of sockets that memset alone was a third of
    // the generator's CPU at 8,000 msg/s. Frames here are small; 4 KiB grows when needed.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let host = request.uri().host().unwrap_or("127.0.0.1").to_owned();
    let port = request.uri().port_u16().unwrap_or(80);
    let target = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .context("the gateway's address does not resolve")?;
    let stream = match from {
        Some(from) if target.ip().is_loopback() && from.is_ipv4() == target.is_ipv4() => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(std::net::SocketAddr::new(from, 0))?;
            socket.connect(target).await?
        }
        _ => tokio::net::TcpStream::connect(target).await?,
    };
    stream.set_nodelay(true)?;
    let (mut socket, _) = tokio_tungstenite::client_async_with_config(
        request,
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await?;
    let upgraded = tokio::time::Instant::now();
    while let Some(frame) = socket.next().await {
        if let tokio_tungstenite::tungstenite::Message::Text(text) = frame? {
            let hello: Value = serde_json::from_str(&text)?;
            if hello["type"] == "hello" {
                let times = ConnectTimes {
                    upgrade: upgraded - start,
                    hello: upgraded.elapsed(),
                };
                return Ok((socket, times));
            }
            bail!("expected hello, got {text}");
        }
    }
    bail!("closed before hello")
}

/// Connects every user, `parallel` at a time, spread over `urls`.
pub async fn connect_all(
    scenario: &Scenario,
    tokens: &[String],
    parallel: usize,
) -> anyhow::Result<Vec<Socket>> {
    let results: Vec<anyhow::Result<Socket>> = stream::iter(tokens.iter().enumerate())
        .map(|(i, token)| {
            let url = scenario.urls[i % scenario.urls.len()].clone();
            async move { connect(&url, token).await }
        })
        .buffered(parallel)
        .collect()
        .await;
    results.into_iter().collect()
}
