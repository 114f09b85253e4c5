//! The app-like client mode (`chat-load chaos`): each user behaves as a real
//! app must under faults. On any close it reconnects with a jittered
//! back-off (at once after 1012), fills what it missed from history with
//! `after_seq`, and resends every send still without an ack with the same
//! `client_msg_id`; an `unavailable` or `rate_limited` answer is
//! retried the same way. Like a good app it paces itself: at most a window
//! of sends await their answer at once, halved by each `rate_limited` and
//! grown by one with each ack (as TCP's congestion window), so that after an
//! outage a user's backlog goes out at the rate the server takes instead of
//! all at once again and again. So every send the users make ends acked, and the
//! checks at the end hold the system to "every ack in history exactly once,
//! seq gapless, every member saw every message".

use super::run::{Acked, Plan, ReaderResult, RunResult};
use super::setup::{self, Socket};
use super::storm::{self, Delivery, Move};
use super::verify::{self, Verdict};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// One fault run's load.
#[derive(Debug, Clone)]
pub struct ChaosScenario {
    pub urls: Vec<String>,
    pub users: usize,
    pub rate: f64,
    pub duration_secs: f64,
    /// How long, after the last send, users may take to get every ack.
    pub drain_secs: f64,
    /// The gateways' JWT secret: tokens are signed here with it. `None`:
    /// from the dev login.
    pub jwt_secret: Option<String>,
    /// The first `pinned` users start on the first URL, the others on the
    /// rest (a reconnect storm: every session of one gateway moves when it
    /// goes); 0 spreads every user over every URL.
    pub pinned: usize,
    /// Added to every user id: two runs at once keep apart.
    pub id_offset: i64,
    /// Write every live delivery here, one CSV line each (when it came, Unix
    /// ms; its latency, ms; whether its user moved during the load), for a
    /// storm measured across processes (deploy/faults.sh storm).
    pub deliveries_out: Option<std::path::PathBuf>,
    /// Told when every user is connected and the load begins (a test
    /// breaks something only then).
    pub load_started: Option<Arc<tokio::sync::Notify>>,
}

/// A send not yet acked.
struct Pending {
    client_msg_id: String,
    body: String,
    first_sent_us: u64,
    /// When to send it again after a refusal (`None`: it is on the wire).
    retry_at: Option<Instant>,
    /// Refusals so far: `unavailable` backs off exponentially.
    attempts: u32,
}

/// What one user saw.
struct UserOutcome {
    user: usize,
    acked: Vec<Acked>,
    /// Per acked send: first attempt -> ack (us), and when the ack came.
    waits: Vec<(u64, u64)>,
    /// Distinct message ids seen from others (live or from history).
    seen: HashMap<String, u32>,
    /// Message frames seen again (allowed by the contract after a crash).
    repeats: u64,
    /// Answers that made the user send again, by code.
    retried: BTreeMap<String, u64>,
    /// Answers that are final (bad_request, forbidden...): the send is dropped.
    refused: BTreeMap<String, u64>,
    reconnects: u64,
    failed_connects: u64,
    /// Why connection attempts failed, by a short reason.
    connect_errors: BTreeMap<String, u64>,
    unacked: usize,
    /// Each time this user's session dropped and came back.
    moves: Vec<Move>,
    /// Messages of the other member that came live (not from history).
    deliveries: Vec<Delivery>,
}

#[derive(Default)]
struct Live {
    sent: AtomicU64,
    acked: AtomicU64,
    reconnects: AtomicU64,
    retried: AtomicU64,
    /// Users whose first connection is open.
    connected: AtomicU64,
}

/// The run's figures and the verdict.
pub struct ChaosReport {
    pub summary: Value,
    pub verdict: Verdict,
}

