//! The load generator. It speaks only the public contract.
//!
//!   chat-load run  --url http://127.0.0.1:28080 --users 2000 --group-size 2 \
//!                  --rate 1000 --duration 60 --warmup 10 [--skip-history]
//!   chat-load chaos --url http://127.0.0.1:28080 --users 200 --rate 1000 \
//!                  --duration 40 [--drain 60]
//!   chat-load proxy --listen 127.0.0.1:25433 --to 127.0.0.1:25432
//!   chat-load idle --url http://127.0.0.1:28081 --connections 19000 --pid <gateway pid> \
//!                  [--jwt-secret <secret>] [--hold 5]
//!
//! `--url` takes a comma-separated list (users are spread over it). `run`
//! prints a progress line every second, then a table and one JSON line, and
//! exits non-zero if any acked message was lost, duplicated or out of place
//! in history. `chaos` runs users that behave like an app under faults
//! (reconnect, resend with the same client_msg_id, catch up from history)
//! while something is broken on purpose, and prints one JSON line: acked
//! lost, duplicates, seq gaps, retries and how long acks stopped. `proxy` forwards TCP and cuts it on SIGUSR1
//! (live connections dropped, new ones refused) until SIGUSR2. `idle` prints how many connections held and the gateway's
//! resident memory per connection.

use anyhow::{Context, bail};
use chat_tests::cli::Args;
use chat_tests::load::{self, Scenario, idle, report, setup};
use std::io::Write;
use std::time::Duration;

const USAGE: &str = "usage:
  chat-load run  [--url URL[,URL...]] [--users N] [--group-size N] [--rate MSG_PER_S]
                 [--duration S] [--warmup S] [--drain S] [--skip-history]
  chat-load chaos [--url URL[,URL...]] [--users N] [--rate MSG_PER_S] [--duration S] [--drain S]
                  [--jwt-secret S]   (or CHAT_LOAD_JWT_SECRET; without it tokens come from the dev login)
                  [--pinned N]       (the first N users start on the first URL, the others
                                      on the rest: a reconnect storm when that gateway goes)
                  [--id-offset N]    (added to every user id, for two runs at once)
                  [--deliveries-out FILE]  (every live delivery: unix_ms,latency_ms,moved)
  chat-load proxy --listen ADDR --to ADDR    (SIGUSR1 cuts, SIGUSR2 restores)
  chat-load idle [--url URL] [--connections N] [--pid GATEWAY_PID] [--jwt-secret S] [--hold S]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::from_env();
    if args.help() {
        // (not println!: a closed pipe, as in `| head`, is not an error here)
        let _ = writeln!(std::io::stdout(), "{USAGE}");
        return Ok(());
    }
    let urls: Vec<String> = args
        .value("--url")
        .unwrap_or("http://127.0.0.1:28080")
        .split(',')
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect();
    match args.command() {
        Some("run") => {
            args.only(
                &[
                    "--url",
                    "--users",
                    "--group-size",
                    "--rate",
                    "--warmup",
                    "--duration",
                    "--drain",
                ],
                &["--skip-history"],
                USAGE,
            )?;
            let scenario = Scenario {
                urls,
                users: args.number("--users", 2000)?,
                group_size: args.number("--group-size", 2)?,
                rate: args.number("--rate", 1000.0)?,
                warmup_secs: args.number("--warmup", 10.0)?,
                duration_secs: args.number("--duration", 60.0)?,
                drain_secs: args.number("--drain", 30.0)?,
                skip_history: args.flag("--skip-history"),
            };
            run_scenario(scenario).await
        }
        Some("chaos") => {
            args.only(
                &[
                    "--url",
                    "--users",
                    "--rate",
                    "--duration",
                    "--drain",
                    "--jwt-secret",
                    "--pinned",
                    "--id-offset",
                    "--deliveries-out",
                ],
                &[],
                USAGE,
            )?;
            let scenario = load::resilient::ChaosScenario {
                urls,
                users: args.number("--users", 200)?,
                rate: args.number("--rate", 1000.0)?,
                duration_secs: args.number("--duration", 40.0)?,
                drain_secs: args.number("--drain", 60.0)?,
                jwt_secret: args
                    .value("--jwt-secret")
                    .map(str::to_owned)
                    .or_else(|| std::env::var("CHAT_LOAD_JWT_SECRET").ok()),
                pinned: args.number("--pinned", 0)?,
                id_offset: args.number("--id-offset", 0)?,
                deliveries_out: args.value("--deliveries-out").map(Into::into),
                load_started: None,
            };
            if scenario.users < 2 || !scenario.users.is_multiple_of(2) {
                bail!("--users must be an even number");
            }
            let report = load::resilient::execute(&scenario).await?;
            println!("{}", report.summary);
            if report.summary["ok"] != true {
                bail!("verification failed");
            }
            Ok(())
        }
        Some("proxy") => {
            args.only(&["--listen", "--to"], &[], USAGE)?;
            let addr = |flag: &str| -> anyhow::Result<std::net::SocketAddr> {
                args.required(flag, USAGE)?
                    .parse()
                    .with_context(|| format!("{flag} must be host:port"))
            };
            proxy(addr("--listen")?, addr("--to")?).await
        }
        Some("idle") => {
            args.only(
                &["--url", "--connections", "--pid", "--hold", "--jwt-secret"],
                &[],
                USAGE,
            )?;
            let connections: usize = args.number("--connections", 1000)?;
            let pid: Option<u32> = args.value("--pid").and_then(|p| p.parse().ok());
            let hold: f64 = args.number("--hold", 5.0)?;
            let secret = args.value("--jwt-secret");
            idle_connections(&urls[0], connections, pid, secret, hold).await
        }
        _ => {
            bail!("{USAGE}")
        }
    }
}

