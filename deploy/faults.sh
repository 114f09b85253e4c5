#!/usr/bin/env bash
# The fault runs of docs/reliability.md: the local system (deploy/up.sh, with
# a standby persister) under steady load from app-like clients
# (`chat-load chaos`: reconnect with back-off, resend unacked sends with the
# same client_msg_id, catch up from history), one fault at a time, then the
# verdict: every acked message in history exactly once, seq gapless, every
# member saw every message, and how long acks stopped.
#
#   deploy/faults.sh                  every fault
#   deploy/faults.sh kill-gateway pg-restart ...   only these
#
# Faults: kill-gateway kill-persister rabbit-restart rabbit-restart-persistent
# pg-restart redis-restart redis-flushall cut-persister-db cut-gateway-broker
# memory-alarm disk-alarm term-gateway; and, only when named, storm: a
# reconnect storm (issue 22's target 7): STORM_USERS users (default 10000)
# connected straight to gateway 1 and STORM_OTHERS (default 2000) to gateway
# 2, STORM_RATE msg/s (default 500) across all; at FAULT_AT gateway 1 is
# killed (-9) and every one of its sessions moves to gateway 2. The two
# groups are two load generators (two processes: the others' deliveries are
# not timed by a process busy reconnecting 10,000 sockets). Its summary adds
# what the move cost (`storm` in storm.json: close to caught up per session,
# split into back-off, upgrade, hello and history) and the others' delivery
# latency before, during and after it (from storm-others.csv). LOAD_NICE
# and OTHERS_NICE (default 0 both) run the moving users' and the others'
# load generators at those nicenesses.
#
# Environment: RATE (msg/s, default 1000), USERS (default 200), DURATION
# (seconds of load, default 40), FAULT_AT (seconds into the load, default 10),
# FAULT_FOR (seconds the fault lasts, default 10), CHAT_BIN_DIR and
# CHAT_SKIP_BUILD (run given binaries without building). Results:
# .data/local/faults/<time>/<fault>.json and a table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd -P)"
RATE="${RATE:-1000}" USERS="${USERS:-200}" DURATION="${DURATION:-40}"
FAULT_AT="${FAULT_AT:-10}" FAULT_FOR="${FAULT_FOR:-10}"
STORM_USERS="${STORM_USERS:-10000}" STORM_OTHERS="${STORM_OTHERS:-2000}" STORM_RATE="${STORM_RATE:-500}"
# The load generator's niceness (storm: the one of the 10,000 moving users;
# the others' stays at 0): 10 gives the servers the CPU first, as clients on
# their own devices would.
LOAD_NICE="${LOAD_NICE:-0}"
# The niceness of the storm's other users' load generator: below 0 (root
# only) it runs before the servers and the moving users, as the others'
# own devices would, so that their delivery times are the servers'.
OTHERS_NICE="${OTHERS_NICE:-0}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mapmo-chat/target}"
# CHAT_BIN_DIR: run the binaries of another folder; CHAT_SKIP_BUILD=1: do
# not build first (as deploy/bench.sh).
BIN="${CHAT_BIN_DIR:-$CARGO_TARGET_DIR/release}"
export CHAT_BIN_DIR="$BIN"
# The load generator: from that folder if it has one, else the release build
# (a folder of the three services alone gave every run "no result").
LOAD="$BIN/chat-load"
[ -x "$LOAD" ] || LOAD="$CARGO_TARGET_DIR/release/chat-load"
[ -x "$LOAD" ] || { echo "[faults] no chat-load in $BIN or $CARGO_TARGET_DIR/release (cargo build --release -p chat-tests)" >&2; exit 1; }
RUN="$REPO/.data/local/run"
LOGS="$REPO/.data/local/logs"
OUT="$REPO/.data/local/faults/$(date -u +%Y%m%dT%H%M%SZ)"
URL=http://127.0.0.1:28080
ALL=(kill-gateway kill-persister rabbit-restart rabbit-restart-persistent pg-restart
  redis-restart redis-flushall cut-persister-db cut-gateway-broker memory-alarm disk-alarm
  term-gateway)

say() { printf '[faults] %s\n' "$*" >&2; }

LOCAL_RUN="$RUN"
# shellcheck source=deploy/local-services.sh
. deploy/local-services.sh