pub async fn execute(scenario: &ChaosScenario) -> anyhow::Result<ChaosReport> {
    let http = crate::http_client();
    let url = &scenario.urls[0];
    let users: Vec<i64> = setup::user_ids(scenario.users)
        .into_iter()
        .map(|id| id + scenario.id_offset)
        .collect();
    let secret = scenario.jwt_secret.as_deref();
    let tokens = setup::tokens_for(&http, url, &users, secret).await?;
    let conversations = setup::conversations(&http, url, &users, &tokens, 2).await?;
    let mut conversation_of = vec![0; users.len()];
    let mut members = HashMap::new();
    for (id, group) in &conversations {
        for &m in group {
            conversation_of[m] = *id;
        }
        members.insert(*id, group.clone());
    }
    let plan = Plan {
        conversation_of,
        members,
    };
    eprintln!(
        "chaos: {} users, {} msg/s for {} s",
        scenario.users, scenario.rate, scenario.duration_secs
    );

    let base = Instant::now();
    // The same moment on the wall clock, to place the summary's times
    // beside a fault's (deploy/faults.sh logs when it stops and starts a
    // server).
    let base_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let live = Arc::new(Live::default());
    let (stop_tx, stop) = watch::channel(false);
    // Users come from many loopback addresses (setup::loopback_source), for
    // their WebSockets and their history reads alike.
    let sources: Vec<std::net::IpAddr> = (0..SOURCES).map(setup::loopback_source).collect();
    let clients = sources
        .iter()
        .map(|&ip| {
            reqwest::Client::builder()
                .local_address(ip)
                .pool_max_idle_per_host(4)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut inboxes = Vec::new();
    let mut tasks = Vec::new();
    for (user, token) in tokens.iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        inboxes.push(tx);
        let client = UserClient {
            user,
            user_id: users[user],
            urls: scenario.urls.clone(),
            url: first_url(scenario, user).to_owned(),
            token: token.clone(),
            conversation: plan.conversation_of[user],
            http: clients[user % SOURCES].clone(),
            source: sources[user % SOURCES],
            base,
            live: live.clone(),
        };
        tasks.push(tokio::spawn(client.run(rx, stop.clone())));
    }

    // The load starts once every user is connected (or after a minute), so
    // that the first connections are not part of what is measured.
    let connecting_until = Instant::now() + Duration::from_secs(60);
    while live.connected.load(Ordering::Relaxed) < users.len() as u64
        && Instant::now() < connecting_until
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "chaos: {} of {} users connected after {:.1} s; sending",
        live.connected.load(Ordering::Relaxed),
        users.len(),
        base.elapsed().as_secs_f64()
    );
    // Open loop: message i is due at i / rate, from user i * stride mod
    // users (every user in turn, but consecutive messages from users far
    // apart, so that the pinned users and the others send alike in any
    // second); its body says when it was due (for the delivery latency).
    let start = Instant::now();
    if let Some(started) = &scenario.load_started {
        started.notify_one();
    }
    let total = (scenario.duration_secs * scenario.rate) as u64;
    let stride = stride(users.len() as u64);
    let mut last_progress = Instant::now();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / scenario.rate);
        tokio::time::sleep_until(due).await;
        let user = ((i % users.len() as u64) * stride % users.len() as u64) as usize;
        let due_us = (due - base).as_micros();
        let _ = inboxes[user].send((format!("f{i}"), format!("chaos {i} {due_us}")));
        live.sent.fetch_add(1, Ordering::Relaxed);
        if last_progress.elapsed() >= Duration::from_secs(1) {
            progress(base, &live);
            last_progress = Instant::now();
        }
    }
    drop(inboxes);
    let drain_until = Instant::now() + Duration::from_secs_f64(scenario.drain_secs);
    while live.acked.load(Ordering::Relaxed) < total && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if last_progress.elapsed() >= Duration::from_secs(1) {
            progress(base, &live);
            last_progress = Instant::now();
        }
    }
    // Let the last deliveries land, then stop the users.
    tokio::time::sleep(Duration::from_millis(500)).await;
    progress(base, &live);
    let _ = stop_tx.send(true);
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await?);
    }

    // The same checks as `run`, on what the users saw.
    let run = as_run_result(&outcomes, total, base.elapsed());
    let mut verdict = verify::deliveries(&run, &plan);
    let url = answering(&http, &scenario.urls).await;
    verify::history(&mut verdict, &http, url, &tokens, &plan, &run).await;
    for problem in verdict.history_problems.iter().take(10) {
        eprintln!("  {problem}");
    }
    let load_start_us = (start - base).as_micros() as u64;
    if let Some(path) = &scenario.deliveries_out {
        write_deliveries(path, &outcomes, base_unix_ms, load_start_us)?;
    }
    let mut summary = summarize(scenario, &outcomes, total, &verdict, load_start_us);
    summary["started_unix_ms"] = json!(base_unix_ms);
    Ok(ChaosReport { summary, verdict })
}

