#!/usr/bin/env bash
# The container system test (issue 10): the whole system of
# deploy/compose.yaml in Docker containers on a private network (Postgres, a
# three-node RabbitMQ cluster with quorum queues, Redis, two persisters of
# which one is a standby, presence, two gateways behind nginx), under the
# app-like chaos load of deploy/faults.sh (`chat-load chaos`, from this host
# through nginx), one fault at a time; every run must end with chat-load's
# verdict ok: 0 acked messages lost, 0 duplicates, 0 seq gaps, 0 missed
# deliveries, every send acked.
#
#   deploy/container-test.sh                       the four faults below
#   deploy/container-test.sh persister-kill ...    only these
#   ROUNDS=3 deploy/container-test.sh              each fault three times
#   KEEP=1 deploy/container-test.sh                leave the containers up
#
# Faults (each injected FAULT_AT s into the load):
#   rabbit-node-stop         docker stop a RabbitMQ node (NODE, below),
#                            start it FAULT_FOR s later
#   rabbit-node-partition    a node (NODE) disconnected from the network for
#                            FAULT_FOR s, then reconnected (same address)
#   rabbit-node-partition-long  the same for PARTITION_LONG_FOR s (default
#                            90): longer than Erlang's net_ticktime (60 s),
#                            so the cluster sees the partition and the node
#                            pauses (pause_minority); not in the default set
#   gateway-rolling-restart  docker stop -t 10 gateway1 (SIGTERM), start it,
#                            wait until it is ready and ROLL_PAUSE s more
#                            (10, k8s/'s minReadySeconds), the same for gateway2
#   persister-kill           docker kill (SIGKILL) the persister that is
#                            storing, the standby takes over; started again
#                            FAULT_FOR s later
#
# Postgres failover (issue 22; not in the default set; they run the Patroni
# variant, deploy/compose.patroni.yaml: three PostgreSQL 15 nodes pg1-pg3
# under Patroni, etcd1-etcd3, HAProxy as `postgres` sending connections to
# the node whose Patroni answers GET /primary):
#   pg-primary-kill          docker kill -s KILL the Patroni leader's
#                            container; once another node is promoted, and
#                            at least FAULT_FOR s after the kill, start it
#                            again: it rejoins as a replica (pg_rewind)
#   pg-switchover            patronictl switchover --force to the sync
#                            standby (PG_SYNC=off: the replica with the
#                            least lag); the old leader rejoins as a replica
#
#   ROUNDS=5 deploy/container-test.sh pg-primary-kill pg-switchover
#   PG_SYNC=off ROUNDS=5 deploy/container-test.sh pg-primary-kill pg-switchover
#
# PG_SYNC=on (default) or off: Patroni's synchronous_mode (with
# synchronous_mode_strict off), set when the cluster is bootstrapped.
# PG_LAG_S=N (default 0): for pg-primary-kill, first hold back the WAL the
# leader streams for N s, then kill it: its traffic to the two other nodes'
# addresses is limited to 8 kbit/s (tc htb, u32 on the destination, in its
# network namespace, from this host: needs root and tc; the namespace goes
# with the kill), so the replicas lag by N s of WAL (about 150 kB a second
# at 300 msg/s, below Patroni's maximum_lag_on_failover of 1 MB for N <= 5),
# as a replica over a slow or congested link would. With PG_SYNC=on the
# commits wait for the sync standby meanwhile.
# PG=patroni runs any fault on the Patroni variant (the pg-* faults choose it
# themselves). The detail of a pg-* run names the old and the new leader and
# how long after the kill (or the switchover command) the new one answered
# GET /primary (promoted_s in results.jsonl; the load runs FAULT_AT + 50 s).
#
# Needs Docker (Engine and Compose: `docker compose` or `docker-compose`),
# root (deploy/images.sh runs debootstrap), and the release binaries in
# $CARGO_TARGET_DIR/release (chat-gateway, chat-persister, chat-presence for
# the images, chat-load for the load): this script never builds them
# (`cargo build --release` first). Images: CHAT_SKIP_BUILD=1
# deploy/images.sh --servers (--patroni too for the Patroni variant;
# SKIP_IMAGES=1: use the images as they are).
#
# Environment: USERS (default 100), RATE (msg/s, 300), DURATION (s of load,
# 40; longer when a fault needs it), FAULT_AT (10), FAULT_FOR (10), ROUNDS
# (1), NODE (the RabbitMQ node the rabbit-* faults hit; default: the one
# serving gateway1), GATHER=1 (first move gateway2 and both persisters onto
# that node by restarting them: the fault then hits the node every one of
# them depends on), AMQP_HEARTBEAT (s, 5), RABBITMQ_NET_TICKTIME (s, 60),
# ROLL_PAUSE (10), PUBLIC_PORT (nginx on 127.0.0.1, 31080), CT_NET (the
# network's /24 prefix, 172.30.31), KEEP=1, SKIP_IMAGES=1, WAIT_BUILD=1 (before
# each run, wait while cargo or rustc runs; whether one ran beside the load
# is recorded either way: build_samples), PG, PG_SYNC, PG_LAG_S (above). Results: one JSON
# line per run in .data/container-test/<time>/results.jsonl, the load's output and a log
# per run beside it, and a table on stdout. Exits non-zero if any verdict is
# not ok (or a run gave none).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd -P)"
USERS="${USERS:-100}" RATE="${RATE:-300}" DURATION="${DURATION:-40}"
FAULT_AT="${FAULT_AT:-10}" FAULT_FOR="${FAULT_FOR:-10}" ROUNDS="${ROUNDS:-1}"
PARTITION_LONG_FOR="${PARTITION_LONG_FOR:-90}"
PUBLIC_PORT="${PUBLIC_PORT:-31080}" CT_NET="${CT_NET:-172.30.31}"
AMQP_HEARTBEAT="${AMQP_HEARTBEAT:-5}" ROLL_PAUSE="${ROLL_PAUSE:-10}"
PROJECT=mapmo-ct
NETWORK="${PROJECT}_chat"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mapmo-chat/target}"
BIN="$CARGO_TARGET_DIR/release"
OUT="$REPO/.data/container-test/$(date -u +%Y%m%dT%H%M%SZ)"
URL="http://127.0.0.1:$PUBLIC_PORT"
DEFAULT_FAULTS=(rabbit-node-stop rabbit-node-partition gateway-rolling-restart persister-kill)
KNOWN_FAULTS=" ${DEFAULT_FAULTS[*]} rabbit-node-partition-long pg-primary-kill pg-switchover "
PG="${PG:-single}" PG_SYNC="${PG_SYNC:-on}" PG_LAG_S="${PG_LAG_S:-0}"