# The system as up.sh leaves it, with a standby persister (extra env for the
# services: arguments NAME=VALUE, as for the persistent-sends run).
up() {
  env PERSISTERS=2 CHAT_SKIP_BUILD=1 "$@" deploy/up.sh >/dev/null
}

# Every chat service stopped (the servers stay up), then started again with
# the given environment.
restart_all() {
  local name
  for name in gateway-1 gateway-2 persister persister-2 presence; do stop "$name" TERM; done
  up "$@"
}

# run_proxied NAME LISTEN TO: a service of up.sh restarted with its database
# or broker URL through a cuttable proxy (chat-load proxy).
proxy_start() {
  nohup "$LOAD" proxy --listen "$1" --to "$2" >>"$LOGS/proxy-${1##*:}.log" 2>&1 &
  echo $! >"$RUN/proxy-${1##*:}.pid"
}
proxy_signal() { kill "-$2" "$(pid_of "proxy-$1")"; }
proxy_stop() { stop "proxy-$1" TERM; }

start_service() {
  local name=$1 cmd=$2
  shift 2
  env "$@" nohup "$cmd" >>"$LOGS/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

# Wall-clock milliseconds, and a moment of the fault written down
# ($OUT/<fault>.times: "stop <ms>", "start <ms>", "ready <ms>") for the
# summary's "back -> acks" column.
now_ms() { date +%s%3N; }
mark() { echo "$2 $(now_ms)" >>"$OUT/$1.times"; }

# A server of the local instance stopped, then started FAULT_FOR later;
# marked when its stop begins, when its start begins, and when it is ready
# (services.sh start returns once it answers).
restart_server() {
  local fault=$1 server=$2
  mark "$fault" stop
  deploy/services.sh stop-one local "$server"
  sleep "$FAULT_FOR"
  mark "$fault" start
  deploy/services.sh start local >/dev/null
  mark "$fault" ready
}

# The fault itself: inject at FAULT_AT, repair after FAULT_FOR.
inject() {
  case "$1" in
    kill-gateway) stop gateway-1 KILL; sleep "$FAULT_FOR"; up ;;
    storm) mark "$1" stop; stop gateway-1 KILL; sleep "$FAULT_FOR"; up ;;
    term-gateway) stop gateway-1 TERM; sleep "$FAULT_FOR"; up ;;
    kill-persister) stop persister KILL; sleep "$FAULT_FOR"; up ;;
    rabbit-restart | rabbit-restart-persistent) restart_server "$1" rabbitmq ;;
    pg-restart) restart_server "$1" postgres ;;
    redis-restart) restart_server "$1" redis ;;
    redis-flushall) deploy/services.sh redis-cli local FLUSHALL >/dev/null ;;
    cut-persister-db) proxy_signal 25433 USR1; sleep "$FAULT_FOR"; proxy_signal 25433 USR2 ;;
    cut-gateway-broker) proxy_signal 25673 USR1; sleep "$FAULT_FOR"; proxy_signal 25673 USR2 ;;
    memory-alarm)
      deploy/services.sh rabbitmqctl local -q set_vm_memory_high_watermark 0.00001
      sleep "$FAULT_FOR"
      deploy/services.sh rabbitmqctl local -q set_vm_memory_high_watermark 0.4 ;;
    disk-alarm)
      # A free-disk limit above any disk's size: the disk alarm blocks every
      # publishing connection until the limit is back (services/rabbitmq.sh).
      mark "$1" stop
      deploy/services.sh rabbitmqctl local -q set_disk_free_limit 100000000000000
      sleep "$FAULT_FOR"
      mark "$1" start
      deploy/services.sh rabbitmqctl local -q set_disk_free_limit 200MB
      mark "$1" ready ;;
    *) say "unknown fault $1"; return 1 ;;
  esac
}

# Set-up a fault needs before the load starts, and its undoing after.
prepare() {
  eval "$(deploy/services.sh env local)"
  case "$1" in
    rabbit-restart-persistent) restart_all CHAT_AMQP__PERSISTENT_SENDS=true ;;
    cut-persister-db)
      stop persister TERM
      stop persister-2 TERM
      proxy_start 127.0.0.1:25433 127.0.0.1:25432
      start_service persister "$BIN/chat-persister" CHAT_PROFILE=local \
        "CHAT_DATABASE__URL=${CHAT_DATABASE__URL/:25432\//:25433/}"
      up ;;
    cut-gateway-broker)
      stop gateway-1 TERM
      proxy_start 127.0.0.1:25673 127.0.0.1:25672
      start_service gateway-1 "$BIN/chat-gateway" CHAT_PROFILE=local \
        CHAT_GATEWAY__LISTEN=127.0.0.1:28081 CHAT_GATEWAY__METRICS_LISTEN=127.0.0.1:28181 \
        "CHAT_AMQP__URL=${CHAT_AMQP__URL/:25672\//:25673/}"
      sleep 2
      up ;;
    *) up ;;
  esac
}

