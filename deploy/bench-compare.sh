#!/usr/bin/env bash
# Two builds side by side, in one run, on the same servers: ROUNDS rounds
# (default 3), each running a deploy/bench.sh scenario once against the
# services of folder A, then once against those of folder B (the servers
# stay up; only gateways, persister and presence are swapped). Prints, per
# variant, the median and range of CPU per message and delivery latency.
# The machine is shared and noisy: compare A with B of the same run.
#
#   deploy/bench-compare.sh DIR_A DIR_B [SCENARIO]      (default direct-1000)
#   e.g. keep the old release binaries: cp -r ~/.cache/mapmo-chat/target/release/chat-* /tmp/old/
#
# Environment: ROUNDS, DURATION, WARMUP (passed to bench.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,12p "$0"; exit 2; }
A=$(cd "$1" && pwd) B=$(cd "$2" && pwd) SCENARIO=${3:-direct-1000}
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

for round in $(seq 1 "$ROUNDS"); do
  for variant in A B; do
    dir=$A; [ "$variant" = B ] && dir=$B
    stop_services
    CHAT_SKIP_BUILD=1 CHAT_BIN_DIR="$dir" deploy/up.sh >/dev/null 2>&1
    echo "== round $round, $variant ($dir)" >&2
    deploy/bench.sh "$SCENARIO" 2>&1 | tee "$OUT/$round-$variant.txt" | grep -E '^(cpu seconds|persister:|\{)' >&2 || true
  done
done

# The figures of each run: system µs per command, delivery p50 and p99.
for variant in A B; do
  for f in "$OUT"/*-"$variant".txt; do
    cpu=$(sed -n 's/.*system total [0-9.]* (\([0-9]*\)).*/\1/p' "$f")
    json=$(grep '^{' "$f" | tail -1)
    p50=$(sed -n 's/.*"delivery_latency":{[^}]*"p50_ms":\([0-9.]*\).*/\1/p' <<<"$json")
    p99=$(sed -n 's/.*"delivery_latency":{[^}]*"p99_ms":\([0-9.]*\).*/\1/p' <<<"$json")
    ok=false; grep -q '"verification":{[^}]*"ok":true' <<<"$json" && ok=true
    echo "$variant $cpu $p50 $p99 $ok"
  done
done >"$OUT/runs.txt"
awk '
  { cpu[$1] = cpu[$1] " " $2; p50[$1] = p50[$1] " " $3; p99[$1] = p99[$1] " " $4; if ($5 != "true") bad[$1]++ }
  function stat(list,   n, v, i, j, t) {
    n = split(list, v, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
    return sprintf("%s (%s-%s)", v[int((n + 1) / 2)], v[1], v[n])
  }
  END {
    printf "%-8s %-22s %-22s %-22s %s\n", "variant", "system us/command", "delivery p50 ms", "delivery p99 ms", "verification failed"
    for (k in cpu) printf "%-8s %-22s %-22s %-22s %d\n", k, stat(cpu[k]), stat(p50[k]), stat(p99[k]), bad[k]
  }' "$OUT/runs.txt" | tee "$OUT/summary.txt"
echo "A = $A, B = $B, scenario $SCENARIO, $ROUNDS rounds; runs in $OUT" | tee -a "$OUT/summary.txt"