/// A step through `0..users` that visits every user once per round (prime
/// to `users`) and jumps far (about 0.618 of them) from one to the next.
fn stride(users: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let mut step = (users as f64 * 0.618) as u64;
    while step > 1 && gcd(step, users) != 1 {
        step += 1;
    }
    step.max(1)
}

/// Every live delivery as `unix_ms,latency_ms,moved` lines.
fn write_deliveries(
    path: &std::path::Path,
    outcomes: &[UserOutcome],
    base_unix_ms: u64,
    load_start_us: u64,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "unix_ms,latency_ms,moved")?;
    for o in outcomes {
        let moved = o.moves.iter().any(|m| m.closed_us >= load_start_us);
        for d in &o.deliveries {
            let at = base_unix_ms as f64 + d.at_us as f64 / 1e3;
            writeln!(
                out,
                "{at:.1},{:.1},{}",
                d.latency_us as f64 / 1e3,
                u8::from(moved)
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Where `user` connects first: the first URL for the pinned users, the
/// others round-robin over the rest (or over all when none are pinned).
fn first_url(scenario: &ChaosScenario, user: usize) -> &str {
    let urls = &scenario.urls;
    if scenario.pinned == 0 || urls.len() == 1 {
        &urls[user % urls.len()]
    } else if user < scenario.pinned {
        &urls[0]
    } else {
        &urls[1 + user % (urls.len() - 1)]
    }
}

/// The first of `urls` that answers `/health` (a fault may have taken
/// another away), else the first.
async fn answering<'a>(http: &reqwest::Client, urls: &'a [String]) -> &'a str {
    for url in urls {
        let health = http.get(format!("{url}/health")).send().await;
        if health.is_ok_and(|r| r.status().is_success()) {
            return url;
        }
    }
    &urls[0]
}

fn progress(base: Instant, live: &Live) {
    eprintln!(
        "t={:>6.1}s sent={} acked={} retried={} reconnects={}",
        base.elapsed().as_secs_f64(),
        live.sent.load(Ordering::Relaxed),
        live.acked.load(Ordering::Relaxed),
        live.retried.load(Ordering::Relaxed),
        live.reconnects.load(Ordering::Relaxed),
    );
}

struct UserClient {
    user: usize,
    user_id: i64,
    /// Where to connect: the load balancer, or gateways tried in turn.
    urls: Vec<String>,
    url: String,
    token: String,
    conversation: i64,
    http: reqwest::Client,
    /// The address this user connects from.
    source: std::net::IpAddr,
    base: Instant,
    live: Arc<Live>,
}

/// How many client addresses the users share.
const SOURCES: usize = 64;

/// Most sends of one user awaiting their answer at once (the window's
/// ceiling; it starts there), and the least it shrinks to: some sends in
/// flight may wait long for an answer (an ack addressed to a session that
/// is gone comes only as `unavailable` after `gateway.send_timeout_ms`), and
/// a window of one would queue everything behind each of them.
const WINDOW_MAX: usize = 32;
const WINDOW_MIN: usize = 8;

/// Why a connection ended.
enum Dropped {
    /// 1012: the gateway restarts; reconnect at once (elsewhere).
    Restart,
    Other,
    /// The run is over.
    Stopped,
}

struct State {
    pending: BTreeMap<u64, Pending>,
    order_of: HashMap<String, u64>,
    next_order: u64,
    /// Highest seq of the conversation seen so far (gaps are filled up to it).
    highest_seq: i64,
    inbox_open: bool,
    /// After `rate_limited`, nothing is sent before this (the whole user
    /// waits, as the server asked, instead of each send trying on its own).
    hold_until: Instant,
    /// Sends sent on this connection and not yet answered, and how many may
    /// be (WINDOW_MIN..=WINDOW_MAX).
    in_flight: usize,
    window: usize,
    /// This user's id and every client_msg_id it ever sent.
    me: Value,
    own: std::collections::HashSet<String>,
    outcome: UserOutcome,
    /// The session dropped and is not back and caught up yet.
    moving: Option<Move>,
}

impl UserClient {
    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    /// After a failure, the next address (an app that knows several).
    fn rotate(&mut self) {
        if let Some(i) = self.urls.iter().position(|u| *u == self.url) {
            self.url = self.urls[(i + 1) % self.urls.len()].clone();
        }
    }

    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<(String, String)>,
        mut stop: watch::Receiver<bool>,
    ) -> UserOutcome {
        let mut state = State {
            pending: BTreeMap::new(),
            order_of: HashMap::new(),
            next_order: 0,
            highest_seq: 0,
            inbox_open: true,
            hold_until: Instant::now(),
            in_flight: 0,
            window: WINDOW_MAX,
            me: json!(self.user_id),
            own: std::collections::HashSet::new(),
            outcome: UserOutcome {
                user: self.user,
                acked: Vec::new(),
                waits: Vec::new(),
                seen: HashMap::new(),
                repeats: 0,
                retried: BTreeMap::new(),
                refused: BTreeMap::new(),
                reconnects: 0,
                failed_connects: 0,
                connect_errors: BTreeMap::new(),
                unacked: 0,
                moves: Vec::new(),
                deliveries: Vec::new(),
            },
            moving: None,
        };
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        while !*stop.borrow() {
            let attempt_us = self.now_us();
            let socket = match setup::connect_from(&self.url, &self.token, Some(self.source)).await
            {
                Ok((socket, times)) => {
                    if let Some(moving) = &mut state.moving {
                        moving.attempt_us = attempt_us;
                        moving.upgraded_us = attempt_us + times.upgrade.as_micros() as u64;
                        moving.hello_us = moving.upgraded_us + times.hello.as_micros() as u64;
                    }
                    socket
                }
                Err(e) => {
                    state.outcome.failed_connects += 1;
                    *state.outcome.connect_errors.entry(reason(&e)).or_insert(0) += 1;
                    if let Some(moving) = &mut state.moving {
                        moving.failed_attempts += 1;
                    }
                    self.rotate();
                    if pause(jitter(backoff), &mut stop).await {
                        break;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            if first {
                self.live.connected.fetch_add(1, Ordering::Relaxed);
            } else {
                state.outcome.reconnects += 1;
                self.live.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            backoff = Duration::from_millis(100);
            let dropped = self.serve(socket, &mut state, &mut inbox, &mut stop).await;
            if !matches!(dropped, Dropped::Stopped) {
                // A drop before the last one was caught up counts from the first.
                let closed_us = self.now_us();
                state.moving.get_or_insert_with(|| Move {
                    closed_us,
                    ..Move::default()
                });
            }
            match dropped {
                Dropped::Stopped => break,
                Dropped::Restart => self.rotate(),
                Dropped::Other => {
                    self.rotate();
                    if pause(jitter(backoff), &mut stop).await {
                        break;
                    }
                }
            }
        }
        state.outcome.unacked = state.pending.len();
        state.outcome
    }

    /// One connection: catch up, resend, then serve until it drops.
    async fn serve(
        &self,
        socket: Socket,
        state: &mut State,
        inbox: &mut mpsc::UnboundedReceiver<(String, String)>,
        stop: &mut watch::Receiver<bool>,
    ) -> Dropped {
        let (mut sink, mut stream) = socket.split();
        let Ok(pages) = self.catch_up(state).await else {
            return Dropped::Other;
        };
        if let Some(mut moved) = state.moving.take() {
            moved.caught_up_us = self.now_us();
            moved.pages = pages;
            state.outcome.moves.push(moved);
        }
        // Everything unacked goes again (a new connection: no answer to
        // the old one's sends will come), within the window, once the server
        // no longer asks to wait.
        state.in_flight = 0;
        let now = Instant::now();
        let again = state.hold_until.max(now);
        for p in state.pending.values_mut() {
            p.retry_at = Some(again);
        }
        // Only while some send waits for its turn: 12,000 users ticking every
        // 50 ms for nothing took a third of the machine's CPU.
        let mut retry_tick = tokio::time::interval(Duration::from_millis(50));
        retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return Dropped::Stopped,
                next = inbox.recv(), if state.inbox_open => {
                    let Some((client_msg_id, body)) = next else {
                        state.inbox_open = false;
                        continue;
                    };
                    let order = state.next_order;
                    state.next_order += 1;
                    let now = Instant::now();
                    let held = now < state.hold_until;
                    // Sent now unless held or the window is full; else the
                    // retry tick sends it when it may.
                    let send_now = !held && state.in_flight < state.window;
                    let pending = Pending {
                        client_msg_id: client_msg_id.clone(),
                        body,
                        first_sent_us: self.now_us(),
                        retry_at: (!send_now).then_some(state.hold_until.max(now)),
                        attempts: 0,
                    };
                    let frame = self.frame(&pending);
                    state.own.insert(client_msg_id.clone());
                    state.order_of.insert(client_msg_id, order);
                    state.pending.insert(order, pending);
                    if send_now {
                        state.in_flight += 1;
                        if sink.send(WsMessage::Text(frame.into())).await.is_err() {
                            return Dropped::Other;
                        }
                    }
                }
                frame = stream.next() => {
                    let text = match frame {
                        Some(Ok(WsMessage::Text(text))) => text,
                        Some(Ok(WsMessage::Close(close))) => {
                            let restart = close.is_some_and(|c| u16::from(c.code) == 1012);
                            return if restart { Dropped::Restart } else { Dropped::Other };
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => return Dropped::Other,
                    };
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                    if self.on_frame(&frame, state).await.is_err() {
                        return Dropped::Other;
                    }
                }
                _ = retry_tick.tick(), if state.pending.values().any(|p| p.retry_at.is_some()) => {
                    let now = Instant::now();
                    if now < state.hold_until {
                        continue;
                    }
                    // Oldest first, as many as the window takes.
                    let mut due = Vec::new();
                    for p in state.pending.values_mut() {
                        if state.in_flight + due.len() >= state.window {
                            break;
                        }
                        if p.retry_at.is_some_and(|at| at <= now) {
                            p.retry_at = None;
                            due.push(self.frame(p));
                        }
                    }
                    state.in_flight += due.len();
                    for frame in due {
                        if sink.send(WsMessage::Text(frame.into())).await.is_err() {
                            return Dropped::Other;
                        }
                    }
                }
            }
        }
    }

    fn frame(&self, pending: &Pending) -> String {
        json!({
            "type": "send",
            "conversation_id": self.conversation,
            "client_msg_id": pending.client_msg_id,
            "body": pending.body,
        })
        .to_string()
    }

    async fn on_frame(&self, frame: &Value, state: &mut State) -> Result<(), reqwest::Error> {
        match frame["type"].as_str() {
            Some("ack") => {
                let client_msg_id = frame["client_msg_id"].as_str().unwrap_or_default();
                let Some(order) = state.order_of.remove(client_msg_id) else {
                    return Ok(()); // a second answer to a resend
                };
                if let Some(pending) = state.pending.remove(&order) {
                    state.in_flight = state.in_flight.saturating_sub(1);
                    state.window = (state.window + 1).min(WINDOW_MAX);
                    let now = self.now_us();
                    let message = &frame["message"];
                    state.outcome.acked.push(Acked {
                        id: message["id"].as_str().unwrap_or_default().to_owned(),
                        conversation: self.conversation,
                        client_msg_id: client_msg_id.to_owned(),
                    });
                    state
                        .outcome
                        .waits
                        .push((now.saturating_sub(pending.first_sent_us), now));
                    self.live.acked.fetch_add(1, Ordering::Relaxed);
                    self.saw_seq(message["seq"].as_i64().unwrap_or_default(), state)
                        .await?;
                }
            }
            Some("message") => {
                let message = &frame["message"];
                let due_us = message["body"]
                    .as_str()
                    .and_then(|body| body.rsplit(' ').next()?.parse::<u64>().ok());
                if let Some(due_us) = due_us {
                    let at_us = self.now_us();
                    let latency_us = at_us.saturating_sub(due_us);
                    state
                        .outcome
                        .deliveries
                        .push(Delivery { at_us, latency_us });
                }
                self.saw_message(message, state);
                self.saw_seq(message["seq"].as_i64().unwrap_or_default(), state)
                    .await?;
            }
            Some("error") => {
                let code = frame["code"].as_str().unwrap_or("?").to_owned();
                let Some(order) = frame["client_msg_id"]
                    .as_str()
                    .and_then(|id| state.order_of.get(id))
                    .copied()
                else {
                    return Ok(());
                };
                state.in_flight = state.in_flight.saturating_sub(1);
                if code == "rate_limited" {
                    state.window = (state.window / 2).max(WINDOW_MIN);
                }
                if matches!(code.as_str(), "unavailable" | "rate_limited") {
                    let now = Instant::now();
                    let retry_at = match frame["retry_after_ms"].as_u64() {
                        // The server says when: the whole user waits that long.
                        Some(ms) => {
                            state.hold_until = state
                                .hold_until
                                .max(now + jitter(Duration::from_millis(ms)));
                            state.hold_until
                        }
                        // Not now: this send backs off, 200 ms doubling to 5 s.
                        None => {
                            let attempts = state.pending.get(&order).map_or(0, |p| p.attempts);
                            let delay = Duration::from_millis(200 << attempts.min(5))
                                .min(Duration::from_secs(5));
                            now + jitter(delay)
                        }
                    };
                    if let Some(p) = state.pending.get_mut(&order) {
                        p.retry_at = Some(retry_at);
                        p.attempts += 1;
                    }
                    *state.outcome.retried.entry(code).or_insert(0) += 1;
                    self.live.retried.fetch_add(1, Ordering::Relaxed);
                } else {
                    if let Some(p) = state.pending.remove(&order) {
                        state.order_of.remove(&p.client_msg_id);
                    }
                    *state.outcome.refused.entry(code).or_insert(0) += 1;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Counts a message of another member (a repeat is allowed, and dropped).
    fn saw_message(&self, message: &Value, state: &mut State) {
        let id = message["id"].as_str().unwrap_or_default().to_owned();
        if state.outcome.seen.insert(id, 1).is_some() {
            state.outcome.repeats += 1;
        }
    }

    /// A seq past the next one means messages were missed: fill from history.
    async fn saw_seq(&self, seq: i64, state: &mut State) -> Result<(), reqwest::Error> {
        if seq > state.highest_seq + 1 {
            self.catch_up(state).await?;
        }
        state.highest_seq = state.highest_seq.max(seq);
        Ok(())
    }

    /// Reads history after the highest seq seen, page by page; returns how
    /// many pages it read.
    async fn catch_up(&self, state: &mut State) -> Result<u32, reqwest::Error> {
        let mut pages = 0;
        loop {
            pages += 1;
            let page: Value = self
                .http
                .get(format!(
                    "{}/api/conversations/{}/messages?after_seq={}&limit=200",
                    self.url, self.conversation, state.highest_seq
                ))
                .bearer_auth(&self.token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let messages = page["messages"].as_array().cloned().unwrap_or_default();
            if messages.is_empty() {
                return Ok(pages);
            }
            for message in &messages {
                if !self.is_mine(message, state) {
                    self.saw_message(message, state);
                }
                state.highest_seq = state
                    .highest_seq
                    .max(message["seq"].as_i64().unwrap_or_default());
            }
        }
    }

    /// Sent by this user (their own sends are checked through acks).
    fn is_mine(&self, message: &Value, state: &State) -> bool {
        let client_msg_id = message["client_msg_id"].as_str().unwrap_or_default();
        message["sender_id"] == state.me && state.own.contains(client_msg_id)
    }
}

/// A failed connection attempt in a few words: the HTTP status that refused
/// the upgrade, or the error's first words (no addresses, so they group).
fn reason(e: &anyhow::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e.downcast_ref::<WsError>() {
        Some(WsError::Http(response)) => format!("http {}", response.status().as_u16()),
        Some(WsError::Io(io)) => format!("io {:?}", io.kind()),
        Some(other) => other.to_string().chars().take(40).collect(),
        None => e.to_string().chars().take(40).collect(),
    }
}

/// Waits `delay`; `true` if the run stopped meanwhile.
async fn pause(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// `delay` scaled by a factor in [0.5, 1.5), so clients do not reconnect in step.
fn jitter(delay: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    delay.mul_f64(0.5 + f64::from(nanos % 1000) / 1000.0)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 1_000_000_000, 3).unwrap_or_else(|e| panic!("histogram: {e}"))
}

/// The users' view in the shape the `run` checks read.
fn as_run_result(outcomes: &[UserOutcome], total: u64, elapsed: Duration) -> RunResult {
    let readers = outcomes
        .iter()
        .map(|o| {
            let mut ack_us = histogram();
            for (wait, _) in &o.waits {
                let _ = ack_us.record((*wait).max(1));
            }
            ReaderResult {
                user: o.user,
                ack_us,
                delivery_us: histogram(),
                acked: o
                    .acked
                    .iter()
                    .map(|a| Acked {
                        id: a.id.clone(),
                        conversation: a.conversation,
                        client_msg_id: a.client_msg_id.clone(),
                    })
                    .collect(),
                received: o.seen.clone(),
                errors: o.refused.clone(),
                last_ack_us: 0,
                last_delivery_us: 0,
            }
        })
        .collect();
    RunResult {
        readers,
        sent: total,
        measured_sent: total,
        lateness_us: histogram(),
        elapsed,
    }
}

fn summarize(
    scenario: &ChaosScenario,
    outcomes: &[UserOutcome],
    total: u64,
    verdict: &Verdict,
    load_start_us: u64,
) -> Value {
    let mut waits: Vec<(u64, u64)> = outcomes.iter().flat_map(|o| o.waits.clone()).collect();
    waits.sort_by_key(|(_, at)| *at);
    // The longest stretch with no ack at all while sends were being made:
    // how long the fault stopped the service, as users saw it.
    let (gap_from_us, gap_to_us) = waits
        .windows(2)
        .map(|w| (w[0].1, w[1].1))
        .max_by_key(|(from, to)| to.saturating_sub(*from))
        .unwrap_or((0, 0));
    let longest_gap_us = gap_to_us.saturating_sub(gap_from_us);
    let mut wait = histogram();
    for (w, _) in &waits {
        let _ = wait.record((*w).max(1));
    }
    let sum = |f: &dyn Fn(&UserOutcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let mut retried: BTreeMap<String, u64> = BTreeMap::new();
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    let mut connect_errors: BTreeMap<String, u64> = BTreeMap::new();
    for o in outcomes {
        for (why, n) in &o.connect_errors {
            *connect_errors.entry(why.clone()).or_insert(0) += n;
        }
        for (code, n) in &o.retried {
            *retried.entry(code.clone()).or_insert(0) += n;
        }
        for (code, n) in &o.refused {
            *refused.entry(code.clone()).or_insert(0) += n;
        }
    }
    let ms = |us: u64| (us as f64 / 100.0).round() / 10.0;
    let views: Vec<storm::UserView<'_>> = outcomes
        .iter()
        .map(|o| storm::UserView {
            moves: &o.moves,
            deliveries: &o.deliveries,
        })
        .collect();
    json!({
        "scenario": {"users": scenario.users, "pinned": scenario.pinned, "rate": scenario.rate, "duration_s": scenario.duration_secs, "targets": scenario.urls},
        "sent": total,
        "acked": verdict.acked,
        "unacked": sum(&|o| o.unacked as u64),
        "acked_lost": verdict.history_problems.iter().filter(|p| p.contains("missing from history")).count(),
        "duplicates_in_history": verdict.history_problems.iter().filter(|p| p.contains("stored twice")).count(),
        "seq_gaps": verdict.history_problems.iter().filter(|p| p.contains("was due")).count(),
        "missing_deliveries": verdict.missing_deliveries,
        "repeated_frames": sum(&|o| o.repeats),
        "sends_retried": retried,
        "sends_refused": refused,
        "reconnects": sum(&|o| o.reconnects),
        "failed_connects": sum(&|o| o.failed_connects),
        "connect_errors": connect_errors,
        "longest_ack_gap_ms": ms(longest_gap_us),
        // When it began and ended, from the run's start (`started_unix_ms`).
        "longest_ack_gap_from_ms": ms(gap_from_us),
        "longest_ack_gap_to_ms": ms(gap_to_us),
        "send_to_ack_ms": {
            "p50": ms(wait.value_at_quantile(0.5)),
            "p99": ms(wait.value_at_quantile(0.99)),
            "max": ms(wait.max()),
        },
        // Messages of the other member that came live, from when they were
        // due to be sent.
        "delivery_ms": storm::deliveries(&views),
        "storm": storm::summarize(&views, load_start_us),
        "ok": verdict.ok() && outcomes.iter().all(|o| o.unacked == 0),
    })
}

#[cfg(test)]
mod tests {
    use super::stride;

    #[test]
    fn the_stride_visits_every_user_once_per_round() {
        for users in [2, 20, 200, 12_000] {
            let step = stride(users);
            let mut seen: Vec<u64> = (0..users).map(|i| i * step % users).collect();
            seen.sort_unstable();
            assert_eq!(
                seen,
                (0..users).collect::<Vec<_>>(),
                "{users} users, stride {step}"
            );
        }
    }
}