cleanup() {
  case "$1" in
    rabbit-restart-persistent) restart_all ;;
    cut-persister-db) stop persister TERM; proxy_stop 25433; up ;;
    cut-gateway-broker) stop gateway-1 TERM; proxy_stop 25673; up ;;
    *) up ;;
  esac
}

# Waits (at most 2 minutes) for a load generator's log to say that every
# user is connected.
connected() {
  local waited=0
  until grep -q '^chaos: .* connected after' "$1" 2>/dev/null || [ $waited -ge 120 ]; do
    sleep 1; waited=$((waited + 1))
  done
}

run_fault() {
  local fault=$1 result
  result="$OUT/$fault.json"
  say "$fault: preparing"
  prepare "$fault" 2>>"$OUT/$fault.log"
  local load_args=(--url "$URL" --users "$USERS" --rate "$RATE") others=""
  if [ "$fault" = storm ]; then
    local share
    share=$(awk -v r="$STORM_RATE" -v a="$STORM_USERS" -v b="$STORM_OTHERS" 'BEGIN { printf "%.3f", r * a / (a + b) }')
    load_args=(--url "http://127.0.0.1:28081,http://127.0.0.1:28082" --users "$STORM_USERS"
      --pinned "$STORM_USERS" --rate "$share")
  fi
  say "$fault: ${load_args[*]} for $DURATION s; the fault at $FAULT_AT s (after every user is connected) for $FAULT_FOR s"
  nice -n "$LOAD_NICE" "$LOAD" chaos "${load_args[@]}" --duration "$DURATION" \
    >"$result" 2>"$OUT/$fault.log" &
  local load=$!
  # The load starts once every user is connected: the fault waits for that.
  connected "$OUT/$fault.log"
  if [ "$fault" = storm ]; then
    local rate
    rate=$(awk -v r="$STORM_RATE" -v a="$STORM_USERS" -v b="$STORM_OTHERS" 'BEGIN { printf "%.3f", r * b / (a + b) }')
    say "$fault: and $STORM_OTHERS other users on gateway 2, $rate msg/s"
    nice -n "$OTHERS_NICE" "$LOAD" chaos --url http://127.0.0.1:28082 --users "$STORM_OTHERS" --rate "$rate" \
      --duration "$DURATION" --id-offset 50000000 --deliveries-out "$OUT/storm-others.csv" \
      >"$OUT/storm-others.json" 2>"$OUT/storm-others.log" &
    others=$!
    connected "$OUT/storm-others.log"
  fi
  sleep "$FAULT_AT"
  say "$fault: injecting"
  inject "$fault" >>"$OUT/$fault.log" 2>&1
  say "$fault: repaired; waiting for the load to finish"
  wait "$load" || say "$fault: the load run reports a failed verification"
  if [ -n "$others" ]; then
    wait "$others" || say "$fault: the other users' run reports a failed verification"
  fi
  cleanup "$fault" 2>>"$OUT/$fault.log"
}

