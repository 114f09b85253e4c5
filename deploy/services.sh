#!/usr/bin/env bash
# deploy/services.sh — private Postgres / RabbitMQ / Redis (and nginx) instances
# for the chat system, for development ("local") and tests/CI ("test").
#
# Usage:
#   deploy/services.sh install     <instance>   apt-get install whatever of postgresql,
#                                               rabbitmq-server, redis-server, nginx is missing
#   deploy/services.sh start       <instance>   start Postgres, RabbitMQ, Redis (idempotent),
#                                               wait until ready, print the connection URLs
#   deploy/services.sh stop        <instance>   stop them (and the instance's nginx); idempotent
#   deploy/services.sh status      <instance>   say what is running
#   deploy/services.sh env         <instance>   print only the CHAT_* exports, for
#                                               eval "$(deploy/services.sh env test)"
#   deploy/services.sh nginx-start <instance> <listen_port> <upstream>...
#                                               e.g. nginx-start local 28080 127.0.0.1:28081 127.0.0.1:28082
#                                               (re)generate the nginx config from
#                                               deploy/nginx.conf.tmpl and start nginx, or
#                                               reload it if it already runs for the instance
#   deploy/services.sh nginx-stop  <instance>
#   deploy/services.sh rabbitmqctl <instance> <args>...
#                                               run rabbitmqctl (also: rabbitmq-diagnostics,
#                                               rabbitmq-queues) against the instance's node
#                                               with the right node name and cookie
#
# Instances (ports fixed per instance, away from the default system ports):
#               Postgres  AMQP   Erlang dist  Redis
#   local       25432     25672  27672        26379     (nginx port chosen by the caller)
#   test        35432     35672  37672        36379
#
# Layout (<repo> = the directory containing deploy/; .data is git-ignored):
#   <repo>/.data/<instance>/pg/          Postgres cluster (initdb --auth=trust -U chat)
#   <repo>/.data/<instance>/pgsock/      its unix socket dir (or /tmp/chat-pg-<instance>-<hash>
#                                        when the repo path is too long for a socket path)
#   <repo>/.data/<instance>/rabbitmq/    RabbitMQ: rabbitmq.conf, enabled_plugins, mnesia/,
#                                        home/.erlang.cookie (shared by server and CLI), pid
#   <repo>/.data/<instance>/redis/       redis.conf, pid, working dir
#   <repo>/.data/<instance>/nginx/       nginx.conf, pid, temp dirs
#   <repo>/.data/<instance>/logs/        postgres.log, rabbitmq.log, rabbitmq-console.log,
#                                        redis.log, nginx-error.log, nginx-access.log
#
# As root, Postgres runs as the `postgres` system user (it refuses to run as root), the
# other servers run as root. As a plain user everything runs as that user (sudo is used
# only for apt-get). The Debian wrappers /usr/sbin/rabbitmq-server and
# /usr/sbin/rabbitmqctl are bypassed: they switch to the `rabbitmq` user and its
# /var/lib/rabbitmq cookie; the real scripts in /usr/lib/rabbitmq/bin are used instead.
#
# Environment knobs: CHAT_SERVICES_TIMEOUT (readiness timeout in seconds, default 90).

set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true   # bash 5.2: '&' in ${x//a/b} is literal

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
DEPLOY_DIR="$REPO_DIR/deploy"
TIMEOUT="${CHAT_SERVICES_TIMEOUT:-90}"
RABBIT_LIB_BIN=/usr/lib/rabbitmq/bin

log()  { printf '[services] %s\n' "$*" >&2; }
die()  { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }
# die_log MESSAGE LOGFILE...: show the end of each log, then fail naming the logs
die_log() {
    local msg="$1" f; shift
    for f in "$@"; do
        [ -s "$f" ] || continue
        printf '[services] --- last lines of %s ---\n' "$f" >&2
        tail -n 12 "$f" | sed 's/^/[services]   /' >&2
    done
    die "$msg; see $*"
}
is_root() { [ "$(id -u)" -eq 0 ]; }

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
}

