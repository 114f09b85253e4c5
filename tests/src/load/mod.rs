//! The load generator behind `chat-load`: simulated users that speak only the
//! public contract (dev login, conversations, WebSocket frames, history),
//! sending at an open-loop rate, measuring ack and delivery latency, and
//! checking at the end that nothing was lost or duplicated.
//!
//! - [`setup`]: tokens, conversations, connections;
//! - [`run`]: the open-loop sender and the per-connection readers;
//! - [`verify`]: exactly-once delivery and gapless history;
//! - [`report`]: histograms, the table and the JSON line;
//! - [`idle`]: hold N idle connections and measure the gateway's memory;
//! - [`resilient`]: users that behave like an app under faults (reconnect,
//!   resend, catch up), for the fault runs (`chat-load chaos`);
//! - [`storm`]: what the sessions that had to move (and the users that did
//!   not) saw of a reconnect storm.

pub mod idle;
pub mod report;
pub mod resilient;
pub mod run;
pub mod setup;
pub mod storm;
pub mod verify;

/// What one run does.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Base HTTP URL(s): the load balancer, or a list of gateways (users are
    /// spread over them round-robin).
    pub urls: Vec<String>,
    pub users: usize,
    /// 2 for direct conversations, more for groups.
    pub group_size: usize,
    /// Messages per second offered, whatever the server does.
    pub rate: f64,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    /// How long to wait for stragglers after the last send.
    pub drain_secs: f64,
    /// Skip the history check (it reads every message back).
    pub skip_history: bool,
}

/// One whole `chat-load run`: users, conversations, connections, the
/// open-loop run, then the checks. Returns the summary (the JSON line) and
/// the verdict. Progress goes to stderr.
pub async fn execute(scenario: &Scenario) -> anyhow::Result<(serde_json::Value, verify::Verdict)> {
    if scenario.group_size < 2 || !scenario.users.is_multiple_of(scenario.group_size) {
        anyhow::bail!("--users must be a multiple of --group-size (at least 2)");
    }
    let http = crate::http_client();
    let url = &scenario.urls[0];
    let users = setup::user_ids(scenario.users);
    eprintln!("setup: {} tokens", users.len());
    let tokens = setup::tokens(&http, url, &users).await?;
    let conversations =
        setup::conversations(&http, url, &users, &tokens, scenario.group_size).await?;
    eprintln!("setup: {} conversations; connecting", conversations.len());
    let mut conversation_of = vec![0; users.len()];
    let mut members = std::collections::HashMap::new();
    for (id, group) in &conversations {
        for &m in group {
            conversation_of[m] = *id;
        }
        members.insert(*id, group.clone());
    }
    let plan = run::Plan {
        conversation_of,
        members,
    };
    let sockets = setup::connect_all(scenario, &tokens, 64).await?;
    // Let the conversation announcements and presence changes settle.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    eprintln!(
        "run: {} msg/s for {} s after {} s warm-up",
        scenario.rate, scenario.duration_secs, scenario.warmup_secs
    );
    let result = run::run(scenario, &plan, sockets).await;
    let mut verdict = verify::deliveries(&result, &plan);
    if !scenario.skip_history {
        eprintln!("verify: reading history back");
        verify::history(&mut verdict, &http, url, &tokens, &plan, &result).await;
        for problem in verdict.history_problems.iter().take(10) {
            eprintln!("  {problem}");
        }
    }
    let summary = report::summary(scenario, &result, &verdict);
    Ok((summary, verdict))
}
