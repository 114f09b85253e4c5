//! `chat-traces`: the local stand-in for a trace viewer (Debian 12 packages
//! neither an OpenTelemetry collector nor Jaeger). `deploy/up.sh` runs its
//! receiver when started with `TRACES=1`; `show` prints one message's trace.
//!
//!   chat-traces serve [--listen 127.0.0.1:24318] [--file .data/local/traces.jsonl]
//!   chat-traces show [--file .data/local/traces.jsonl] QUERY
//!
//! `serve` takes OTLP/HTTP exports (`OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:24318`)
//! and appends their spans to the file, one JSON line each (moved to
//! `FILE.1` past 64 MiB). QUERY is a trace id, a message id or a
//! client_msg_id: `show` prints that trace as a tree with the start and
//! duration of every span, and the persister batch linked to it.

use anyhow::Context;
use chat_tests::cli::Args;
use chat_tests::otlp::{self, SpanRecord};
use std::io::{BufRead, Write};
use std::path::PathBuf;

const ROTATE_BYTES: u64 = 64 << 20;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::from_env();
    let file = PathBuf::from(args.value("--file").unwrap_or(".data/local/traces.jsonl"));
    match args.command() {
        Some("serve") => {
            let listen = args.value("--listen").unwrap_or("127.0.0.1:24318");
            serve(listen, file).await
        }
        Some("show") => {
            let query = args
                .positional()
                .pop()
                .context("show needs a trace id, a message id or a client_msg_id")?;
            show(&file, query)
        }
        _ => {
            eprintln!(
                "usage: chat-traces serve [--listen ADDR] [--file PATH] | show [--file PATH] QUERY"
            );
            std::process::exit(2);
        }
    }
}

async fn serve(listen: &str, file: PathBuf) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    eprintln!(
        "chat-traces: OTLP/HTTP on http://{listen}, spans to {}",
        file.display()
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<SpanRecord>>(64);
    tokio::spawn(otlp::serve(listener, tx));
    while let Some(spans) = rx.recv().await {
        if std::fs::metadata(&file).is_ok_and(|m| m.len() > ROTATE_BYTES) {
            let _ = std::fs::rename(&file, file.with_extension("jsonl.1"));
        }
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .with_context(|| format!("opening {}", file.display()))?;
        let mut lines = Vec::new();
        for span in &spans {
            serde_json::to_writer(&mut lines, span)?;
            lines.push(b'\n');
        }
        out.write_all(&lines)?;
    }
    Ok(())
}

fn show(file: &std::path::Path, query: &str) -> anyhow::Result<()> {
    let mut spans = Vec::new();
    for path in [file.with_extension("jsonl.1"), file.to_path_buf()] {
        let Ok(f) = std::fs::File::open(&path) else {
            continue;
        };
        for line in std::io::BufReader::new(f).lines() {
            if let Ok(span) = serde_json::from_str::<SpanRecord>(&line?) {
                spans.push(span);
            }
        }
    }
    let found = otlp::trace_of(&spans, query);
    print!("{}", otlp::render(&found));
    if found.is_empty() {
        anyhow::bail!(
            "no span of {query} in {} ({} spans)",
            file.display(),
            spans.len()
        );
    }
    Ok(())
}
