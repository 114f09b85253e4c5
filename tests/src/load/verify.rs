//! The end-of-run checks: every acknowledged message reached every other
//! member's connection exactly once, and history holds each message exactly
//! once with gapless seq.

use super::run::{Plan, RunResult};
use futures_util::{StreamExt, stream};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Default)]
pub struct Verdict {
    pub acked: u64,
    pub unanswered: u64,
    pub missing_deliveries: u64,
    pub duplicate_deliveries: u64,
    pub history_checked: bool,
    pub history_problems: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.unanswered == 0
            && self.missing_deliveries == 0
            && self.duplicate_deliveries == 0
            && self.history_problems.is_empty()
    }
}

pub fn deliveries(run: &RunResult, plan: &Plan) -> Verdict {
    let by_user: HashMap<usize, &super::run::ReaderResult> =
        run.readers.iter().map(|r| (r.user, r)).collect();
    let mut verdict = Verdict::default();
    let errors: u64 = run.readers.iter().flat_map(|r| r.errors.values()).sum();
    for reader in &run.readers {
        for acked in &reader.acked {
            verdict.acked += 1;
            let members = plan
                .members
                .get(&acked.conversation)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for member in members.iter().filter(|m| **m != reader.user) {
                match by_user
                    .get(member)
                    .and_then(|r| r.received.get(&acked.id))
                    .copied()
                    .unwrap_or(0)
                {
                    0 => verdict.missing_deliveries += 1,
                    1 => {}
                    n => verdict.duplicate_deliveries += u64::from(n - 1),
                }
            }
        }
    }
    verdict.unanswered = run.sent.saturating_sub(verdict.acked + errors);
    verdict
}

/// Reads every conversation back, page by page (`after_seq`).
pub async fn history(
    verdict: &mut Verdict,
    http: &reqwest::Client,
    url: &str,
    tokens: &[String],
    plan: &Plan,
    run: &RunResult,
) {
    let mut acked: HashMap<i64, HashSet<&str>> = HashMap::new();
    for reader in &run.readers {
        for a in &reader.acked {
            acked
                .entry(a.conversation)
                .or_default()
                .insert(a.id.as_str());
        }
    }
    let acked = &acked;
    let problems: Vec<Vec<String>> = stream::iter(plan.members.iter())
        .map(|(conversation, members)| async move {
            let token = &tokens[members[0]];
            let mut problems = Vec::new();
            let mut next_seq = 1;
            let mut ids = HashSet::new();
            let mut keys = HashSet::new();
            loop {
                let page: Result<Value, _> = async {
                    http.get(format!(
                        "{url}/api/conversations/{conversation}/messages?after_seq={}&limit=200",
                        next_seq - 1
                    ))
                    .bearer_auth(token)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await
                }
                .await;
                let messages = match page {
                    Ok(page) => page["messages"].as_array().cloned().unwrap_or_default(),
                    Err(e) => {
                        problems.push(format!("conversation {conversation}: history failed: {e}"));
                        break;
                    }
                };
                if messages.is_empty() {
                    break;
                }
                for m in &messages {
                    let seq = m["seq"].as_i64().unwrap_or_default();
                    if seq != next_seq {
                        problems.push(format!(
                            "conversation {conversation}: seq {seq} where {next_seq} was due"
                        ));
                    }
                    next_seq = seq + 1;
                    ids.insert(m["id"].as_str().unwrap_or_default().to_owned());
                    let key = (
                        m["sender_id"].as_i64(),
                        m["client_msg_id"].as_str().map(str::to_owned),
                    );
                    if !keys.insert(key) {
                        problems.push(format!(
                            "conversation {conversation}: client_msg_id stored twice at seq {seq}"
                        ));
                    }
                }
            }
            for id in acked.get(conversation).into_iter().flatten() {
                if !ids.contains(*id) {
                    problems.push(format!(
                        "conversation {conversation}: acked message {id} missing from history"
                    ));
                }
            }
            problems
        })
        .buffer_unordered(16)
        .collect()
        .await;
    verdict.history_checked = true;
    verdict.history_problems = problems.into_iter().flatten().collect();
}
