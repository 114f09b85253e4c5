#!/usr/bin/env bash
# Brings up the whole of mapmo-chat on this machine, from nothing:
# installs what is missing (deploy/services.sh install), starts private
# Postgres, RabbitMQ and Redis (the `local` instance), builds the services,
# migrates the schema, starts two gateways, one persister and presence, and
# nginx in front of the gateways. Running it again is harmless: what runs is
# left running. Stop everything with deploy/down.sh.
#
#   deploy/up.sh
#
# Environment: CHAT_BUILD_PROFILE (release, or dev for a quicker build),
# CARGO_TARGET_DIR (default ~/.cache/mapmo-chat/target, shared with tests),
# CHAT_SKIP_BUILD=1 (use the binaries as they are), CHAT_BIN_DIR (take the
# binaries from there), TRACES=1 (trace every message to chat-traces), PERSISTERS (default 1: more run as standbys, each partition has one active
# consumer; persister-N serves metrics on 127.0.0.1:911N).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd -P)"

PUBLIC_PORT=28080
GATEWAY_PORTS=(28081 28082)
RUN="$REPO/.data/local/run"
LOGS="$REPO/.data/local/logs"
BUILD_PROFILE="${CHAT_BUILD_PROFILE:-release}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mapmo-chat/target}"

say() { printf '[up] %s\n' "$*" >&2; }

deploy/services.sh install local
deploy/services.sh start local >/dev/null
eval "$(deploy/services.sh env local)"
export CHAT_PROFILE=local
# CHAT_TLS=1: the services reach Postgres, RabbitMQ and Redis over TLS, checking
# the servers' certificates against the instance's throw-away CA
# (deploy/services/tls.sh), as they would reach managed ones.
if [ "${CHAT_TLS:-}" = 1 ]; then
  export CHAT_DATABASE__URL="$MAPMO_TLS_DATABASE_URL" CHAT_DATABASE__CA_FILE="$MAPMO_TLS_CA_FILE" \
    CHAT_AMQP__URL="$MAPMO_TLS_AMQP_URL" CHAT_AMQP__CA_FILE="$MAPMO_TLS_CA_FILE" \
    CHAT_REDIS__URL="$MAPMO_TLS_REDIS_URL" CHAT_REDIS__CA_FILE="$MAPMO_TLS_CA_FILE"
  say "TLS to every backend (CA: $MAPMO_TLS_CA_FILE)"
fi
mkdir -p "$RUN" "$LOGS"

say "building the services ($BUILD_PROFILE profile; a first release build takes about 5 minutes on 2 cores)"
if [ "${CHAT_SKIP_BUILD:-}" != 1 ]; then
  cargo build --profile "$BUILD_PROFILE" -p chat-gateway -p chat-persister -p chat-presence -p chat-tests --bins
fi
case "$BUILD_PROFILE" in dev) BIN="$CARGO_TARGET_DIR/debug" ;; *) BIN="$CARGO_TARGET_DIR/$BUILD_PROFILE" ;; esac
# CHAT_BIN_DIR: run the binaries of another folder (benchmarks compare two
# commits side by side this way; with CHAT_SKIP_BUILD=1).
BIN="${CHAT_BIN_DIR:-$BIN}"

# CHAT_SKIP_MIGRATE=1: the schema is migrated already (deploy/bench-compare.sh
# migrates once, with every variant, so an older build runs on the newer
# schema: a new migration only adds).
if [ "${CHAT_SKIP_MIGRATE:-}" != 1 ]; then
  say "migrating the schema"
  "$BIN/chat-persister" migrate
fi

