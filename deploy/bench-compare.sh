#!/usr/bin/env bash
# Builds (or settings) side by side, in one run, on the same servers: ROUNDS
# rounds (default 3), each running a deploy/bench.sh scenario once against
# every variant in turn (the servers stay up; only gateways, persister and
# presence are swapped). Prints, per variant, the median and range of CPU
# per message and delivery latency. The machine is shared and noisy: compare
# variants of the same run, never figures of different runs.
#
#   deploy/bench-compare.sh [-s SCENARIO] VARIANT VARIANT...    (default direct-1000)
#
# A VARIANT is a folder of release binaries (chat-gateway, chat-persister,
# chat-presence), optionally followed by settings for its services:
#   /tmp/old  /tmp/new  "/tmp/new CHAT_PERSISTER__LINGER_FROM=2 CHAT_PERSISTER__LINGER_MS=3"
# (keep a build's binaries with: cp ~/.cache/mapmo-chat/target/release/chat-* /tmp/old/).
# The word HOG=N runs `stress-ng --cpu N` beside that variant's runs (a
# neighbour taking N cores; not counted in the system's CPU; needs
# `apt-get install stress-ng`):  /tmp/new  "/tmp/new HOG=1"
# The word WEBHOOK=off|slow|silent runs deploy/webhook-bench.py beside that
# variant's runs: a feeder of unread events through the server API (in
# every mode, so the load is the same) and a receiver on 127.0.0.1:28099
# that answers after 1 s (slow) or never (silent); give the variant the
# notify settings that point at it (docs/benchmarks.md has the command).
#
# The setting CHAT_TLS=1 makes that variant's services reach every backend
# over TLS (deploy/up.sh):  /tmp/new  "/tmp/new CHAT_TLS=1"
# Environment: ROUNDS, DURATION, WARMUP (passed to bench.sh). Nothing is
# built: build chat-load (cargo build --release -p chat-tests) first.
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIO=direct-1000
if [ "${1:-}" = -s ]; then SCENARIO=$2; shift 2; fi
[ $# -ge 2 ] || { sed -n 2,24p "$0"; exit 2; }
VARIANTS=("$@")
ROUNDS=${ROUNDS:-3}
OUT=".data/local/bench/compare-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
# shellcheck source=deploy/local-services.sh
. deploy/local-services.sh

# Stops the services deploy/up.sh started (not the servers, not nginx).
stop_services() {
  local pidfile
  for pidfile in "$LOCAL_RUN"/{gateway-*,persister*,presence}.pid; do
    [ -f "$pidfile" ] && stop "$(basename "$pidfile" .pid)"
  done
  return 0
}

# The schema every variant needs: each variant's migrations, once, before
# the rounds. An older build's migrate refuses a schema that a newer one
# migrated further (its error is shown, and harmless); it runs on it all the
# same, since migrations only add. The rounds then skip migrating.
deploy/services.sh start local >/dev/null
eval "$(deploy/services.sh env local)"
for v in "${!VARIANTS[@]}"; do
  read -r -a words <<<"${VARIANTS[$v]}"
  CHAT_PROFILE=local "${words[0]}/chat-persister" migrate >/dev/null 2>&1 \
    || echo "variant $v's migrate refused the schema (a newer variant migrated it further); going on" >&2
done

for round in $(seq 1 "$ROUNDS"); do
  for v in "${!VARIANTS[@]}"; do
    read -r -a words <<<"${VARIANTS[$v]}"
    dir=$(cd "${words[0]}" && pwd)
    settings=() hog=0 webhook=
    for word in "${words[@]:1}"; do
      case "$word" in
        HOG=*) hog=${word#HOG=} ;;
        WEBHOOK=*) webhook=${word#WEBHOOK=} ;;
        *) settings+=("$word") ;;
      esac
    done
    stop_services
    env "${settings[@]}" CHAT_SKIP_BUILD=1 CHAT_SKIP_MIGRATE=1 CHAT_BIN_DIR="$dir" deploy/up.sh >/dev/null 2>&1
    echo "== round $round, variant $v: ${VARIANTS[$v]}" >&2
    hog_pid=
    webhook_pid=
    if [ -n "$webhook" ]; then
      key=$(sed -n 's/^server_api_keys = \["\(.*\)"\]/\1/p' config/local.toml)
      deploy/webhook-bench.py "$webhook" 28099 http://127.0.0.1:28080 "$key" 2>>"$OUT/webhook-$round-$v.log" &
      webhook_pid=$!
      sleep 2 # its pairs opened before the measurement starts
    fi
    if [ "$hog" != 0 ]; then
      command -v stress-ng >/dev/null || { echo "HOG needs stress-ng: apt-get install stress-ng" >&2; exit 1; }
      stress-ng --cpu "$hog" --quiet &
      hog_pid=$!
    fi
    CHAT_SKIP_BUILD=1 deploy/bench.sh "$SCENARIO" 2>&1 | tee "$OUT/$round-$v.txt" | grep -E '^(cpu seconds|persister:|steady state)' >&2 || true
    if [ -n "$hog_pid" ]; then kill "$hog_pid" 2>/dev/null; wait "$hog_pid" 2>/dev/null || true; fi
    if [ -n "$webhook_pid" ]; then kill "$webhook_pid" 2>/dev/null; wait "$webhook_pid" 2>/dev/null || true; fi
  done
