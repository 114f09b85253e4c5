//! The end-of-run checks: every acknowledged message reached every other
//! member's connection exactly once, and history holds each message exactly
//! once with gapless seq.

use super::run::{Plan, RunResult};
use futures_util::{StreamExt, stream};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Reads of one history page before its failure counts (one a second).
const HISTORY_ATTEMPTS: u32 = 30;

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
                // A page that cannot be read now (no gateway ready behind
                // the load balancer yet, after a fault) is asked again for a
                // while: only what history says counts, not its absence.
                let mut attempts = 0;
                let page: Result<Value, reqwest::Error> = loop {
                    let page = async {
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
                    attempts += 1;
                    match page {
                        Err(_) if attempts < HISTORY_ATTEMPTS => {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        page => break page,
                    }
                };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::run::{Acked, ReaderResult};
    use hdrhistogram::Histogram;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn histogram() -> Histogram<u64> {
        Histogram::new(3).unwrap_or_else(|e| panic!("{e}"))
    }

    fn reader(user: usize, acked: &[&str], received: &[(&str, u32)]) -> ReaderResult {
        ReaderResult {
            user,
            ack_us: histogram(),
            delivery_us: histogram(),
            acked: acked
                .iter()
                .map(|id| Acked {
                    id: (*id).into(),
                    conversation: 7,
                    client_msg_id: format!("c-{id}"),
                })
                .collect(),
            received: received.iter().map(|(id, n)| ((*id).into(), *n)).collect(),
            errors: BTreeMap::new(),
            last_ack_us: 0,
            last_delivery_us: 0,
        }
    }

    /// Users 0 and 1 in conversation 7; user 0 sent two messages.
    fn check(received_by_1: &[(&str, u32)]) -> Verdict {
        let plan = Plan {
            conversation_of: vec![7, 7],
            members: HashMap::from([(7, vec![0, 1])]),
        };
        let run = RunResult {
            readers: vec![reader(0, &["a", "b"], &[]), reader(1, &[], received_by_1)],
            sent: 2,
            measured_sent: 2,
            lateness_us: histogram(),
            elapsed: Duration::from_secs(1),
        };
        deliveries(&run, &plan)
    }

    #[test]
    fn every_acked_message_delivered_once_passes() {
        let verdict = check(&[("a", 1), ("b", 1)]);
        assert!(verdict.ok(), "{verdict:?}");
        assert_eq!(verdict.acked, 2);
    }

    #[test]
    fn a_missing_delivery_fails_the_run() {
        let verdict = check(&[("a", 1)]);
        assert_eq!(verdict.missing_deliveries, 1);
        assert!(!verdict.ok());
    }

    #[test]
    fn a_duplicate_delivery_fails_the_run() {
        let verdict = check(&[("a", 1), ("b", 2)]);
        assert_eq!(verdict.duplicate_deliveries, 1);
        assert!(!verdict.ok());
    }
}