# ---------------------------------------------------------------------------
# Instance table: the only place where per-instance values live.
# ---------------------------------------------------------------------------
select_instance() {
    INSTANCE="${1:-}"
    case "$INSTANCE" in
        local) PG_PORT=25432; AMQP_PORT=25672; DIST_PORT=27672; REDIS_PORT=26379 ;;
        test)  PG_PORT=35432; AMQP_PORT=35672; DIST_PORT=37672; REDIS_PORT=36379 ;;
        "")    usage ;;
        *)     die "unknown instance '$INSTANCE' (expected: local, test)" ;;
    esac
    # Erlang distribution: the node listens on DIST_PORT, CLI tools use DIST_PORT+1..+10.
    (( DIST_PORT + 10 < 65536 )) || die "Erlang distribution port out of range: $DIST_PORT"

    DATA_DIR="$REPO_DIR/.data/$INSTANCE"
    LOG_DIR="$DATA_DIR/logs"

    # Postgres runs as the `postgres` user when we are root; if that user cannot
    # enter the repo (a clone under /root, say), its data and log live under
    # /var/lib/mapmo-chat/<hash of the repo path>/<instance> instead.
    PG_HOME="$DATA_DIR"
    if [ "$(id -u)" -eq 0 ] && getent passwd postgres >/dev/null &&
        ! runuser -u postgres -- test -x "$REPO_DIR" 2>/dev/null; then
        PG_HOME="/var/lib/mapmo-chat/$(printf '%s' "$REPO_DIR" | md5sum | cut -c1-10)/$INSTANCE"
    fi
    PG_DATA="$PG_HOME/pg"
    if [ "$PG_HOME" = "$DATA_DIR" ]; then PG_LOG="$LOG_DIR/postgres.log"; else PG_LOG="$PG_HOME/postgres.log"; fi
    PG_SOCK_DIR="$DATA_DIR/pgsock"
    # unix socket paths are limited to 107 bytes; keep ours well below 100 (and
    # where postgres can reach it)
    if (( ${#PG_SOCK_DIR} + ${#PG_PORT} + 10 >= 100 )) || [ "$PG_HOME" != "$DATA_DIR" ]; then
        PG_SOCK_DIR="/tmp/chat-pg-$INSTANCE-$(printf '%s' "$REPO_DIR" | md5sum | cut -c1-10)"
    fi

    RABBIT_DIR="$DATA_DIR/rabbitmq"
    RABBIT_NODE="chat-$INSTANCE@localhost"
    RABBIT_LOG="$LOG_DIR/rabbitmq.log"
    RABBIT_CONSOLE_LOG="$LOG_DIR/rabbitmq-console.log"
    RABBIT_PID_FILE="$RABBIT_DIR/rabbitmq.pid"
    # Environment for the server and the CLI tools alike. The shared HOME gives both the
    # same $HOME/.erlang.cookie. Erlang distribution and epmd are kept on loopback.
    RABBIT_ENV=(env
        HOME="$RABBIT_DIR/home"
        RABBITMQ_NODENAME="$RABBIT_NODE"
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        RABBITMQ_NODE_PORT="$AMQP_PORT"
        RABBITMQ_DIST_PORT="$DIST_PORT"
        RABBITMQ_CTL_DIST_PORT_MIN="$(( DIST_PORT + 1 ))"
        RABBITMQ_CTL_DIST_PORT_MAX="$(( DIST_PORT + 10 ))"
        # +sbwt none...: Erlang schedulers do not spin while idle (they would
        # burn the CPU the services on this machine share with the broker).
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none"
        RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
        ERL_EPMD_ADDRESS=127.0.0.1
        ERL_CRASH_DUMP="$RABBIT_DIR/erl_crash.dump"
        RABBITMQ_CONF_ENV_FILE="$RABBIT_DIR/rabbitmq-env.conf"
        RABBITMQ_CONFIG_FILE="$RABBIT_DIR/rabbitmq.conf"
        RABBITMQ_ADVANCED_CONFIG_FILE="$RABBIT_DIR/advanced.config"
        RABBITMQ_ENABLED_PLUGINS_FILE="$RABBIT_DIR/enabled_plugins"
        RABBITMQ_MNESIA_BASE="$RABBIT_DIR/mnesia"
        RABBITMQ_LOG_BASE="$LOG_DIR"
        RABBITMQ_LOGS="$RABBIT_LOG"
        RABBITMQ_PID_FILE="$RABBIT_PID_FILE")

    REDIS_DIR="$DATA_DIR/redis"
    REDIS_LOG="$LOG_DIR/redis.log"
    REDIS_PID_FILE="$REDIS_DIR/redis.pid"

    NGINX_DIR="$DATA_DIR/nginx"
    NGINX_CONF="$NGINX_DIR/nginx.conf"
    NGINX_PID_FILE="$NGINX_DIR/nginx.pid"
    NGINX_ERROR_LOG="$LOG_DIR/nginx-error.log"
    NGINX_ACCESS_LOG="$LOG_DIR/nginx-access.log"

    DATABASE_URL="postgres://chat@127.0.0.1:$PG_PORT/chat"
    AMQP_URL="amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"
}

ensure_base_dirs() {
    mkdir -p "$DATA_DIR" "$LOG_DIR"
    # the postgres user (when root) must be able to traverse these
    chmod 755 "$REPO_DIR/.data" "$DATA_DIR" "$LOG_DIR"
}

# Waits until "$@" succeeds; $1 = what, $2 = log file for the error message.
wait_until() {
    local what="$1" logfile="$2"; shift 2
    local deadline=$(( SECONDS + TIMEOUT ))
    until "$@" >/dev/null 2>&1; do
        if (( SECONDS >= deadline )); then
            die_log "$what did not become ready within ${TIMEOUT}s" "$logfile"
        fi
        sleep 0.5
    done
}

# true when something accepts TCP connections on 127.0.0.1:$1
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# true when process $1 exists and is not a zombie (daemons end up as children of
# pid 1, which may reap them late)
proc_alive() {
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}
# true when the pid file $1 names a live process
pid_alive() {
    local pid
    [ -f "$1" ] && pid="$(cat "$1" 2>/dev/null)" && [[ "$pid" =~ ^[0-9]+$ ]] && proc_alive "$pid"
}

# ---------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------
cmd_install() {
    local missing=() sudo=()
    is_root || sudo=(sudo)
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
    [ -x /usr/sbin/rabbitmq-server ] || missing+=(rabbitmq-server)
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server redis-tools)
    [ -x /usr/sbin/nginx ] || missing+=(nginx)
    if [ ${#missing[@]} -eq 0 ]; then
        log "postgresql, rabbitmq-server, redis-server and nginx are already installed"
        return 0
    fi
    log "installing: ${missing[*]}"

    # Keep the packages' postinst from starting the default system instances.
    local policy=/usr/sbin/policy-rc.d created_policy=0 foreign_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# temporary, created by chat deploy/services.sh install\nexit 101\n' |
            "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        created_policy=1
        # shellcheck disable=SC2064  # expand now: the locals are gone when the trap runs
        trap "${sudo[*]} rm -f $policy" EXIT
    elif ! grep -q 'exit 101' "$policy"; then
        foreign_policy=1   # someone else's policy; stop default instances afterwards
    fi

    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"

    if [ "$created_policy" = 1 ]; then
        "${sudo[@]}" rm -f "$policy"
        trap - EXIT
    fi
    if [ "$foreign_policy" = 1 ]; then
        local svc
        for svc in rabbitmq-server redis-server nginx postgresql; do
            if [ -x "/etc/init.d/$svc" ]; then
                "${sudo[@]}" "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
            fi
        done
        log "stopped default system instances the packages may have started"
    fi
    log "install done"
}

# PG_BIN = bin dir of the newest installed Postgres major version ("" if none)
find_pg_bin() {
    PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
}

require_installed() {
    find_pg_bin
    [ -n "$PG_BIN" ] && [ -x "$PG_BIN/postgres" ] || die "postgresql not installed; run: $0 install $INSTANCE"
    [ -x "$RABBIT_LIB_BIN/rabbitmq-server" ] || die "rabbitmq-server not installed; run: $0 install $INSTANCE"
    command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 ||
        die "redis-server not installed; run: $0 install $INSTANCE"
}

# ---------------------------------------------------------------------------
# Postgres
# ---------------------------------------------------------------------------
# Runs a server-side pg command as the right OS user (from /, which postgres can enter).
pg_run() {
    if is_root; then (cd / && exec runuser -u postgres -- "$@"); else "$@"; fi
}

# Client commands go over TCP with trust auth, so any OS user works.
pg_psql() { "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U chat "$@"; }

pg_running() { [ -f "$PG_DATA/PG_VERSION" ] && pg_run "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; }

pg_check_traversable() {
    is_root || return 0
    getent passwd postgres >/dev/null || die "system user 'postgres' missing (is postgresql installed?)"
    if [ "$PG_HOME" != "$DATA_DIR" ]; then
        mkdir -p "$PG_HOME"
        log "postgres: $REPO_DIR is not reachable by user postgres; data and log in $PG_HOME"
    fi
    runuser -u postgres -- test -x "$PG_HOME" && return 0
    # report the topmost directory that postgres cannot enter
    local d="" part
    local -a parts
    IFS=/ read -r -a parts <<<"${PG_HOME#/}"
    for part in "${parts[@]}"; do
        d="$d/$part"
        runuser -u postgres -- test -x "$d" ||
            die "user 'postgres' cannot enter $d (mode $(stat -c %A "$d"), owner $(stat -c %U "$d")), so Postgres cannot use $PG_DATA. Make the parent directories traversable (chmod o+x $d) or clone the repo elsewhere."
    done
    die "user 'postgres' cannot reach $PG_HOME"
}

pg_write_conf() {
    # regenerated on every start; included from postgresql.conf
    local conf="$PG_DATA/chat.conf"
    cat >"$conf" <<EOF
# generated by deploy/services.sh; edits are overwritten on start
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK_DIR'
max_connections = 200
# Large enough that a benchmark's writes stay in Postgres's buffers until a
# checkpoint: with 256MB, evicted dirty pages went to the kernel and came
# back as 65 MB write-back bursts every few seconds, behind which the WAL
# fsyncs (and so the commits) waited (docs/benchmarks.md).
shared_buffers = 1GB
fsync = on
synchronous_commit = on
# Fewer checkpoints under a write-heavy load: each one makes the next write
# of every page log a full page image, which showed as latency spikes at
# 10,000 msg/s with the default 1GB (docs/benchmarks.md).
max_wal_size = 4GB
checkpoint_timeout = 15min
log_checkpoints = on
log_autovacuum_min_duration = 1000
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
EOF
    is_root && chown postgres:postgres "$conf"
    return 0
}

pg_start() {
    pg_check_traversable
    mkdir -p "$PG_SOCK_DIR"
    touch "$PG_LOG"
    if is_root; then
        chown postgres:postgres "$PG_SOCK_DIR" "$PG_LOG"
    fi
    chmod 700 "$PG_SOCK_DIR"

    if pg_running; then
        log "postgres ($INSTANCE) already running on 127.0.0.1:$PG_PORT"
    else
        if [ ! -f "$PG_DATA/PG_VERSION" ]; then
            log "postgres: initdb in $PG_DATA"
            mkdir -p "$PG_DATA"
            is_root && chown postgres:postgres "$PG_DATA"
            chmod 700 "$PG_DATA"
            pg_run "$PG_BIN/initdb" -D "$PG_DATA" --auth=trust -U chat -E UTF8 --locale=C.UTF-8 \
                >>"$PG_LOG" 2>&1 || die_log "initdb failed" "$PG_LOG"
            printf "\ninclude_if_exists = 'chat.conf'\n" >>"$PG_DATA/postgresql.conf"
        fi
        pg_write_conf
        log "postgres: starting on 127.0.0.1:$PG_PORT (log: $PG_LOG)"
        pg_run "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$TIMEOUT" start >/dev/null ||
            die_log "postgres failed to start" "$PG_LOG"
    fi
    wait_until "postgres" "$PG_LOG" pg_psql -d postgres -tAc 'SELECT 1'
    if [ "$(pg_psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'chat'")" != 1 ]; then
        pg_psql -d postgres -c 'CREATE DATABASE chat OWNER chat' >/dev/null
        log "postgres: created database chat"
    fi
}

pg_stop() {
    if pg_running; then
        log "postgres: stopping"
        pg_run "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t "$TIMEOUT" stop >/dev/null ||
            die_log "postgres did not stop" "$PG_LOG"
    else
        log "postgres ($INSTANCE) not running"
    fi
    case "$PG_SOCK_DIR" in /tmp/chat-pg-*) rmdir "$PG_SOCK_DIR" 2>/dev/null || true ;; esac
}

# ---------------------------------------------------------------------------
# RabbitMQ (run via /usr/lib/rabbitmq/bin/*, not the Debian /usr/sbin wrappers)
# ---------------------------------------------------------------------------
rabbit_ctl()  { "${RABBIT_ENV[@]}" "$RABBIT_LIB_BIN/rabbitmqctl" -n "$RABBIT_NODE" "$@"; }
# true when the pid file names a live beam process of this instance (recognised by its
# "-home <RABBIT_DIR>/home" argument); checked before any CLI call, because the CLI tools
# start an epmd daemon as a side effect
rabbit_proc_alive() {
    pid_alive "$RABBIT_PID_FILE" &&
        tr '\0' ' ' <"/proc/$(cat "$RABBIT_PID_FILE")/cmdline" 2>/dev/null |
            grep -qF -- "-home $RABBIT_DIR/home "
}
rabbit_ping() { "${RABBIT_ENV[@]}" "$RABBIT_LIB_BIN/rabbitmq-diagnostics" -q -n "$RABBIT_NODE" ping >/dev/null 2>&1; }

rabbit_prepare() {
    mkdir -p "$RABBIT_DIR/home" "$RABBIT_DIR/mnesia"
    chmod 700 "$RABBIT_DIR/home"
    local cookie="$RABBIT_DIR/home/.erlang.cookie"
    if [ ! -s "$cookie" ]; then
        (umask 077; head -c 32 /dev/urandom | md5sum | cut -c1-20 | tr 'a-f' 'A-F' >"$cookie")
    fi
    chmod 400 "$cookie"
    : >"$RABBIT_DIR/rabbitmq-env.conf"            # keep /etc/rabbitmq/rabbitmq-env.conf out
    printf '[].\n' >"$RABBIT_DIR/enabled_plugins"   # no management plugin on 15672
    cat >"$RABBIT_DIR/rabbitmq.conf" <<EOF
# generated by deploy/services.sh; edits are overwritten on start
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
vm_memory_high_watermark.relative = 0.4
disk_free_limit.absolute = 200MB
EOF
}

rabbit_start() {
    local launcher=""
    if rabbit_proc_alive; then
        if rabbit_ping; then
            log "rabbitmq ($RABBIT_NODE) already running on 127.0.0.1:$AMQP_PORT"
            return 0
        fi
        log "rabbitmq ($RABBIT_NODE): process $(cat "$RABBIT_PID_FILE") exists, waiting for it"
    else
        tcp_open "$AMQP_PORT" && die "port $AMQP_PORT is already in use by another process"
        rabbit_prepare
        log "rabbitmq: starting $RABBIT_NODE on 127.0.0.1:$AMQP_PORT (log: $RABBIT_LOG, console: $RABBIT_CONSOLE_LOG)"
        # setsid+nohup: the node survives the calling shell; no fds of the caller are kept open
        ( cd "$RABBIT_DIR" &&
          exec "${RABBIT_ENV[@]}" setsid nohup "$RABBIT_LIB_BIN/rabbitmq-server" ) \
            </dev/null >>"$RABBIT_CONSOLE_LOG" 2>&1 &
        launcher=$!
    fi
    local deadline=$(( SECONDS + TIMEOUT ))
    until tcp_open "$AMQP_PORT" && rabbit_ping; do
        if [ -n "$launcher" ] && ! proc_alive "$launcher"; then
            die_log "rabbitmq exited during startup" "$RABBIT_CONSOLE_LOG" "$RABBIT_LOG"
        fi
        (( SECONDS < deadline )) ||
            die_log "rabbitmq did not become ready within ${TIMEOUT}s" "$RABBIT_LOG" "$RABBIT_CONSOLE_LOG"
        sleep 0.5
    done
}

# epmd is shared by all Erlang nodes; end it only when no node is registered any more.
epmd_cleanup() {
    command -v epmd >/dev/null 2>&1 || return 0
    local names
    names="$(epmd -names 2>/dev/null)" || return 0
    if ! grep -q '^name ' <<<"$names"; then
        epmd -kill >/dev/null 2>&1 || true
    fi
}

rabbit_stop() {
    if ! rabbit_proc_alive; then
        log "rabbitmq ($RABBIT_NODE) not running"
        return 0
    fi
    if rabbit_ping; then
        log "rabbitmq: stopping $RABBIT_NODE"
        rabbit_ctl stop "$RABBIT_PID_FILE" >/dev/null 2>&1 || true
    else
        log "rabbitmq: node does not answer, terminating pid $(cat "$RABBIT_PID_FILE")"
        kill "$(cat "$RABBIT_PID_FILE")" 2>/dev/null || true
    fi
    local deadline=$(( SECONDS + TIMEOUT ))
    while rabbit_proc_alive; do
        (( SECONDS < deadline )) || die_log "rabbitmq did not stop" "$RABBIT_LOG"
        sleep 0.5
    done
    rm -f "$RABBIT_PID_FILE"
    epmd_cleanup
}

# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------
redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

redis_start() {
    if redis_ping; then
        log "redis ($INSTANCE) already running on 127.0.0.1:$REDIS_PORT"
        return 0
    fi
    tcp_open "$REDIS_PORT" && die "port $REDIS_PORT is already in use by another process"
    mkdir -p "$REDIS_DIR"
    cat >"$REDIS_DIR/redis.conf" <<EOF
# generated by deploy/services.sh; edits are overwritten on start
bind 127.0.0.1
protected-mode yes
port $REDIS_PORT
daemonize yes
supervised no
pidfile $REDIS_PID_FILE
logfile $REDIS_LOG
dir $REDIS_DIR
# presence state is ephemeral: no persistence
save ""
appendonly no
EOF
    log "redis: starting on 127.0.0.1:$REDIS_PORT (log: $REDIS_LOG)"
    redis-server "$REDIS_DIR/redis.conf" >>"$REDIS_LOG" 2>&1 || die_log "redis-server failed" "$REDIS_LOG"
    wait_until "redis" "$REDIS_LOG" redis_ping
}

redis_stop() {
    if redis_ping; then
        log "redis: stopping"
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
        local deadline=$(( SECONDS + TIMEOUT ))
        while redis_ping || pid_alive "$REDIS_PID_FILE"; do
            (( SECONDS < deadline )) || die_log "redis did not stop" "$REDIS_LOG"
            sleep 0.2
        done
    else
        log "redis ($INSTANCE) not running"
    fi
}

# ---------------------------------------------------------------------------
# nginx
# ---------------------------------------------------------------------------
nginx_cmd() { /usr/sbin/nginx -p "$NGINX_DIR/" -c "$NGINX_CONF" -e "$NGINX_ERROR_LOG" "$@"; }

nginx_running() {
    pid_alive "$NGINX_PID_FILE" && grep -q nginx "/proc/$(cat "$NGINX_PID_FILE")/cmdline" 2>/dev/null
}

# worker pids of nginx master $1
nginx_workers() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }

cmd_nginx_start() {
    local listen_port="${1:-}"; shift || true
    [ -x /usr/sbin/nginx ] || die "nginx not installed; run: $0 install $INSTANCE"
    [[ "$listen_port" =~ ^[0-9]+$ ]] && (( listen_port > 0 && listen_port < 65536 )) ||
        die "usage: $0 nginx-start <instance> <listen_port> <upstream host:port>..."
    [ $# -ge 1 ] || die "nginx-start: give at least one upstream host:port"

    local up servers=""
    for up in "$@"; do
        [[ "$up" =~ ^[A-Za-z0-9._-]+:[0-9]+$ || "$up" =~ ^\[[0-9A-Fa-f:]+\]:[0-9]+$ ]] ||
            die "nginx-start: bad upstream '$up' (expected host:port)"
        servers+="        server $up max_fails=1 fail_timeout=5s;"$'\n'
    done

    # worker_connections counts client and upstream connections, one fd each. Ask for
    # 65536 fds if this process may raise its limit that far, else take the hard limit.
    local nofile=65536 user_directive="# master runs unprivileged: workers keep its user"
    if ! (ulimit -n "$nofile") 2>/dev/null; then
        nofile="$(ulimit -Hn)"
        [ "$nofile" != unlimited ] || nofile=65536
    fi
    is_root && user_directive="user www-data;"
    local worker_conns=$(( nofile < 20000 ? nofile : 20000 ))

    ensure_base_dirs
    mkdir -p "$NGINX_DIR/temp"
    local t
    for t in client_body proxy fastcgi uwsgi scgi; do
        mkdir -p "$NGINX_DIR/temp/$t"
        is_root && chown www-data "$NGINX_DIR/temp/$t"
    done

    local tmpl conf
    tmpl="$(<"$DEPLOY_DIR/nginx.conf.tmpl")"
    conf="${tmpl//@@INSTANCE@@/$INSTANCE}"
    conf="${conf//@@USER_DIRECTIVE@@/$user_directive}"
    conf="${conf//@@RLIMIT_NOFILE@@/$nofile}"
    conf="${conf//@@WORKER_CONNECTIONS@@/$worker_conns}"
    conf="${conf//@@NGINX_DIR@@/$NGINX_DIR}"
    conf="${conf//@@PID_FILE@@/$NGINX_PID_FILE}"
    conf="${conf//@@ERROR_LOG@@/$NGINX_ERROR_LOG}"
    conf="${conf//@@ACCESS_LOG@@/$NGINX_ACCESS_LOG}"
    conf="${conf//@@LISTEN_PORT@@/$listen_port}"
    conf="${conf//@@UPSTREAM_SERVERS@@/${servers%$'\n'}}"
    if grep -q '@@[A-Z_]*@@' <<<"$conf"; then
        die "unsubstituted placeholder in nginx config: $(grep -o '@@[A-Z_]*@@' <<<"$conf" | head -n1)"
    fi
    printf '%s\n' "$conf" >"$NGINX_CONF.new"
    nginx_cmd -t -q -c "$NGINX_CONF.new" 2>>"$NGINX_ERROR_LOG" ||
        die_log "generated nginx config is invalid ($NGINX_CONF.new)" "$NGINX_ERROR_LOG"
    mv "$NGINX_CONF.new" "$NGINX_CONF"

    if nginx_running; then
        log "nginx ($INSTANCE): reloading with upstreams $* on 127.0.0.1:$listen_port"
        local master old_workers
        master="$(cat "$NGINX_PID_FILE")"
        old_workers=" $(nginx_workers "$master" | tr '\n' ' ') "
        nginx_cmd -s reload 2>>"$NGINX_ERROR_LOG" || die_log "nginx reload failed" "$NGINX_ERROR_LOG"
        # The reload is done once the master has forked workers with the new config and
        # the old workers are gone (they exit within worker_shutdown_timeout, 10s).
        local deadline=$(( SECONDS + 15 )) w new="" old_left
        while :; do
            old_left=""
            for w in $(nginx_workers "$master"); do
                if [[ "$old_workers" == *" $w "* ]]; then old_left+=" $w"; else new="$w"; fi
            done
            [ -n "$new" ] && [ -z "$old_left" ] && break
            if (( SECONDS >= deadline )); then
                [ -n "$new" ] || die_log "nginx did not apply the new config" "$NGINX_ERROR_LOG"
                log "nginx: old workers still draining:$old_left"
                break
            fi
            sleep 0.2
        done
    else
        tcp_open "$listen_port" && die "port $listen_port is already in use by another process"
        log "nginx ($INSTANCE): starting on 127.0.0.1:$listen_port -> $* (logs: $NGINX_ERROR_LOG, $NGINX_ACCESS_LOG)"
        nginx_cmd 2>>"$NGINX_ERROR_LOG" || die_log "nginx failed to start" "$NGINX_ERROR_LOG"
    fi
    wait_until "nginx" "$NGINX_ERROR_LOG" tcp_open "$listen_port"
    log "nginx: http://127.0.0.1:$listen_port/"
}

cmd_nginx_stop() {
    if ! nginx_running; then
        log "nginx ($INSTANCE) not running"
        return 0
    fi
    local pid; pid="$(cat "$NGINX_PID_FILE")"
    log "nginx ($INSTANCE): stopping"
    kill -QUIT "$pid" 2>/dev/null || true      # graceful; worker_shutdown_timeout bounds it
    local deadline=$(( SECONDS + 20 ))
    while proc_alive "$pid"; do
        if (( SECONDS >= deadline )); then
            kill -TERM "$pid" 2>/dev/null || true
            sleep 1
            break
        fi
        sleep 0.2
    done
    rm -f "$NGINX_PID_FILE"
}

# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------
cmd_env() {
    printf 'export CHAT_DATABASE__URL=%s\n' "$DATABASE_URL"
    printf 'export CHAT_AMQP__URL=%s\n' "$AMQP_URL"
    printf 'export CHAT_REDIS__URL=%s\n' "$REDIS_URL"
}

cmd_start() {
    require_installed
    ensure_base_dirs
    local t0=$SECONDS
    pg_start
    log "postgres ready ($(( SECONDS - t0 ))s)"; t0=$SECONDS
    rabbit_start
    log "rabbitmq ready ($(( SECONDS - t0 ))s)"; t0=$SECONDS
    redis_start
    log "redis ready ($(( SECONDS - t0 ))s)"
    log "instance '$INSTANCE' is up (eval \"\$($0 env $INSTANCE)\" exports these):"
    echo "CHAT_DATABASE__URL=$DATABASE_URL"
    echo "CHAT_AMQP__URL=$AMQP_URL"
    echo "CHAT_REDIS__URL=$REDIS_URL"
}

cmd_stop() {
    [ -d "$DATA_DIR" ] || { log "instance '$INSTANCE' has no data dir; nothing to stop"; return 0; }
    cmd_nginx_stop
    redis_stop
    if [ -x "$RABBIT_LIB_BIN/rabbitmqctl" ]; then rabbit_stop; fi
    find_pg_bin
    if [ -n "$PG_BIN" ]; then pg_stop; fi
    log "instance '$INSTANCE' stopped"
}

cmd_status() {
    find_pg_bin
    if [ -n "$PG_BIN" ] && pg_running; then
        echo "postgres  running   $DATABASE_URL"
    else
        echo "postgres  stopped   (port $PG_PORT)"
    fi
    if rabbit_proc_alive && rabbit_ping; then
        echo "rabbitmq  running   $AMQP_URL (node $RABBIT_NODE)"
    else
        echo "rabbitmq  stopped   (port $AMQP_PORT, node $RABBIT_NODE)"
    fi
    if command -v redis-cli >/dev/null 2>&1 && redis_ping; then
        echo "redis     running   $REDIS_URL"
    else
        echo "redis     stopped   (port $REDIS_PORT)"
    fi
    if nginx_running; then
        local port; port="$(sed -n 's/^[[:space:]]*listen[[:space:]]\{1,\}127\.0\.0\.1:\([0-9]\{1,\}\).*/\1/p' "$NGINX_CONF" | head -n1)"
        echo "nginx     running   http://127.0.0.1:$port/ (pid $(cat "$NGINX_PID_FILE"))"
    else
        echo "nginx     stopped"
    fi
}

main() {
    local cmd="${1:-}"
    [ $# -ge 2 ] || usage
    select_instance "$2"
    shift 2
    case "$cmd" in
        install)     cmd_install ;;
        start)       cmd_start ;;
        stop)        cmd_stop ;;
        status)      cmd_status ;;
        env)         cmd_env ;;
        nginx-start) cmd_nginx_start "$@" ;;
        nginx-stop)  cmd_nginx_stop ;;
        rabbitmqctl|rabbitmq-diagnostics|rabbitmq-queues)
                     rabbit_proc_alive || die "rabbitmq ($RABBIT_NODE) is not running"
                     "${RABBIT_ENV[@]}" "$RABBIT_LIB_BIN/$cmd" -n "$RABBIT_NODE" "$@" ;;
        *)           die "unknown command '$cmd'" ;;
    esac
}

main "$@"
