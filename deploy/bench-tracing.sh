#!/usr/bin/env bash
# What tracing costs: the local system (deploy/up.sh) at RATE msg/s (default
# 5,000) with tracing off, with 1% sampling and with 100% sampling, each
# ROUNDS times (default 3) in turn, so the three share the machine's noise.
# Spans go to a minimal OTLP/HTTP sink on 127.0.0.1:24318 (python3; it
# answers 200 and counts requests) so the exporter does its real work.
#
#   deploy/bench-tracing.sh                 RATE=5000 DURATION=20 ROUNDS=3
#
# CHAT_BIN_DIR: run the binaries of that folder (chat-gateway,
# chat-persister, chat-presence, chat-load); with CHAT_SKIP_BUILD=1 nothing
# is built (so a benchmark names the commit it ran).
#
# Prints one line per run (acks/s, delivery p50/p99) and a summary table
# (median, min-max). Results: .data/local/bench-tracing/<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE="${RATE:-5000}" DURATION="${DURATION:-20}" ROUNDS="${ROUNDS:-3}" USERS="${USERS:-2000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mapmo-chat/target}"
BIN="${CHAT_BIN_DIR:-$CARGO_TARGET_DIR/release}"
RUN=.data/local/run
OUT=".data/local/bench-tracing/$(date -u +%Y%m%dT%H%M%SZ)"
SINK_PORT=24318
mkdir -p "$OUT"

say() { printf '[bench-tracing] %s\n' "$*" >&2; }

LOCAL_RUN="$RUN"
# shellcheck source=deploy/local-services.sh
. deploy/local-services.sh

restart_with() {
  local name
  for name in gateway-1 gateway-2 persister presence; do stop "$name"; done
  env CHAT_SKIP_BUILD=1 CHAT_BIN_DIR="$BIN" "$@" deploy/up.sh >/dev/null 2>&1
}

python3 - "$SINK_PORT" >"$OUT/sink.log" 2>&1 <<'PY' &
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    count = 0
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
        Sink.count += 1
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
SINK=$!
trap 'kill $SINK 2>/dev/null || true' EXIT

if [ "${CHAT_SKIP_BUILD:-}" != 1 ]; then
  cargo build --release -p chat-gateway -p chat-persister -p chat-presence -p chat-tests --bins >&2
fi
env CHAT_SKIP_BUILD=1 CHAT_BIN_DIR="$BIN" deploy/up.sh >/dev/null 2>&1

for round in $(seq 1 "$ROUNDS"); do
  for mode in off 1pct 100pct; do
    case "$mode" in
      off) restart_with ;;
      1pct) restart_with OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" \
              OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01 ;;
      100pct) restart_with OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" \
              OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=1.0 ;;
    esac
    say "round $round, tracing $mode: $RATE msg/s for $DURATION s"
    "$BIN/chat-load" run --url http://127.0.0.1:28080 --users "$USERS" --rate "$RATE" \
      --duration "$DURATION" --warmup 5 --skip-history \
      >"$OUT/$mode-$round.txt" 2>"$OUT/$mode-$round.log" || say "run failed its verification"
    tail -1 "$OUT/$mode-$round.txt" >"$OUT/$mode-$round.json"
  done
done
restart_with

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys, pathlib
out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
def figures(mode):
    runs = []
    for r in range(1, rounds + 1):
        try:
            s = json.loads((out / f"{mode}-{r}.json").read_text())
        except Exception:
            continue
        runs.append((s["acks_per_s"], s["delivery_latency"]["p50_ms"], s["delivery_latency"]["p99_ms"]))
    return runs
print("| tracing | acks/s median (min-max) | delivery p50 ms | delivery p99 ms median (min-max) |")
print("| --- | --- | --- | --- |")
for mode in ("off", "1pct", "100pct"):
    runs = figures(mode)
    if not runs:
        print(f"| {mode} | no result | | |"); continue
    col = lambda i: [r[i] for r in runs]
    fmt = lambda xs, d=0: f"{statistics.median(xs):.{d}f} ({min(xs):.{d}f}-{max(xs):.{d}f})"
    print(f"| {mode} | {fmt(col(0))} | {fmt(col(1), 1)} | {fmt(col(2), 1)} |")
PY
say "results in $OUT"
