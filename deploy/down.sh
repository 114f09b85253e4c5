#!/usr/bin/env bash
# Stops what deploy/up.sh started: the services (SIGTERM: gateways close their
# sessions with 1012, the persister finishes its batch), nginx, and the
# local Postgres, RabbitMQ and Redis. Data stays in .data/local.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=.data/local/run

for pidfile in "$RUN"/*.pid; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  name=$(basename "$pidfile" .pid)
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    printf '[down] %s stopped\n' "$name" >&2
  fi
  rm -f "$pidfile"
done
deploy/services.sh nginx-stop local
deploy/services.sh stop local
