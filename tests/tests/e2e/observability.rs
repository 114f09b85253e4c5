//! What an SRE looks at is there: a real Prometheus (Debian's package,
//! installed by deploy/services.sh) scrapes every service of a running
//! system with the project's rules loaded, and every query of the
//! dashboard (deploy/observability/dashboard.json) finds data after a short
//! load.

use chat_tests::TestSystem;
use chat_tests::load::{self, Scenario};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;

const PROMETHEUS: &str = "/usr/bin/prometheus";

fn observability_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/observability")
}

/// Every `expr` of the dashboard's panels on the chat services' own metrics
/// (a panel marked `mapmoExternal` reads another exporter: the containers',
/// RabbitMQ's, CloudNativePG's, which this test does not run), with each
/// dashboard variable replaced by its "All" value, as Grafana does.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(observability_dir().join("dashboard.json"))
        .expect("deploy/observability/dashboard.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let variables: Vec<(String, String)> = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|v| {
            // The data source variable has no "All"; the label filters do.
            let all = v["allValue"].as_str()?;
            Some((format!("${}", v["name"].as_str()?), all.to_owned()))
        })
        .collect();
    dashboard["panels"]
        .as_array()
        .expect("the dashboard has panels")
        .iter()
        .filter(|panel| panel["mapmoExternal"] != true)
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| {
            let expr = target["expr"].as_str().expect("a target has an expr");
            variables
                .iter()
                .fold(expr.to_owned(), |q, (name, all)| q.replace(name, all))
        })
        .collect()
}

/// `text` for a URL query value.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A directory removed when the test ends, however it ends.
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn targets(addrs: &[SocketAddr]) -> Value {
    json!(addrs.iter().map(ToString::to_string).collect::<Vec<_>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_finds_data_in_a_real_prometheus() {
    assert!(
        std::path::Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: install it with deploy/services.sh install test (Debian's prometheus package)"
    );
    let system = TestSystem::start().await;
    let dir = std::env::temp_dir().join(format!("chat-prometheus-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    // (Dropped after Prometheus, which is killed on drop.)
    let _dir = RemovedOnDrop(dir.clone());
    // Prometheus reads YAML; JSON is YAML.
    let config = json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [observability_dir().join("rules.yml")],
        "scrape_configs": [
            {"job_name": "chat-gateway", "static_configs": [{"targets": targets(&system.gateway_metrics)}]},
            {"job_name": "chat-persister", "static_configs": [{"targets": targets(&system.persister_metrics)}]},
            {"job_name": "chat-presence", "static_configs": [{"targets": targets(&system.presence_metrics)}]},
        ],
    });
    std::fs::write(dir.join("prometheus.yml"), config.to_string()).unwrap();
    let port = chat_tests::free_port();
    let mut prometheus = tokio::process::Command::new(PROMETHEUS)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Traffic of every kind the dashboard shows: sends, deliveries,
    // presence changes, typing, a refusal, a closed session.
    let scenario = Scenario {
        urls: vec![system.url(0, ""), system.url(1, "")],
        users: 20,
        group_size: 2,
        rate: 100.0,
        warmup_secs: 0.5,
        duration_secs: 3.0,
        drain_secs: 10.0,
        skip_history: true,
    };
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    let binh = system.connect(1, 2).await;
    an.send_json(json!({"type": "typing", "conversation_id": conversation, "state": "start"}))
        .await;
    // More typing frames than a session may send in a second: a refusal.
    for _ in 0..12 {
        an.send_json(json!({"type": "typing", "conversation_id": conversation, "state": "start"}))
            .await;
    }
    binh.close().await;
    let (_, verdict) = load::execute(&scenario).await.unwrap();
    assert!(verdict.ok(), "{verdict:?}");
    for _ in 0..20 {
        an.send_json(json!({"type": "ping"})).await;
    }

    // Every query answers with at least one series, within the deadline.
    let http = reqwest::Client::new();
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{queries:?}");
    let mut missing: Vec<String> = queries.clone();
    chat_tests::eventually_within(3 * chat_tests::DEADLINE, async || {
        let mut still = Vec::new();
        for query in std::mem::take(&mut missing) {
            let answer = http
                .get(format!(
                    "http://127.0.0.1:{port}/api/v1/query?query={}",
                    percent_encoded(&query)
                ))
                .send()
                .await
                .and_then(|r| r.error_for_status());
            let body: Value = match answer {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => Value::Null,
            };
            if body["status"] != "success"
                || body["data"]["result"].as_array().is_none_or(Vec::is_empty)
            {
                still.push(query);
            }
        }
        missing = still;
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("dashboard queries without data: {missing:#?}"))
        }
    })
    .await;
    let _ = prometheus.kill().await;
}