# start NAME COMMAND [ENV=VALUE...] [-- ARG...]: runs COMMAND in the
# background with its log in $LOGS/NAME.log and its pid in $RUN/NAME.pid,
# unless it already runs.
start() {
  local name=$1 cmd=$2 envs=() args=()
  shift 2
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  [ $# -gt 0 ] && shift && args=("$@")
  set -- "${envs[@]}"
  local pidfile="$RUN/$name.pid" pid
  pid=$(head -c 32 "$pidfile" 2>/dev/null | tr -d '[:space:]' || true)
  # Already running: the pid file names a live process of this very program
  # (a stale or planted pid file is ignored, never signalled).
  if [[ "$pid" =~ ^[0-9]{1,10}$ ]] &&
    [ "$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | head -n1)" = "$cmd" ]; then
    say "$name already running (pid $pid)"
    return
  fi
  env "$@" nohup "$cmd" "${args[@]}" >>"$LOGS/$name.log" 2>&1 &
  echo $! >"$pidfile"
  say "$name started (pid $!, log $LOGS/$name.log)"
}

# TRACES=1: every message traced (sample ratio 1) to chat-traces, the
# project's own OTLP receiver (Debian 12 packages no collector or trace
# viewer); `chat-traces show <message id>` prints a message's trace.
# Services already running keep their settings: deploy/down.sh first.
TRACES_PORT=24318
if [ "${TRACES:-}" = 1 ]; then
  start traces "$BIN/chat-traces" -- serve --listen "127.0.0.1:$TRACES_PORT" --file "$REPO/.data/local/traces.jsonl"
  export CHAT_TELEMETRY__OTLP_ENDPOINT="http://127.0.0.1:$TRACES_PORT" CHAT_TELEMETRY__SAMPLE_RATIO=1.0
fi

start persister "$BIN/chat-persister"
for n in $(seq 2 "${PERSISTERS:-1}"); do
  start "persister-$n" "$BIN/chat-persister" "CHAT_PERSISTER__METRICS_LISTEN=127.0.0.1:$((9110 + n))"
done
start presence "$BIN/chat-presence"
i=0
for port in "${GATEWAY_PORTS[@]}"; do
  i=$((i + 1))
  start "gateway-$i" "$BIN/chat-gateway" "CHAT_GATEWAY__LISTEN=127.0.0.1:$port" \
    "CHAT_GATEWAY__METRICS_LISTEN=127.0.0.1:$((port + 100))"
done

# ready PORT: true when the gateway on PORT answers /ready with 200 (no curl needed).
ready() {
  local status
  { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
  printf 'GET /ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
  read -r _ status _ <&3 || true
  exec 3<&- 3>&-
  [ "$status" = 200 ]
}
for port in "${GATEWAY_PORTS[@]}"; do
  for _ in $(seq 1 150); do
    ready "$port" && break
    sleep 0.2
  done
  ready "$port" || {
    say "gateway on port $port is not ready after 30 s; see $LOGS/gateway-*.log"
    exit 1
  }
done

upstreams=()
for port in "${GATEWAY_PORTS[@]}"; do upstreams+=("127.0.0.1:$port"); done
deploy/services.sh nginx-start local "$PUBLIC_PORT" "${upstreams[@]}"

# Prometheus (Debian's package) with the project's alert rules, scraping
# every service on its internal metrics port.
PROMETHEUS_PORT=29090
mkdir -p .data/local/prometheus
persister_targets='"127.0.0.1:9101"'
for n in $(seq 2 "${PERSISTERS:-1}"); do persister_targets+=", \"127.0.0.1:$((9110 + n))\""; done
sed -e "s#@@RULES@@#$REPO/deploy/observability/rules.yml#" \
  -e "s#@@PERSISTER_TARGETS@@#$persister_targets#" \
  deploy/observability/prometheus.yml.tmpl >.data/local/prometheus/prometheus.yml
start prometheus /usr/bin/prometheus -- \
  "--config.file=$REPO/.data/local/prometheus/prometheus.yml" \
  "--storage.tsdb.path=$REPO/.data/local/prometheus/data" \
  "--web.listen-address=127.0.0.1:$PROMETHEUS_PORT"

secret=$(sed -n 's/^jwt_secret = "\(.*\)"/\1/p' config/local.toml)
server_key=$(sed -n 's/^server_api_keys = \["\(.*\)"\]/\1/p' config/local.toml)
cat <<MSG

mapmo-chat is up. Open http://127.0.0.1:$PUBLIC_PORT/ in a browser and log in with any
user id; chat with a second tab (or browser) logged in as another user.

  Public entry point (nginx, load-balancing both gateways):
    http://127.0.0.1:$PUBLIC_PORT        WebSocket: ws://127.0.0.1:$PUBLIC_PORT/ws
  Gateways, directly:
    http://127.0.0.1:${GATEWAY_PORTS[0]}   http://127.0.0.1:${GATEWAY_PORTS[1]}
  Metrics and alerts (Prometheus, rules of deploy/observability/):
    http://127.0.0.1:$PROMETHEUS_PORT/alerts   dashboard to import in Grafana: deploy/observability/dashboard.json

  A token (the local profile's dev login):
    curl -s -XPOST http://127.0.0.1:$PUBLIC_PORT/api/dev/token -H 'content-type: application/json' -d '{"user_id": 42, "name": "An"}'
  JWT secret of the local profile (HS256): $secret

  Try it with the shipped client, in two terminals:
    $BIN/chat-client --url http://127.0.0.1:$PUBLIC_PORT --user 1     then: /direct 2, and type
    $BIN/chat-client --url http://127.0.0.1:$PUBLIC_PORT --user 2     then: /direct 1, and type

  The host site's server API (docs/integration.md), with the local key:
    curl -sX PUT http://127.0.0.1:$PUBLIC_PORT/api/server/users/42 -H "Authorization: ApiKey $server_key" \\
      -H 'content-type: application/json' -d '{"name": "An"}'
  The unread webhook: run a receiver that prints and verifies events,
    deploy/webhook-receiver.py 28099 local-webhook-secret-not-a-secret-0123456789
  then deploy/down.sh and
    CHAT_NOTIFY__WEBHOOK_URL=http://127.0.0.1:28099/ CHAT_NOTIFY__WEBHOOK_SECRET=local-webhook-secret-not-a-secret-0123456789 CHAT_NOTIFY__DELAY_MS=10000 deploy/up.sh

  Traces: $( [ "${TRACES:-}" = 1 ] && echo "every message, to chat-traces on 127.0.0.1:$TRACES_PORT; one message's trace:
    $BIN/chat-traces show --file $REPO/.data/local/traces.jsonl <message id or client_msg_id>" || echo "off (TRACES=1 deploy/up.sh after deploy/down.sh traces every message)")

  Logs: $LOGS/ (gateway-1.log, gateway-2.log, persister.log, presence.log, postgres.log, rabbitmq.log, redis.log, nginx-*.log)
  Stop: deploy/down.sh
MSG
