#!/usr/bin/env bash
# Runs the standard benchmark scenarios of docs/benchmarks.md against the
# local bring-up (deploy/up.sh must have run; release build). Each scenario
# prints the load generator's table and JSON line; the database and broker
# work per message is read from Postgres's statistics and the gateways'
# /metrics around the run. Results go to .data/local/bench/<time>/.
#
#   deploy/bench.sh                 every scenario, 60 s each
#   DURATION=20 deploy/bench.sh     shorter
#   deploy/bench.sh direct-1000     one scenario (see the case below)
#
# Not a test: nothing here asserts a figure. It is what produced the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mapmo-chat/target}"
BIN="$CARGO_TARGET_DIR/release"
DURATION="${DURATION:-60}"
WARMUP="${WARMUP:-10}"
URL=http://127.0.0.1:28080
# The gateways' metrics ports (deploy/up.sh: the gateway port + 100).
GATEWAYS=(28181 28182)
OUT=".data/local/bench/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
eval "$(deploy/services.sh env local)"

# CHAT_SKIP_BUILD=1: use the chat-load there is (deploy/bench-compare.sh
# does, so that nothing is compiled while it measures).
if [ "${CHAT_SKIP_BUILD:-}" != 1 ] || [ ! -x "$BIN/chat-load" ]; then
  cargo build --release -p chat-tests --bin chat-load >&2
fi

# Sums a counter over both gateways' /metrics.
gateway_counter() {
  local name=$1 total=0 port value
  for port in "${GATEWAYS[@]}"; do
    value=$(exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && grep "^$name " <&3 | awk '{print $2}')
    total=$((total + ${value:-0}))
  done
  echo "$total"
}

# metric URL NAME: one value from a Prometheus text endpoint (0 if absent).
metric() {
  local host=${1%%:*} port=${1##*:} value
  value=$(exec 3<>"/dev/tcp/$host/$port" && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && grep "^$2 " <&3 | awk '{print $2}')
  echo "${value:-0}"
}
PERSISTER_METRICS=127.0.0.1:9101

persister_counters() {
  local n
  for n in persister_batches_total persister_messages_stored_total persister_statements_total \
    persister_commit_seconds_sum persister_announce_seconds_sum; do
    printf '%s ' "$(metric "$PERSISTER_METRICS" "$n")"
  done
  echo
}

db_counters() {
  psql "$CHAT_DATABASE__URL" -Atc \
    "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
            (SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'messages')" | tr '|' ' '
}

# CPU used so far by each part of the system, summed over its processes:
# "user sys switches" (clock ticks, and context switches, voluntary +
# involuntary, summed over the threads alive at the time) for each of
# rabbitmq postgres nginx redis gateways persister presence, in that order.
# Kernel time and switches are what a message's hand-offs between threads
# and processes cost, which an instruction count of user code misses.
# (Processes that exited in between, like short-lived Postgres backends, are
# not counted; nor are processes in containers, such as the Erlang nodes of
# deploy/container-test.sh: those live in another mount namespace.)
cpu_detail() {
  local own proc comm stat switches
  own=$(readlink /proc/self/ns/mnt)
  # Only the parts' processes are read further (a snapshot is taken inside
  # the measured window, so it must cost little).
  for proc in /proc/[0-9]*; do
    read -r comm <"$proc/comm" 2>/dev/null || continue
    case "$comm" in
      beam.smp | postgres | nginx | redis-server | chat-gateway | chat-persister | chat-presence) ;;
      *) continue ;;
    esac
    [ "$(readlink "$proc/ns/mnt" 2>/dev/null)" = "$own" ] || continue
    read -r stat <"$proc/stat" 2>/dev/null || continue
    switches=$(awk '/ctxt_switches/ { s += $2 } END { print s + 0 }' "$proc"/task/*/status 2>/dev/null || echo 0)
    echo "$stat $switches"
  done | awk '
  {
    comm = $2; gsub(/[()]/, "", comm); p = ""
    if (comm == "beam.smp") p = "rabbitmq"
    else if (comm == "postgres") p = "postgres"
    else if (comm == "nginx") p = "nginx"
    else if (comm == "redis-server") p = "redis"
    else if (comm == "chat-gateway") p = "gateways"
    else if (comm == "chat-persister") p = "persister"
    else if (comm == "chat-presence") p = "presence"
    if (p == "") next
    u[p] += $14; s[p] += $15; w[p] += $NF
  } END {
    n = split("rabbitmq postgres nginx redis gateways persister presence", name, " ")
    for (i = 1; i <= n; i++) printf "%d %d %d ", u[name[i]], s[name[i]], w[name[i]]
    printf "\n"
  }'
}

# ticks_of DETAIL: user + system ticks per part, from a cpu_detail line.
ticks_of() {
  awk '{ for (i = 0; i < 7; i++) printf "%d ", $(3 * i + 1) + $(3 * i + 2); printf "\n" }' <<<"$1"
}
TICKS=$(getconf CLK_TCK)

# steady_window PROGRESS OUT: while the load generator runs, snapshots the
# CPU detail (cpu_detail) and the acked count at the first progress line of
# the measured window (t = WARMUP + 1 s) and at its second-to-last second
# (t = WARMUP + DURATION - 1 s), one "acked detail..." line each into OUT.
# Between them the system only carries messages: no sessions set up, no
# history read back, so it is the cost of the message path alone.
steady_window() {
  local progress=$1 out=$2 line t acked first=$((WARMUP + 1)) last=$((WARMUP + DURATION - 1)) taken=0
  tail -n +1 -F "$progress" 2>/dev/null | while read -r line; do
    case "$line" in
      t=*) ;;
      *) continue ;;
    esac
    t=$(sed -n 's/^t= *\([0-9]*\)\..*/\1/p' <<<"$line")
    acked=$(sed -n 's/.* acked=\([0-9]*\).*/\1/p' <<<"$line")
    if [ "$taken" = 0 ] && [ "${t:-0}" -ge "$first" ]; then
      echo "$acked $(cpu_detail)" >>"$out"
      taken=1
    elif [ "$taken" = 1 ] && [ "${t:-0}" -ge "$last" ]; then
      echo "$acked $(cpu_detail)" >>"$out"
      break
    fi
  done
}

