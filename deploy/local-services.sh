# Sourced by deploy/faults.sh and deploy/bench-tracing.sh: the chat services
# that deploy/up.sh started (pid files in .data/local/run).
# shellcheck shell=bash

LOCAL_RUN="${LOCAL_RUN:-.data/local/run}"

# pid_of NAME: the pid recorded for a service, if that process is alive.
pid_of() {
  local pid
  pid=$(head -c 32 "$LOCAL_RUN/$1.pid" 2>/dev/null | tr -d '[:space:]' || true)
  [[ "$pid" =~ ^[0-9]{1,10}$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# stop NAME [SIGNAL]: signals a service (TERM by default) and waits up to
# 10 s until it is gone.
stop() {
  local pid
  pid=$(pid_of "$1") || return 0
  kill "-${2:-TERM}" "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$LOCAL_RUN/$1.pid"
}