say() { printf '[container-test] %s\n' "$*" >&2; }
die() { printf '[container-test] ERROR: %s\n' "$*" >&2; exit 1; }

# --- preconditions: say clearly what is missing, never pass silently -------
command -v docker >/dev/null || die "Docker is not installed: this test needs Docker Engine and Compose"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (is it running? are you allowed to use it?)"
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
else
  die "Docker Compose is not installed (neither \`docker compose\` nor \`docker-compose\`)"
fi
command -v curl >/dev/null || die "curl is missing"
command -v python3 >/dev/null || die "python3 is missing"
for b in chat-load chat-gateway chat-persister chat-presence; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing: build the release binaries first (cargo build --release)"
done
FAULTS=("$@")
[ ${#FAULTS[@]} -gt 0 ] || FAULTS=("${DEFAULT_FAULTS[@]}")
for f in "${FAULTS[@]}"; do
  [[ "$KNOWN_FAULTS" == *" $f "* ]] || die "unknown fault $f (known:$KNOWN_FAULTS)"
  case "$f" in pg-*) PG=patroni ;; esac
done
case "$PG" in single | patroni) ;; *) die "PG=$PG: expected single or patroni" ;; esac
case "$PG_SYNC" in on | off) ;; *) die "PG_SYNC=$PG_SYNC: expected on or off" ;; esac
[[ "$PG_LAG_S" =~ ^[0-9]+$ ]] || die "PG_LAG_S=$PG_LAG_S: expected whole seconds"
if [ "$PG_LAG_S" != 0 ]; then
  { command -v tc >/dev/null && command -v nsenter >/dev/null; } || die "PG_LAG_S needs tc and nsenter on this host"
fi
COMPOSE_FILES=(-f deploy/compose.yaml)
IMAGE_ARGS=(--servers)
if [ "$PG" = patroni ]; then
  COMPOSE_FILES+=(-f deploy/compose.patroni.yaml)
  IMAGE_ARGS+=(--patroni)
fi

mkdir -p "$OUT"
ENV_FILE="$OUT/compose.env"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

# Tokens for the load: chat-load mints them itself when it can (the
# --jwt-secret option of `chaos`, given here in CHAT_LOAD_JWT_SECRET so that
# it does not show in ps); otherwise from the dev login, served by
# the compose profile devlogin (a gateway on loopback inside nginx's network
# namespace, reached through nginx for POST /api/dev/token only).
PROFILE_ARGS=()
if "$BIN/chat-load" --help | grep -q -- '--jwt-secret S].*CHAT_LOAD_JWT_SECRET'; then
  TOKENS=jwt-secret
else
  TOKENS=devlogin
  PROFILE_ARGS=(--profile devlogin)
fi

dc() { "${COMPOSE[@]}" -p "$PROJECT" --env-file "$ENV_FILE" "${COMPOSE_FILES[@]}" "${PROFILE_ARGS[@]}" "$@"; }
# The container of a compose service (running or not).
cid() {
  docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$1" | head -1
}
ip_of() {
  case "$1" in
    gateway1) echo "$CT_NET.41" ;; gateway2) echo "$CT_NET.42" ;;
    persister1) echo "$CT_NET.31" ;; persister2) echo "$CT_NET.32" ;;
    presence) echo "$CT_NET.33" ;; nginx) echo "$CT_NET.50" ;;
    rabbit1) echo "$CT_NET.21" ;; rabbit2) echo "$CT_NET.22" ;; rabbit3) echo "$CT_NET.23" ;;
    pg1) echo "$CT_NET.61" ;; pg2) echo "$CT_NET.62" ;; pg3) echo "$CT_NET.63" ;;
  esac
}
http_ok() { [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null)" = 200 ]; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$(cid "$1")" 2>/dev/null; }
rabbitctl() { timeout 60 docker exec "$(cid rabbit1)" rabbitmqctl -q "$@" 2>/dev/null; }
# elapsed seconds since the load started, for the fault logs
stamp() { awk -v s="$LOAD_STARTED" -v n="$(date +%s.%N)" 'BEGIN { printf "%6.1f s", n - s }'; }