# scenario NAME ARGS...: one load-generator run with the work counters around it.
scenario() {
  local name=$1
  shift
  echo "== $name: chat-load run $*" | tee "$OUT/$name.txt" >&2
  read -r tx0 ins0 < <(db_counters)
  read -r b0 m0 st0 c0 a0 < <(persister_counters)
  local pub0 cmd0
  pub0=$(gateway_counter gateway_persist_publishes_total)
  cmd0=$(gateway_counter gateway_persist_commands_total)
  local cpu0 cpu1 detail0 detail1
  detail0=$(cpu_detail)
  cpu0=$(ticks_of "$detail0")
  : >"$OUT/$name.progress"
  steady_window "$OUT/$name.progress" "$OUT/$name.steady" &
  local watcher=$!
  {
    TIMEFORMAT='%U %S'
    time "$BIN/chat-load" run --url "$URL" --duration "$DURATION" --warmup "$WARMUP" "$@" 2>>"$OUT/$name.progress" | tee -a "$OUT/$name.txt" || true
  } 2>"$OUT/$name.loadcpu"
  detail1=$(cpu_detail)
  cpu1=$(ticks_of "$detail1")
  # Ending its tail ends the watcher's loop, after any snapshot in progress.
  pkill -f "tail -n \+1 -F $OUT/$name.progress" 2>/dev/null || true
  wait "$watcher" 2>/dev/null || true
  read -r tx1 ins1 < <(db_counters)
  read -r b1 m1 st1 c1 a1 < <(persister_counters)
  awk -v b="$b0 $b1" -v m="$m0 $m1" -v st="$st0 $st1" -v c="$c0 $c1" -v a="$a0 $a1" 'BEGIN {
    split(b, B); split(m, M); split(st, S); split(c, C); split(a, A)
    nb = B[2] - B[1]; nm = M[2] - M[1]; ns = S[2] - S[1]
    if (nb > 0) printf "persister: %d batches, %.1f messages per batch (= per INSERT), %.3f statements per message, commit %.2f ms and announce %.2f ms per batch on average\n",
      nb, nm / nb, (nm ? ns / nm : 0), (C[2] - C[1]) * 1000 / nb, (A[2] - A[1]) * 1000 / nb }' | tee -a "$OUT/$name.txt"
  local pub1 cmd1
  pub1=$(gateway_counter gateway_persist_publishes_total)
  cmd1=$(gateway_counter gateway_persist_commands_total)
  awk -v tx=$((tx1 - tx0)) -v ins=$((ins1 - ins0)) -v pub=$((pub1 - pub0)) -v cmd=$((cmd1 - cmd0)) 'BEGIN {
    printf "work: %d messages inserted in %d transactions (%.1f per transaction, one INSERT each); %d persist-path AMQP publishes for %d commands (%.3f per command)\n",
      ins, tx, (tx ? ins / tx : 0), pub, cmd, (cmd ? pub / cmd : 0) }' | tee -a "$OUT/$name.txt"
  # CPU per part, in seconds over the whole run (set-up and verification
  # included) and in microseconds per command sent.
  awk -v a="$cpu0" -v b="$cpu1" -v hz="$TICKS" -v load="$(tail -1 "$OUT/$name.loadcpu")" -v cmd=$((cmd1 - cmd0)) 'BEGIN {
    split(a, A); split(b, B); split(load, L)
    n = split("rabbitmq postgres nginx redis gateways persister presence", name, " ")
    line = "cpu seconds (us per command):"; total = 0
    for (i = 1; i <= n; i++) { s = (B[i] - A[i]) / hz; total += s; line = line sprintf(" %s %.1f (%.0f),", name[i], s, cmd ? s * 1e6 / cmd : 0) }
    g = L[1] + L[2]
    printf "%s system total %.1f (%.0f); load generator %.1f (%.0f)\n", line, total, cmd ? total * 1e6 / cmd : 0, g, cmd ? g * 1e6 / cmd : 0 }' | tee -a "$OUT/$name.txt"
  # The same, split: user and system CPU in us, and context switches, per command.
  awk -v a="$detail0" -v b="$detail1" -v hz="$TICKS" -v cmd=$((cmd1 - cmd0)) 'BEGIN {
    split(a, A); split(b, B)
    n = split("rabbitmq postgres nginx redis gateways persister presence", name, " ")
    line = "per command, user/system us and context switches:"
    for (i = 1; i <= n; i++) {
      j = 3 * (i - 1)
      u = (B[j + 1] - A[j + 1]) / hz; s = (B[j + 2] - A[j + 2]) / hz; w = B[j + 3] - A[j + 3]
      line = line sprintf(" %s %.0f/%.0f %.1f,", name[i], cmd ? u * 1e6 / cmd : 0, cmd ? s * 1e6 / cmd : 0, cmd ? w / cmd : 0)
    }
    print line }' | tee -a "$OUT/$name.txt"
  # The steady state: CPU per acked message while messages only flow.
  if [ "$(wc -l <"$OUT/$name.steady" 2>/dev/null || echo 0)" -ge 2 ]; then
    awk -v hz="$TICKS" '
    NR == 1 { split($0, A) } NR == 2 { split($0, B) }
    END {
      n = split("rabbitmq postgres nginx redis gateways persister presence", name, " ")
      msgs = B[1] - A[1]; if (msgs <= 0) exit
      line = ""; total = 0
      for (i = 1; i <= n; i++) {
        j = 1 + 3 * (i - 1)
        u = (B[j + 1] - A[j + 1]) / hz; s = (B[j + 2] - A[j + 2]) / hz; w = B[j + 3] - A[j + 3]
        total += u + s
        line = line sprintf(" %s %.0f (%.0f/%.0f, %.1f switches),", name[i], (u + s) * 1e6 / msgs, u * 1e6 / msgs, s * 1e6 / msgs, w / msgs)
      }
      printf "steady state, us per acked message (user/system) and context switches, over %d acks:%s system total %.0f\n", msgs, line, total * 1e6 / msgs
    }' "$OUT/$name.steady" | tee -a "$OUT/$name.txt"
  fi
}