main() {
  local faults=("$@")
  [ ${#faults[@]} -gt 0 ] || faults=("${ALL[@]}")
  mkdir -p "$OUT"
  say "building and starting the system (deploy/up.sh, two persisters)"
  if [ "${CHAT_SKIP_BUILD:-}" != 1 ]; then
    cargo build --release -p chat-gateway -p chat-persister -p chat-presence -p chat-tests --bins
  fi
  # Services left running by an earlier up.sh may be older binaries.
  restart_all
  for fault in "${faults[@]}"; do
    run_fault "$fault"
  done
  printf '\n| fault | sent | acked | acked lost | duplicates in history | seq gaps | missing deliveries | sends retried | reconnects | longest ack gap (ms) | stop -> acks / ready -> acks (ms) | send to ack p99 / max (ms) | ok |\n'
  printf '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n'
  for fault in "${faults[@]}"; do
    python3 - "$OUT/$fault.json" "$fault" "$OUT/$fault.times" <<'PY'
import json, sys
path, fault, times = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    line = [l for l in open(path) if l.startswith("{")][-1]
    s = json.loads(line)
except Exception as e:
    print(f"| {fault} | no result ({e}) |")
    sys.exit()
retried = sum(s["sends_retried"].values())
# For a server restarted: when acks came back (the end of the longest gap
# without any), from the stop's start and from the server being ready.
back = "-"
try:
    marks = dict(l.split() for l in open(times))
    acks_at = s["started_unix_ms"] + s["longest_ack_gap_to_ms"]
    back = f"{acks_at - int(marks['stop']):.0f} / {acks_at - int(marks['ready']):.0f}"
except (OSError, KeyError, ValueError):
    pass
print(f"| {fault} | {s['sent']} | {s['acked']} | {s['acked_lost']} | {s['duplicates_in_history']} | "
      f"{s['seq_gaps']} | {s['missing_deliveries']} | {retried} | {s['reconnects']} | "
      f"{s['longest_ack_gap_ms']:.0f} | {back} | {s['send_to_ack_ms']['p99']:.0f} / {s['send_to_ack_ms']['max']:.0f} | {s['ok']} |")
PY
  done
  for fault in "${faults[@]}"; do
    python3 - "$OUT/$fault.json" "$fault" "$OUT/storm-others.json" "$OUT/storm-others.csv" <<'PY'
import json, math, sys
def last_json(path):
    return json.loads([l for l in open(path) if l.startswith("{")][-1])
try:
    s = last_json(sys.argv[1])
except Exception:
    sys.exit()
t = s.get("storm")
if not t:
    sys.exit()
def spread(values):
    values = sorted(values)
    if not values:
        return "-"
    q = lambda p: values[max(0, math.ceil(p * len(values)) - 1)]
    return f"{q(0.5):.0f} / {q(0.99):.0f} / {max(values):.0f} ({len(values)})"
f = lambda d: f"{d['p50']:.0f} / {d['p99']:.0f} / {d['max']:.0f}"
print(f"\n{sys.argv[2]}: {t['sessions_moved']} sessions moved ({t['users_moved']} users; "
      f"{t['sessions_moved_apart']} more apart from the storm) in {t['span_ms']:.0f} ms, "
      f"{t['failed_attempts']} failed attempts {s.get('connect_errors', {})}, {t['history_pages']} history pages")
print("| close to caught up | back-off | upgrade | hello | history |")
print("| --- | --- | --- | --- | --- |")
st = t["steps_ms"]
print(f"| {f(t['close_to_caught_up_ms'])} | {f(st['back_off'])} | {f(st['upgrade'])} | {f(st['hello'])} | {f(st['catch_up'])} |")
print("(ms, p50 / p99 / max)")
# The other users (the second load generator): their live deliveries
# before, during (first close to last catch-up) and after the storm.
try:
    o = last_json(sys.argv[3])
    rows = [l.split(",") for l in open(sys.argv[4]).read().split("\n")[1:] if l]
except Exception as e:
    print(f"others: no result ({e})")
    sys.exit()
start = s["started_unix_ms"]
lo, hi = start + t["from_ms"], start + t["to_ms"]
d = [(float(a), float(b)) for a, b, _ in rows]
print(f"\nothers: {o['scenario']['users']} users, {o['acked']} of {o['sent']} acked, {o['acked_lost']} acked lost, "
      f"{o['duplicates_in_history']} duplicates, {o['seq_gaps']} seq gaps, {o['missing_deliveries']} missing deliveries, "
      f"{o['reconnects']} reconnects, ok {o['ok']}")
print("| others' deliveries (ms) | p50 / p99 / max (count) |")
print("| --- | --- |")
print(f"| before the storm | {spread([l for a, l in d if a < lo])} |")
print(f"| during the storm | {spread([l for a, l in d if lo <= a <= hi])} |")
print(f"| after the storm | {spread([l for a, l in d if a > hi])} |")
worst = {}
for a, l in d:
    if lo - 5000 <= a <= hi + 5000:
        worst.setdefault(int((a - lo) // 1000), []).append(l)
print("per second from the first close (s: p99 ms):",
      " ".join(f"{k}:{sorted(v)[max(0, math.ceil(0.99 * len(v)) - 1)]:.0f}" for k, v in sorted(worst.items())))
PY
  done
  say "results in $OUT"
}

main "$@"