done
stop_services
env CHAT_SKIP_BUILD=1 deploy/up.sh >/dev/null 2>&1 || true # back to the usual build

# The figures of each run: system µs per command, delivery p50 and p99.
for v in "${!VARIANTS[@]}"; do
  for f in "$OUT"/*-"$v".txt; do
    cpu=$(sed -n 's/.*system total [0-9.]* (\([0-9]*\)).*/\1/p' "$f")
    steady=$(sed -n 's/^steady state.* system total \([0-9]*\)$/\1/p' "$f")
    json=$(grep '^{' "$f" | tail -1)
    p50=$(sed -n 's/.*"delivery_latency":{[^}]*"p50_ms":\([0-9.]*\).*/\1/p' <<<"$json")
    p99=$(sed -n 's/.*"delivery_latency":{[^}]*"p99_ms":\([0-9.]*\).*/\1/p' <<<"$json")
    ok=false
    grep -q '"verification":{[^}]*"ok":true' <<<"$json" && ok=true
    echo "$v ${cpu:-0} ${p50:-0} ${p99:-0} $ok ${steady:-0}"
  done
done >"$OUT/runs.txt"
awk '
  { cpu[$1] = cpu[$1] " " $2; steady[$1] = steady[$1] " " $6; p50[$1] = p50[$1] " " $3; p99[$1] = p99[$1] " " $4; if ($5 != "true") bad[$1]++ }
  function stat(list,   n, v, i, j, t) {
    n = split(list, v, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
    return sprintf("%s (%s-%s)", v[int((n + 1) / 2)], v[1], v[n])
  }
  END {
    printf "%-8s %-22s %-22s %-22s %-24s %s\n", "variant", "system us/command", "steady us/message", "delivery p50 ms", "delivery p99 ms", "runs failing verification"
    for (k = 0; k in cpu; k++) printf "%-8s %-22s %-22s %-22s %-24s %d\n", k, stat(cpu[k]), stat(steady[k]), stat(p50[k]), stat(p99[k]), bad[k]
  }' "$OUT/runs.txt" | tee "$OUT/summary.txt"
for v in "${!VARIANTS[@]}"; do echo "variant $v: ${VARIANTS[$v]}"; done | tee -a "$OUT/summary.txt"
echo "scenario $SCENARIO, $ROUNDS rounds, median (min-max); runs in $OUT" | tee -a "$OUT/summary.txt"
