//! The report: a table for people and one JSON line for scripts.

use super::Scenario;
use super::run::RunResult;
use super::verify::Verdict;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::BTreeMap;

fn merged(
    run: &RunResult,
    pick: impl Fn(&super::run::ReaderResult) -> &Histogram<u64>,
) -> Histogram<u64> {
    let mut all =
        Histogram::new_with_bounds(1, 100_000_000, 3).unwrap_or_else(|e| panic!("histogram: {e}"));
    for reader in &run.readers {
        let _ = all.add(pick(reader));
    }
    all
}

fn percentiles(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| (us as f64 / 1000.0 * 100.0).round() / 100.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p90_ms": ms(h.value_at_quantile(0.9)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// Counted events per second, from the end of the warm-up to the last one
/// (so a server that falls behind shows a lower rate than was offered).
fn rate(count: u64, last_us: Option<u64>, scenario: &Scenario) -> f64 {
    let window =
        (last_us.unwrap_or(0) as f64 / 1e6 - scenario.warmup_secs).max(scenario.duration_secs);
    (count as f64 / window).round()
}

pub fn summary(scenario: &Scenario, run: &RunResult, verdict: &Verdict) -> Value {
    let ack = merged(run, |r| &r.ack_us);
    let delivery = merged(run, |r| &r.delivery_us);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for reader in &run.readers {
        for (code, n) in &reader.errors {
            *errors.entry(code.clone()).or_insert(0) += n;
        }
    }
    json!({
        "scenario": {
            "users": scenario.users,
            "group_size": scenario.group_size,
            "rate": scenario.rate,
            "warmup_s": scenario.warmup_secs,
            "duration_s": scenario.duration_secs,
            "targets": scenario.urls,
        },
        "sent": run.sent,
        "acked": verdict.acked,
        "errors": errors,
        "ack_latency": percentiles(&ack),
        "delivery_latency": percentiles(&delivery),
        "generator_lateness": percentiles(&run.lateness_us),
        "acks_per_s": rate(ack.len(), run.readers.iter().map(|r| r.last_ack_us).max(), scenario),
        "deliveries_per_s": rate(delivery.len(), run.readers.iter().map(|r| r.last_delivery_us).max(), scenario),
        "verification": {
            "ok": verdict.ok(),
            "unanswered": verdict.unanswered,
            "missing_deliveries": verdict.missing_deliveries,
            "duplicate_deliveries": verdict.duplicate_deliveries,
            "history_checked": verdict.history_checked,
            "history_problems": verdict.history_problems.len(),
        },
    })
}

pub fn table(summary: &Value) -> String {
    let row = |name: &str, p: &Value| {
        format!(
            "{name:<18} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            p["count"].to_string(),
            p["p50_ms"].to_string(),
            p["p90_ms"].to_string(),
            p["p99_ms"].to_string(),
            p["p999_ms"].to_string(),
            p["max_ms"].to_string()
        )
    };
    let s = &summary["scenario"];
    let v = &summary["verification"];
    let mut out = format!(
        "users {} | group size {} | offered {} msg/s | {} s (+{} s warm-up)\n",
        s["users"], s["group_size"], s["rate"], s["duration_s"], s["warmup_s"]
    );
    out += &format!(
        "sent {} | acked {} | errors {}\n\n",
        summary["sent"], summary["acked"], summary["errors"]
    );
    out += &format!(
        "{:<18} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    out += &row("send -> ack", &summary["ack_latency"]);
    out += &row("send -> delivery", &summary["delivery_latency"]);
    out += &row("(generator late)", &summary["generator_lateness"]);
    out += &format!(
        "\nthroughput: {} acks/s, {} deliveries/s (measured window)\n",
        summary["acks_per_s"], summary["deliveries_per_s"]
    );
    out += &format!(
        "verification: {} (unanswered {}, missing deliveries {}, duplicate deliveries {}, history {})\n",
        if v["ok"] == true { "OK" } else { "FAILED" },
        v["unanswered"],
        v["missing_deliveries"],
        v["duplicate_deliveries"],
        if v["history_checked"] == true {
            format!("{} problems", v["history_problems"])
        } else {
            "not checked".into()
        },
    );
    out
}