run() {
  case "$1" in
    direct-1000) scenario direct-1000 --users 2000 --group-size 2 --rate 1000 ;;
    direct-5000) scenario direct-5000 --users 2000 --group-size 2 --rate 5000 --skip-history ;;
    direct-max) scenario direct-max --users 2000 --group-size 2 --rate "${MAX_RATE:-10000}" --skip-history ;;
    group10-2000) scenario group10-2000 --users 2000 --group-size 10 --rate 2000 --skip-history ;;
    # 9 recipients a message: 2,223 msg/s is 20,000 message frames a second
    # to recipients (the senders' acks not counted).
    group10-2223) scenario group10-2223 --users 2000 --group-size 10 --rate 2223 --skip-history ;;
    group100-100) scenario group100-100 --users 2000 --group-size 100 --rate 100 ;;
    # Issue 11's target: 99 recipients a message at 200 msg/s, 19,800
    # message frames a second. Not in the default set.
    group100-200) scenario group100-200 --users 2000 --group-size 100 --rate 200 --skip-history ;;
    idle)
      local port
      for port in "${GATEWAYS[@]}"; do
        local pid
        pid=$(ss -ltnp "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
        echo "== idle: chat-load idle --url http://127.0.0.1:$port --connections ${IDLE:-19000} --pid $pid" | tee "$OUT/idle-$port.txt" >&2
        "$BIN/chat-load" idle --url "http://127.0.0.1:$port" --connections "${IDLE:-19000}" --pid "$pid" \
          --jwt-secret "$(sed -n 's/^jwt_secret = "\(.*\)"/\1/p' config/local.toml)" | tee -a "$OUT/idle-$port.txt" || true
      done
      ;;
    *) echo "unknown scenario $1" >&2; exit 2 ;;
  esac
}

if [ $# -gt 0 ]; then
  for s in "$@"; do run "$s"; done
else
  for s in direct-1000 direct-5000 direct-max group10-2000 group10-2223 group100-100 idle; do run "$s"; done
fi
echo "results in $OUT" >&2