/// A cuttable TCP proxy until SIGTERM or SIGINT.
async fn proxy(listen: std::net::SocketAddr, to: std::net::SocketAddr) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let proxy = chat_tests::chaos::ChaosProxy::start_on(listen, to)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let (mut cut, mut restore) = (
        signal(SignalKind::user_defined1())?,
        signal(SignalKind::user_defined2())?,
    );
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    eprintln!("proxy {listen} -> {to}");
    loop {
        tokio::select! {
            _ = cut.recv() => { proxy.cut(); eprintln!("proxy {listen}: cut"); }
            _ = restore.recv() => { proxy.restore(); eprintln!("proxy {listen}: restored"); }
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}

async fn run_scenario(scenario: Scenario) -> anyhow::Result<()> {
    let (summary, verdict) = load::execute(&scenario).await?;
    println!("{}", report::table(&summary));
    println!("{summary}");
    if !verdict.ok() {
        bail!("verification failed");
    }
    Ok(())
}

async fn idle_connections(
    url: &str,
    count: usize,
    pid: Option<u32>,
    secret: Option<&str>,
    hold: f64,
) -> anyhow::Result<()> {
    let users = setup::user_ids(count);
    let tokens = setup::tokens_for(&reqwest::Client::new(), url, &users, secret).await?;
    let before = pid.and_then(idle::rss_kib);
    let (sockets, failed) = idle::hold(url, &tokens, 256).await;
    tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    let after = pid.and_then(idle::rss_kib);
    let held = sockets.len();
    let per_connection = match (before, after) {
        (Some(b), Some(a)) if held > 0 => Some((a.saturating_sub(b)) as f64 / held as f64),
        _ => None,
    };
    println!(
        "idle: {held} of {count} connections held ({failed} failed); gateway RSS {} KiB -> {} KiB; {} KiB per connection",
        before.map_or("?".into(), |v| v.to_string()),
        after.map_or("?".into(), |v| v.to_string()),
        per_connection.map_or("?".into(), |v| format!("{v:.2}")),
    );
    println!(
        "{}",
        serde_json::json!({"mode": "idle", "requested": count, "held": held, "failed": failed,
            "rss_before_kib": before, "rss_after_kib": after, "kib_per_connection": per_connection})
    );
    drop(sockets);
    if failed > 0 {
        bail!("{failed} connections failed");
    }
    Ok(())
}
