//! Idle mode: hold N authenticated connections and report how many
//! succeeded and what they cost the gateway in resident memory.

use super::setup;
use futures_util::{StreamExt, stream};

/// Resident memory of a process, from /proc (KiB).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Opens one connection per token against `url`, `parallel` at a time.
pub async fn hold(url: &str, tokens: &[String], parallel: usize) -> (Vec<setup::Socket>, usize) {
    let results: Vec<anyhow::Result<setup::Socket>> = stream::iter(tokens.iter())
        .map(|token| async move { setup::connect(url, token).await })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        eprintln!("first connection failure: {e:#}");
    }
    (results.into_iter().filter_map(Result::ok).collect(), failed)
}