cleanup() {
  local rc=$?
  if [ -n "${LOAD_PID:-}" ] && kill -0 "$LOAD_PID" 2>/dev/null; then kill "$LOAD_PID" 2>/dev/null || true; fi
  if [ "${KEEP:-}" = 1 ]; then
    say "KEEP=1: the containers stay up (project $PROJECT); to stop them:"
    say "  ${COMPOSE[*]} -p $PROJECT --env-file $ENV_FILE ${COMPOSE_FILES[*]} ${PROFILE_ARGS[*]} down -v"
  elif [ -f "$ENV_FILE" ]; then
    # The services' own logs, for what the verdicts cannot say.
    dc logs --no-color --timestamps >"$OUT/services.log" 2>&1 || true
    say "services' logs in $OUT/services.log; docker compose down -v"
    dc down -v --remove-orphans >>"$OUT/compose.log" 2>&1 || say "compose down failed (see $OUT/compose.log)"
    rm -f "$ENV_FILE"
  fi
  exit "$rc"
}

# --- the system --------------------------------------------------------------
wait_until() { # wait_until SECONDS WHAT COMMAND...
  local limit=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@"; do
    ((SECONDS < deadline)) || { say "$what: not within $limit s"; return 1; }
    sleep 1
  done
}
rabbits_healthy() {
  local n
  for n in rabbit1 rabbit2 rabbit3; do [ "$(health "$n")" = healthy ] || return 1; done
}
cluster_whole() {
  [ "$(rabbitctl eval 'length(rabbit_nodes:all_running()).')" = 3 ] || return 1
  # every quorum queue has its three members online
  rabbitctl list_queues --no-table-headers name type online |
    awk -F'\t' '$2 == "quorum" { n = split($3, m, ","); if (n != 3) bad = 1 } END { exit bad }'
}
services_ready() {
  local g p
  for g in gateway1 gateway2; do http_ok "http://$(ip_of "$g"):8080/ready" || return 1; done
  for p in persister1 persister2; do http_ok "http://$(ip_of "$p"):9101/health" || return 1; done
  http_ok "http://$(ip_of presence):9102/health" || return 1
  http_ok "$URL/health" || return 1
  if [ "$TOKENS" = devlogin ]; then
    [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' -X POST -H 'content-type: application/json' \
      -d '{"user_id": 1}' "$URL/api/dev/token")" = 200 ] || return 1
  fi
}
# --- Patroni (PG=patroni) ---
# A Patroni node's REST API, from this host.
patroni_get() { curl -s -m 1 "http://$(ip_of "$1"):8008$2" 2>/dev/null; }
is_primary() { [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://$(ip_of "$1"):8008/primary" 2>/dev/null)" = 200 ]; }
# The cluster (/cluster) as the first node that answers sees it.
pg_cluster() {
  local n
  for n in pg1 pg2 pg3; do patroni_get "$n" /cluster && return 0; done
  return 1
}
# pg_member ROLE: the running member with that role (leader, sync_standby);
# ROLE replica: the running standby with the least lag.
pg_member() {
  pg_cluster | python3 -c '
import json, sys
try:
    ms = [m for m in json.load(sys.stdin)["members"] if m.get("state") == "running"]
except Exception:
    sys.exit(0)
role = sys.argv[1]
if role == "replica":
    ms = sorted((m for m in ms if m["role"] != "leader" and isinstance(m.get("lag"), int)), key=lambda m: m["lag"])
else:
    ms = [m for m in ms if m["role"] == role]
print(ms[0]["name"] if ms else "")' "$1"
}
# The leader streams WAL to NAMEs (every other node when none is named),
# one of them synchronously when PG_SYNC=on.
# shellcheck disable=SC2120 # (called with names through wait_until)
pg_streams_to() {
  local leader
  leader=$(pg_member leader)
  [ -n "$leader" ] && is_primary "$leader" || return 1
  patroni_get "$leader" / | python3 -c '
import json, sys
want = sys.argv[2:] or [n for n in ("pg1", "pg2", "pg3") if n != sys.argv[1]]
try:
    r = {x["application_name"]: x for x in json.load(sys.stdin).get("replication", []) if x.get("state") == "streaming"}
except Exception:
    sys.exit(1)
sys.exit(0 if all(n in r for n in want) else 1)' "$leader" "$@" && { [ $# -gt 0 ] || [ "$PG_SYNC" = off ] || [ -n "$(pg_member sync_standby)" ]; }
}
# shellcheck disable=SC2119
pg_whole() { pg_streams_to; }

# Everything as it was before any fault: three nodes in one cluster, every
# quorum queue with three members online, (PG=patroni) a leader streaming to
# both replicas, one of them synchronous with PG_SYNC=on, every service ready.
settle() {
  wait_until 180 "RabbitMQ nodes healthy" rabbits_healthy &&
    wait_until 180 "cluster whole" cluster_whole &&
    { [ "$PG" != patroni ] || wait_until 180 "Patroni cluster whole" pg_whole; } &&
    wait_until 120 "services ready" services_ready
}

up() {
  say "secrets: $ENV_FILE (random, removed at the end)"
  (
    umask 077
    for v in JWT_SECRET POSTGRES_PASSWORD RABBITMQ_PASSWORD RABBITMQ_ERLANG_COOKIE REDIS_PASSWORD \
      PG_SUPERUSER_PASSWORD PG_REPLICATION_PASSWORD; do
      printf '%s=%s\n' "$v" "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    done
    printf 'PUBLIC_PORT=%s\nCT_NET=%s\nAMQP_HEARTBEAT=%s\n' "$PUBLIC_PORT" "$CT_NET" "$AMQP_HEARTBEAT"
    printf 'RABBITMQ_NET_TICKTIME=%s\n' "${RABBITMQ_NET_TICKTIME:-}"
    printf 'PG_SYNC=%s\n' "$PG_SYNC"
    # every client of the load comes from this host's one address
    printf 'CONNECTIONS_PER_IP=4096\n'
    if [ "$TOKENS" = devlogin ]; then printf 'NGINX_DEV_TOKEN=127.0.0.1:8090\n'; fi
  ) >"$ENV_FILE"
  if [ -n "$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")" ]; then
    say "removing the containers of an earlier run (project $PROJECT)"
    "${COMPOSE[@]}" -p "$PROJECT" --env-file "$ENV_FILE" -f deploy/compose.yaml -f deploy/compose.patroni.yaml \
      --profile devlogin down -v --remove-orphans >>"$OUT/compose.log" 2>&1
  fi
  local t=$SECONDS
  say "starting the system (${COMPOSE[*]} -p $PROJECT ${COMPOSE_FILES[*]} up -d; tokens: $TOKENS; Postgres: $PG$([ "$PG" = single ] || echo ", PG_SYNC=$PG_SYNC"))"
  dc up -d >>"$OUT/compose.log" 2>&1 || { tail -20 "$OUT/compose.log" >&2; die "compose up failed"; }
  settle || { dc ps >&2; die "the system did not become ready (see $OUT/compose.log, ${COMPOSE[*]} logs)"; }
  UP_SECONDS=$((SECONDS - t))
  say "ready after $UP_SECONDS s"
}

# --- the faults ----------------------------------------------------------------
# Each prints what it did, with the time since the load started, to its log,
# and sets DETAIL (recorded in results.jsonl).
# The node a fault hits: NODE (rabbit1, rabbit2 or rabbit3), or by default
# the node that serves gateway1's AMQP connection, so that every run breaks
# a node some gateway depends on (which node holds what is chance: DNS
# order, and quorum queue leaders follow their first declarer); what it
# held is in the run's log and in DETAIL.
target_node() {
  if [ -n "${NODE:-}" ]; then
    echo "$NODE"
    return
  fi
  local host n
  host=$(rabbitctl list_connections --no-table-headers peer_host host |
    awk -v ip="$(ip_of gateway1)" '$1 == ip { print $2; exit }')
  for n in rabbit1 rabbit2 rabbit3; do
    if [ "$(ip_of "$n")" = "$host" ]; then
      echo "$n"
      return
    fi
  done
  echo rabbit3
}
# The RabbitMQ node addresses a service's AMQP connections are on.
conn_hosts() {
  rabbitctl list_connections --no-table-headers peer_host host |
    awk -v ip="$(ip_of "$1")" '$1 == ip { print $2 }' | sort -u
}
# GATHER=1: before the load, restart gateway2 and the persisters until every
# AMQP connection of theirs is on the node that serves gateway1 (Docker's DNS
# hands each connection a node at random), so that a rabbit-* fault hits the
# node that serves both gateways and both persisters, the storing one among
# them: the worst case. Gives up on a service after 12 restarts (said in
# the log).
gather() {
  local node svc try hosts
  node=$(conn_hosts gateway1 | head -1)
  [ -n "$node" ] || return 0
  for svc in gateway2 persister1 persister2; do
    for try in $(seq 12); do
      hosts=$(conn_hosts "$svc")
      if [ -n "$hosts" ] && [ "$hosts" = "$node" ]; then
        echo "gather: $svc on $node after $((try - 1)) restarts"
        break
      fi
      [ "$try" -lt 12 ] || { echo "gather: $svc not on $node after 11 restarts"; break; }
      dc restart "$svc" >/dev/null 2>&1 || true
      settle >/dev/null 2>&1 || true
    done
  done
}
# What a node holds: AMQP connections of which services, quorum leaders.
holds() {
  local node=$1 ip conns leaders
  ip=$(ip_of "$node")
  conns=$(rabbitctl list_connections --no-table-headers peer_host host | awk -v ip="$ip" -v net="$CT_NET" '
    BEGIN {
      name[net ".31"] = "persister1"; name[net ".32"] = "persister2"; name[net ".33"] = "presence"
      name[net ".41"] = "gateway1"; name[net ".42"] = "gateway2"; name[net ".50"] = "devlogin"
    }
    $2 == ip { printf "%s%s", sep, ($1 in name) ? name[$1] : $1; sep = "," }')
  leaders=$(rabbitctl list_queues --no-table-headers name type leader | awk -v node="rabbit@$node" '
    $2 == "quorum" && $3 == node { printf "%s%s", sep, $1; sep = "," }')
  echo "connections of ${conns:-nothing}; leader of ${leaders:-no queue}"
}

fault_rabbit_node_stop() {
  local node=$TARGET held=$HELD c
  c=$(cid "$node")
  echo "$(stamp) docker stop $node ($held)"
  docker stop -t 30 "$c" >/dev/null
  echo "$(stamp) $node stopped"
  sleep "$FAULT_FOR"
  echo "$(stamp) docker start $node"
  docker start "$c" >/dev/null
  wait_until 180 "$node healthy" rabbits_healthy || true
  echo "$(stamp) $node healthy"
  DETAIL="$node stopped ${FAULT_FOR} s ($held)"
}

partition() { # partition SECONDS
  local node=$TARGET held=$HELD c ip
  c=$(cid "$node")
  ip=$(ip_of "$node")
  echo "$(stamp) docker network disconnect $node ($held)"
  docker network disconnect "$NETWORK" "$c"
  sleep "$1"
  echo "$(stamp) docker network connect $node ($ip)"
  docker network connect --ip "$ip" --alias rabbitmq --alias "$node" "$NETWORK" "$c"
  DETAIL="$node cut off ${1} s ($held)"
}
fault_rabbit_node_partition() { partition "$FAULT_FOR"; }
fault_rabbit_node_partition_long() { partition "$PARTITION_LONG_FOR"; }

fault_gateway_rolling_restart() {
  local g c
  for g in gateway1 gateway2; do
    c=$(cid "$g")
    echo "$(stamp) docker stop -t 10 $g (SIGTERM)"
    docker stop -t 10 "$c" >/dev/null
    echo "$(stamp) $g stopped; docker start"
    docker start "$c" >/dev/null
    wait_until 60 "$g ready" http_ok "http://$(ip_of "$g"):8080/ready" || true
    echo "$(stamp) $g ready"
    # as k8s/ rolls them (minReadySeconds 10): nginx takes a gateway that
    # failed a connect out for 5 s, and clients take a moment to move back
    if [ "$g" = gateway1 ]; then sleep "$ROLL_PAUSE"; fi
  done
  DETAIL="gateway1 then gateway2 restarted, ${ROLL_PAUSE} s apart"
}

stored() { curl -s -m 2 "http://$(ip_of "$1"):9101/metrics" | awk '$1 == "persister_messages_stored_total" { print $2 }'; }
fault_persister_kill() {
  # the active one: the persister whose stored count grows
  local a1 a2 b1 b2 victim rates
  a1=$(stored persister1) a2=$(stored persister2)
  sleep 1
  b1=$(stored persister1) b2=$(stored persister2)
  if python3 -c "import sys; sys.exit(not (float('$b1') - float('$a1') >= float('$b2') - float('$a2')))"; then
    victim=persister1
  else
    victim=persister2
  fi
  rates="stored in the second before: persister1 $(python3 -c "print(int(float('$b1') - float('$a1')))"), persister2 $(python3 -c "print(int(float('$b2') - float('$a2')))")"
  echo "$(stamp) $rates"
  echo "$(stamp) docker kill $victim (SIGKILL)"
  docker kill "$(cid "$victim")" >/dev/null
  sleep "$FAULT_FOR"
  echo "$(stamp) docker start $victim"
  docker start "$(cid "$victim")" >/dev/null
  DETAIL="$victim killed ($rates), started ${FAULT_FOR} s later"
}

# --- Postgres failover (PG=patroni) ---
# Seconds since a date +%s.%N.
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
# wait_primary SECONDS NODE...: the first of the NODEs whose Patroni answers
# GET /primary with 200 (as HAProxy asks it), polled every 0.2 s.
wait_primary() {
  local deadline n
  deadline=$(($(date +%s) + $1))
  shift
  while [ "$(date +%s)" -lt "$deadline" ]; do
    for n in "$@"; do
      if is_primary "$n"; then
        echo "$n"
        return 0
      fi
    done
    sleep 0.2
  done
  return 1
}
pg_state() {
  echo "# patronictl list"
  timeout 20 docker exec "$(cid "$1")" patronictl list 2>&1 || true
}
# How NAME came back, from its Patroni's log since ISO: pg_rewind, a new
# base backup, or simply following the new leader.
rejoin_how() {
  local lines
  lines=$(docker logs --since "$2" "$(cid "$1")" 2>&1 | grep -iE 'pg_rewind|rewind|reinitiali|basebackup|crash recovery' || true)
  printf '%s\n' "$lines" | sed 's/^/  /' | tail -8
  if grep -q 'pg_rewind exit code=0' <<<"$lines"; then
    REJOIN_HOW=pg_rewind
  elif grep -qi 'reinitiali\|basebackup' <<<"$lines"; then
    REJOIN_HOW="new base backup"
  elif grep -qi 'rewind' <<<"$lines"; then
    REJOIN_HOW="pg_rewind (see the log)"
  else
    REJOIN_HOW="no rewind needed"
  fi
}

# hold_back_wal NODE OTHER...: NODE's packets to the OTHERs at 8 kbit/s.
hold_back_wal() {
  local pid n
  pid=$(docker inspect -f '{{.State.Pid}}' "$(cid "$1")")
  shift
  nsenter -t "$pid" -n tc qdisc add dev eth0 root handle 1: htb default 10 &&
    nsenter -t "$pid" -n tc class add dev eth0 parent 1: classid 1:10 htb rate 10gbit &&
    nsenter -t "$pid" -n tc class add dev eth0 parent 1: classid 1:20 htb rate 8kbit ceil 8kbit || return 1
  for n in "$@"; do
    nsenter -t "$pid" -n tc filter add dev eth0 parent 1: protocol ip prio 1 u32 \
      match ip dst "$(ip_of "$n")/32" flowid 1:20 || return 1
  done
}
# The replay position of the other nodes (Patroni's lag), for the log.
pg_lags() {
  pg_cluster | python3 -c '
import json, sys
try:
    print(", ".join("%s %s lag %s" % (m["name"], m.get("role"), m.get("lag")) for m in json.load(sys.stdin)["members"]))
except Exception:
    print("no answer")'
}

fault_pg_primary_kill() {
  local old sync new c t0 n wait_s start_iso started_s lag="" others=()
  old=$(pg_member leader) sync=$(pg_member sync_standby)
  [ -n "$old" ] || { DETAIL="no leader found"; return 1; }
  for n in pg1 pg2 pg3; do [ "$n" = "$old" ] || others+=("$n"); done
  pg_state "$old"
  c=$(cid "$old")
  if [ "$PG_LAG_S" != 0 ]; then
    echo "$(stamp) $old: WAL to ${others[*]} held back (8 kbit/s) for $PG_LAG_S s"
    if hold_back_wal "$old" "${others[@]}"; then
      sleep "$PG_LAG_S"
      echo "$(stamp) lag (bytes, as Patroni last saw it): $(pg_lags)"
      lag=" after its WAL was held back $PG_LAG_S s"
    else
      echo "$(stamp) tc failed: no hold-back"
      lag=" (the hold-back failed)"
    fi
  fi
  echo "$(stamp) docker kill -s KILL $old (the leader; sync standby ${sync:-none})"
  t0=$(date +%s.%N)
  docker kill -s KILL "$c" >/dev/null
  PG_OLD=$old PG_PROMOTED_S="" PG_REJOINED_S=""
  if new=$(wait_primary 120 "${others[@]}"); then
    PG_NEW=$new PG_PROMOTED_S=$(since "$t0")
    echo "$(stamp) $new answers GET /primary, $PG_PROMOTED_S s after the kill"
  else
    PG_NEW=none
    echo "$(stamp) no new primary within 120 s of the kill"
  fi
  # Started again only once replaced (before its leader key expires, its
  # Patroni would find itself still the leader), and FAULT_FOR s after the
  # kill at the earliest.
  wait_s=$(awk -v f="$FAULT_FOR" -v e="$(since "$t0")" 'BEGIN { d = f - e; printf "%.1f", (d > 0 ? d : 0) }')
  sleep "$wait_s"
  start_iso=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ) started_s=$(since "$t0")
  echo "$(stamp) docker start $old"
  docker start "$c" >/dev/null
  if wait_until 180 "$old streaming from the new leader" pg_streams_to "$old"; then
    PG_REJOINED_S=$(since "$t0")
    echo "$(stamp) $old streams from $PG_NEW again ($PG_REJOINED_S s after the kill)"
  fi
  rejoin_how "$old" "$start_iso"
  pg_state "$PG_NEW"
  DETAIL="$old (leader) killed$lag; $PG_NEW (was $([ "$PG_NEW" = "$sync" ] && echo "the sync standby" || echo "a replica; sync standby ${sync:-none}")) primary ${PG_PROMOTED_S:-never} s later; $old started $started_s s after the kill, streaming again ${PG_REJOINED_S:-never} s after it ($REJOIN_HOW)"
}

fault_pg_switchover() {
  local old cand how pid t0 start_iso
  old=$(pg_member leader) cand=$(pg_member sync_standby) how="the sync standby"
  [ -n "$old" ] || { DETAIL="no leader found"; return 1; }
  if [ -z "$cand" ]; then
    cand=$(pg_member replica) how="the replica with the least lag"
  fi
  pg_state "$old"
  PG_OLD=$old PG_NEW=$cand PG_PROMOTED_S="" PG_REJOINED_S=""
  echo "$(stamp) patronictl switchover --leader $old --candidate $cand --force ($how)"
  start_iso=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
  t0=$(date +%s.%N)
  timeout 120 docker exec "$(cid "$old")" patronictl switchover --leader "$old" --candidate "$cand" --force &
  pid=$!
  if wait_primary 120 "$cand" >/dev/null; then
    PG_PROMOTED_S=$(since "$t0")
    echo "$(stamp) $cand answers GET /primary, $PG_PROMOTED_S s after the command"
  else
    echo "$(stamp) $cand not primary within 120 s"
  fi
  wait "$pid" || echo "$(stamp) patronictl switchover failed"
  if wait_until 180 "$old streaming from $cand" pg_streams_to "$old"; then
    PG_REJOINED_S=$(since "$t0")
    echo "$(stamp) $old streams from $cand ($PG_REJOINED_S s after the command)"
  fi
  rejoin_how "$old" "$start_iso"
  pg_state "$cand"
  DETAIL="switchover $old -> $cand ($how): primary ${PG_PROMOTED_S:-never} s after the command; $old streaming again ${PG_REJOINED_S:-never} s after it ($REJOIN_HOW)"
}

# How long the load must run: past the fault's repair, with 20 s to spare.
load_duration() {
  local need=$DURATION
  case "$1" in
    rabbit-node-partition-long) need=$((FAULT_AT + PARTITION_LONG_FOR + 30)) ;;
    # past a 30 s failover with 20 s to spare
    pg-*) need=$((FAULT_AT + 50)) ;;
  esac
  ((need > DURATION)) || need=$DURATION
  echo "$need"
}

run_fault() {
  local fault=$1 round=$2 name result log duration load
  name=$fault
  [ "$ROUNDS" = 1 ] || name="$fault.$round"
  result="$OUT/$name.out" log="$OUT/$name.log"
  if [ "${WAIT_BUILD:-}" = 1 ]; then
    while pgrep -x rustc >/dev/null || pgrep -x cargo >/dev/null; do
      say "$name: WAIT_BUILD=1: cargo or rustc is running; waiting (every 30 s)"
      sleep 30
    done
  fi
  if [ "${GATHER:-}" = 1 ]; then gather >>"$log" 2>&1; fi
  settle >>"$log" 2>&1 || die "the system is not whole before $name (see $log)"
  {
    echo "# before the fault: quorum queue leaders, AMQP connections per node"
    rabbitctl list_queues name type leader online | grep -v '\.gw\.' || true
    rabbitctl list_connections --no-table-headers peer_host host | sort | uniq -c || true
  } >>"$log" 2>&1
  duration=$(load_duration "$fault")
  # (asked before the load: each rabbitmqctl costs a second of CPU)
  TARGET="" HELD=""
  case "$fault" in
    rabbit-*) TARGET=$(target_node) HELD=$(holds "$TARGET") ;;
  esac
  say "$name: $RATE msg/s from $USERS users for $duration s; the fault at $FAULT_AT s"
  DETAIL="" LOAD_STARTED=$(date +%s.%N)
  PG_OLD="" PG_NEW="" PG_PROMOTED_S="" PG_REJOINED_S="" REJOIN_HOW=
  local started_iso
  started_iso=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  "$BIN/chat-load" chaos --url "$URL" --users "$USERS" --rate "$RATE" --duration "$duration" \
    >"$result" 2>>"$log" &
  load=$! LOAD_PID=$!
  # a build beside the load (2 s samples) is recorded with the run
  local builds="$OUT/$name.builds"
  (
    while kill -0 "$load" 2>/dev/null; do
      if pgrep -x rustc >/dev/null || pgrep -x cargo >/dev/null; then echo "$(stamp) cargo/rustc running"; fi
      sleep 2
    done
  ) >"$builds" 2>/dev/null &
  local sampler=$!
  sleep "$FAULT_AT"
  say "$name: injecting"
  local fn="fault_${fault//-/_}"
  "$fn" >>"$log" 2>&1 || say "$name: the fault's commands failed (see $log)"
  echo "$(stamp) repaired" >>"$log"
  say "$name: repaired ($DETAIL); waiting for the load to finish"
  wait "$load" || say "$name: the load reports a failed verification"
  wait "$sampler" || true
  python3 - "$result" "$fault" "$round" "$started_iso" "$DETAIL" "$TOKENS" "$(cut -d' ' -f1-3 /proc/loadavg)" \
    "$(wc -l <"$builds")" "$PG" "$PG_SYNC:$PG_LAG_S" "$PG_OLD" "$PG_NEW" "$PG_PROMOTED_S" "$PG_REJOINED_S" "$REJOIN_HOW" >>"$RESULTS" <<'PY'
import json, sys
path, fault, rnd, started, detail, tokens, loadavg, builds, pg, sync, old, new, promoted, rejoined, how = sys.argv[1:]
summary = None
try:
    lines = [l for l in open(path) if l.startswith("{")]
    summary = json.loads(lines[-1]) if lines else None
except Exception:
    pass
row = {"fault": fault, "round": int(rnd), "started": started, "detail": detail,
       "tokens": tokens, "loadavg_after": loadavg, "build_samples": int(builds), "result": summary}
if pg == "patroni":
    f = lambda v: float(v) if v else None
    sync, lag = sync.split(":")
    row["pg"] = {"sync": sync, "lag_s": int(lag) if fault == "pg-primary-kill" else 0, "old_leader": old, "new_leader": new, "promoted_s": f(promoted),
                 "rejoined_s": f(rejoined), "rejoined_how": how}
print(json.dumps(row))
PY
}

main() {
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  say "results in $OUT"
  # (figures taken beside a build say little: note it)
  if pgrep -x cargo >/dev/null || pgrep -x rustc >/dev/null; then
    say "WARNING: cargo or rustc is running: the timings of this run share the cores with a build"
  fi
  local t=$SECONDS
  if [ "${SKIP_IMAGES:-}" != 1 ]; then
    say "images: CHAT_SKIP_BUILD=1 deploy/images.sh ${IMAGE_ARGS[*]} (from the release binaries in $BIN)"
    CHAT_SKIP_BUILD=1 deploy/images.sh "${IMAGE_ARGS[@]}" >"$OUT/images.log" 2>&1 ||
      { tail -20 "$OUT/images.log" >&2; die "deploy/images.sh failed (see $OUT/images.log)"; }
  fi
  IMAGES_SECONDS=$((SECONDS - t))
  up
  if [ "$TOKENS" = jwt-secret ]; then
    CHAT_LOAD_JWT_SECRET="$(sed -n 's/^JWT_SECRET=//p' "$ENV_FILE")"
    export CHAT_LOAD_JWT_SECRET
  fi
  local pg_packages=""
  if [ "$PG" = patroni ]; then
    pg_packages=$(docker run --rm --entrypoint dpkg-query "mapmo-chat/patroni:${TAG:-dev}" \
      -W -f '${Package} ${Version}, ' postgresql-15 patroni etcd-server haproxy 2>/dev/null || true)
    say "Patroni variant: ${pg_packages%, }; PG_SYNC=$PG_SYNC"
  fi
  python3 - "$OUT/run.json" <<PY
import json, subprocess, sys, os
def sh(c):
    try: return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception: return ""
json.dump({"commit": sh("git describe --always --dirty"), "cpus": os.cpu_count(),
           "cpu_model": sh("sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1"),
           "docker": sh("docker version --format '{{.Server.Version}}'"),
           "compose": "${COMPOSE[*]}", "users": $USERS, "rate": $RATE, "duration": $DURATION,
           "fault_at": $FAULT_AT, "fault_for": $FAULT_FOR, "rounds": $ROUNDS, "tokens": "$TOKENS",
           "images_s": $IMAGES_SECONDS, "up_s": $UP_SECONDS, "pg": "$PG", "pg_sync": "$PG_SYNC", "pg_lag_s": $PG_LAG_S,
           "pg_packages": "${pg_packages%, }"}, open(sys.argv[1], "w"))
PY
  local round fault
  for round in $(seq 1 "$ROUNDS"); do
    for fault in "${FAULTS[@]}"; do
      run_fault "$fault" "$round"
    done
  done
  report
  say "done in $((SECONDS - t)) s; results in $OUT"
  python3 -c "
import json, sys
rows = [json.loads(l) for l in open('$RESULTS')]
sys.exit(0 if rows and all(r['result'] and r['result'].get('ok') is True for r in rows) else 1)
" || die "a verdict is not ok (or missing): see $RESULTS"
}

report() {
  python3 - "$RESULTS" "$ROUNDS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rounds = int(sys.argv[2])
print()
print("| fault | sent | acked | acked lost | duplicates in history | seq gaps | missing deliveries "
      "| sends retried | reconnects | longest ack gap (ms) | send to ack p99 / max (ms) | ok |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    name = r["fault"] if rounds == 1 else f"{r['fault']} ({r['round']})"
    s = r["result"]
    if not s:
        print(f"| {name} | no result | | | | | | | | | | False |")
        continue
    retried = sum(s["sends_retried"].values())
    print(f"| {name} | {s['sent']} | {s['acked']} | {s['acked_lost']} | {s['duplicates_in_history']} | "
          f"{s['seq_gaps']} | {s['missing_deliveries']} | {retried} | {s['reconnects']} | "
          f"{s['longest_ack_gap_ms']:.0f} | {s['send_to_ack_ms']['p99']:.0f} / {s['send_to_ack_ms']['max']:.0f} | {s['ok']} |")
def mm(v, fmt=",.0f"):
    return f"{statistics.median(v):{fmt}} ({min(v):{fmt}}-{max(v):{fmt}})" if v else "-"
pg = [r for r in rows if r.get("pg")]
if pg:
    print()
    lag = pg[0]['pg'].get('lag_s') or 0
    print(f"Postgres failover (Patroni, PG_SYNC={pg[0]['pg']['sync']}{f', PG_LAG_S={lag}' if lag else ''}):")
    print()
    print("| fault | leader before -> after | new primary after (s) | old leader streaming again after (s) "
          "| how it rejoined | acked lost | longest ack gap (ms) | build beside the load (2 s samples) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in pg:
        name = r["fault"] if rounds == 1 else f"{r['fault']} ({r['round']})"
        p, s = r["pg"], r["result"] or {}
        fs = lambda v: "never" if v is None else f"{v:.1f}"
        gap = s.get("longest_ack_gap_ms")
        print(f"| {name} | {p['old_leader']} -> {p['new_leader']} | {fs(p['promoted_s'])} | {fs(p['rejoined_s'])} "
              f"| {p['rejoined_how']} | {s.get('acked_lost', '-')} | {'-' if gap is None else f'{gap:.0f}'} "
              f"| {r.get('build_samples', 0)} |")
if rounds > 1:
    print()
    print("| fault | runs ok | acked lost (per run) | longest ack gap (ms) | send to ack max (ms) | new primary after (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    faults = list(dict.fromkeys(r["fault"] for r in rows))
    for f in faults:
        rf = [r for r in rows if r["fault"] == f]
        rs = [r["result"] for r in rf]
        ok = sum(1 for s in rs if s and s.get("ok") is True)
        lost = ", ".join(str(s["acked_lost"]) if s else "?" for s in rs)
        gaps = [s["longest_ack_gap_ms"] for s in rs if s]
        maxes = [s["send_to_ack_ms"]["max"] for s in rs if s]
        prom = [r["pg"]["promoted_s"] for r in rf if r.get("pg") and r["pg"]["promoted_s"] is not None]
        print(f"| {f} | {ok} of {len(rs)} | {lost} | {mm(gaps)} | {mm(maxes)} | {mm(prom, '.1f')} |")
PY
}

main
