#!/usr/bin/env bash
# Stops what deploy/up.sh started: the services (SIGTERM: gateways close their
# sessions with 1012, the persister finishes its batch), nginx, and the
# local Postgres, RabbitMQ and Redis. Data stays in .data/local.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=.data/local/run

warn() { printf '[down] warning: %s\n' "$*" >&2; }

for pidfile in "$RUN"/*.pid; do
  [ -f "$pidfile" ] || continue
  name=$(basename "$pidfile" .pid)
  # up.sh writes <name>.pid for chat-<name without -N>: gateway-1 -> chat-gateway
  program="chat-${name%-[0-9]*}"
  [ "$name" = prometheus ] && program=prometheus
  pid=$(head -c 32 "$pidfile" | tr -d '[:space:]')
  # a number, and a live process running that program; anything else is not ours
  if ! [[ "$pid" =~ ^[0-9]{1,10}$ ]] || (( 10#$pid <= 1 )); then
    warn "$pidfile does not hold a pid (> 1); skipped"
    rm -f "$pidfile"
    continue
  fi
  pid=$(( 10#$pid ))
  exe=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | head -n1 || true)
  if [ -z "$exe" ]; then rm -f "$pidfile"; continue; fi   # gone
  if [ "$(basename -- "$exe")" != "$program" ]; then
    warn "pid $pid of $pidfile is not $program (it runs $exe); not stopping it"
    rm -f "$pidfile"
    continue
  fi
  kill -TERM "$pid" 2>/dev/null || { warn "cannot signal $name (pid $pid)"; continue; }
  rm -f "$pidfile"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  printf '[down] %s stopped\n' "$name" >&2
done
deploy/services.sh nginx-stop local
deploy/services.sh stop local
