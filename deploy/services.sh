#!/usr/bin/env bash
# deploy/services.sh — private Postgres / RabbitMQ / Redis (and nginx) instances
# for the chat system, for development ("local") and tests/CI ("test").
#
# Usage:
#   deploy/services.sh install     <instance>   apt-get install whatever of postgresql,
#                                               rabbitmq-server, redis-server, nginx,
#                                               prometheus is missing
#   deploy/services.sh start       <instance>   start Postgres, RabbitMQ, Redis (idempotent),
#                                               wait until ready, print the connection URLs
#                                               (with their passwords)
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
#   deploy/services.sh stop-one    <instance> postgres|rabbitmq|redis
#                                               stop that server alone (`start` brings it back)
#   deploy/services.sh rabbit-policies <instance>
#                                               (re)apply the broker policies (persist queues
#                                               bounded; `start` does it; after a reset too)
#   deploy/services.sh redis-cli   <instance> <args>...
#                                               run redis-cli against the instance (password
#                                               passed in the environment)
#   deploy/services.sh rabbitmqctl <instance> <args>...
#                                               run rabbitmqctl (also: rabbitmq-diagnostics,
#                                               rabbitmq-queues) against the instance's node
#                                               with the right node name, cookie and OS user
#
# Instances (ports fixed per instance, away from the default system ports and below the
# kernel's ephemeral port range, 32768-60999 by default (net.ipv4.ip_local_port_range):
# a client connection there, e.g. one in TIME-WAIT, could hold a server's port):
#               Postgres  AMQP   Erlang dist  Redis
#   local       25432     25672  27672        26379     (nginx and gateways: deploy/up.sh,
#                                                        28080, 28081, 28082)
#   test        21432     21672  23672        21379
# Other ports: the RabbitMQ CLI tools use Erlang dist +1..+10, epmd listens on 4369
# (127.0.0.1, shared by every Erlang node). No RabbitMQ plugin is enabled (no management
# 15672, prometheus 15692, stream 5552). `start` warns when a port falls inside this
# machine's ephemeral range.
#
# Credentials: every server asks for a password, generated once per instance (random,
# 128 bits) into <repo>/.data/<instance>/secrets/{postgres,rabbitmq,redis}.password
# (directory 700, files 600, owned by whoever runs this script); the URLs printed by
# `start` and `env` carry them.
#   Postgres  role chat (LOGIN CREATEDB, not a superuser), scram-sha-256 over TCP
#             (127.0.0.1 only); the superuser is the server's OS user (postgres as root)
#             and logs in only over the unix socket (peer), which this script uses.
#             A cluster made by an older version of this script (trust auth, chat the
#             bootstrap superuser) is upgraded on start: password, pg_hba.conf, a superuser
#             role for the admin path; chat stays a superuser there (the `test` cluster,
#             which holds nothing worth keeping, is re-initialised instead).
#   RabbitMQ  user chat, all permissions on vhost /; no guest user.
#   Redis     requirepass (user "default" in the URL), bound to 127.0.0.1, protected mode.
#
# OS users: as root, each server runs as its Debian system user (postgres, rabbitmq,
# redis; nginx's workers as www-data) and owns only its own directories. As a plain user
# everything runs as that user (sudo is used only for apt-get). The Debian wrappers
# /usr/sbin/rabbitmq-server and /usr/sbin/rabbitmqctl are bypassed (they switch to the
# `rabbitmq` user's /var/lib/rabbitmq and its cookie): the real scripts in
# /usr/lib/rabbitmq/bin are started with setpriv as the rabbitmq user instead.
#
# Layout (<repo> = the directory containing deploy/; .data is git-ignored):
#   <repo>/.data/<instance>/pg/          Postgres cluster (initdb: peer over the socket,
#                                        scram-sha-256 over TCP; pg_hba.conf rewritten on start)
#   <repo>/.data/<instance>/pgsock/      its unix socket dir (mode 700)
#   <repo>/.data/<instance>/rabbitmq/    RabbitMQ: rabbitmq.conf, enabled_plugins, mnesia/,
#                                        home/.erlang.cookie (shared by server and CLI), pid
#   <repo>/.data/<instance>/redis/       redis.conf, pid, working dir
#   <repo>/.data/<instance>/secrets/     the passwords (see Credentials)
#   <repo>/.data/<instance>/nginx/       nginx.conf, pid, temp dirs
#   <repo>/.data/<instance>/logs/        postgres.log, rabbitmq.log, rabbitmq-console.log,
#                                        redis.log, nginx-error.log, nginx-access.log
# When a server's OS user cannot enter the repo (a clone under /root, mode 700), that
# server's directory and log live in /var/lib/mapmo-chat/<hash of the repo path>/<instance>/
# instead (pg/, rabbitmq/, redis/, *.log), the log symlinked from .data/<instance>/logs/;
# Postgres's socket dir is then /var/lib/mapmo-chat/<hash>/<instance>/pgsock (also when
# the repo path is too long for a unix socket path). Nothing is put in /tmp as root; as a
# plain user with a too long repo path the socket dir is $XDG_RUNTIME_DIR/chat-pg-... or,
# without one, /tmp/chat-pg-<instance>-<hash>-<uid>, created with mode 700 (an existing
# path there is used only if it is a real directory owned by that user).
#
# Environment knobs: CHAT_SERVICES_TIMEOUT (readiness timeout in seconds, default 90).

set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true   # bash 5.2: '&' in ${x//a/b} is literal
umask 022

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
# Running things as the servers' OS users
# ---------------------------------------------------------------------------
# as_user_prefix USER: sets AS_USER to the command prefix that runs a command as USER:
# setpriv (no PAM session, no process left behind, a clean environment) when we are root
# and USER is not, nothing otherwise.
as_user_prefix() {
    AS_USER=()
    if is_root && [ "$1" != root ]; then
        local gid
        gid="$(id -g "$1" 2>/dev/null)" || die "system user '$1' missing (is its package installed? $0 install $INSTANCE)"
        AS_USER=(setpriv --reuid="$1" --regid="$gid" --init-groups --reset-env --)
    fi
}
# as_user USER CMD...: runs the program CMD as USER, from / (which every user can enter)
as_user() {
    local AS_USER
    as_user_prefix "$1"; shift
    (cd / && exec "${AS_USER[@]}" "$@")
}

# svc_write USER FILE [MODE]: writes stdin to FILE (in a directory USER owns) as USER, via
# a temporary file renamed over FILE, so that a link planted at FILE is replaced, never
# followed by root.
svc_write() {
    local user="$1" file="$2" mode="${3:-600}"
    # shellcheck disable=SC2016  # expanded by that sh
    as_user "$user" sh -c 'umask 077; t="$1.new.$$"; cat >"$t" && chmod "$2" "$t" && mv -f "$t" "$1"' \
        svc_write "$file" "$mode"
}

# svc_dir DIR USER: DIR is a real directory owned by USER, mode 700 (created if missing;
# a directory an older version of this script left to root is handed over to USER).
# DIR's parent must be ours (root's), so nobody else can have planted DIR.
svc_dir() {
    local dir="$1" user="$2"
    [ -L "$dir" ] && die "$dir is a symbolic link; expected a directory (remove it)"
    local existed=1
    [ -e "$dir" ] || existed=0
    mkdir -p "$dir"
    [ -d "$dir" ] || die "$dir is not a directory"
    if [ "$(stat -c %U "$dir")" != "$user" ]; then
        is_root || die "$dir is owned by $(stat -c %U "$dir"), expected $user"
        [ "$existed" = 0 ] || log "handing $dir (made by an older services.sh) over to user $user"
        chown -R "$user:$(id -gn "$user")" "$dir"   # -R without -L: symlinks are not followed
    fi
    chmod 700 "$dir"
}

# private_dir DIR OWNER: like svc_dir for a directory in a place others can write to
# (/tmp): created with mkdir -m 700; an existing DIR is used only if it is a real
# directory (not a symlink) that OWNER owns.
private_dir() {
    local dir="$1" owner="$2"
    if [ ! -e "$dir" ] && [ ! -L "$dir" ]; then
        mkdir -m 700 "$dir" || die "cannot create $dir"
        if [ "$(id -un)" != "$owner" ]; then chown "$owner:$(id -gn "$owner")" "$dir"; fi
    fi
    if [ -L "$dir" ] || [ ! -d "$dir" ]; then
        die "$dir exists and is not a directory (or is a symlink); remove it"
    fi
    [ "$(stat -c %U "$dir")" = "$owner" ] ||
        die "$dir is owned by $(stat -c %U "$dir"), expected $owner; remove it"
    chmod 700 "$dir"
}

# svc_log FILE USER: FILE (in a directory root owns) is a regular file USER can append to
svc_log() {
    local file="$1" user="$2"
    if [ -L "$file" ]; then rm -f "$file"; fi
    touch "$file"
    if is_root && [ "$(stat -c %U "$file")" != "$user" ]; then chown "$user:$(id -gn "$user")" "$file"; fi
    chmod 644 "$file"
}

# link_log FILE: when FILE is not in LOG_DIR, LOG_DIR/<its name> is a symlink to it
link_log() {
    local file="$1" link
    link="$LOG_DIR/$(basename "$file")"
    [ "$file" != "$link" ] || return 0
    if [ -f "$link" ] && [ ! -L "$link" ]; then mv -f "$link" "$link.old"; fi
    ln -sfn "$file" "$link"
}

# svc_home USER: where USER's server keeps its data: the instance's .data dir, or, when
# USER cannot enter the repo, ALT_HOME
svc_home() {
    if is_root && [ "$1" != root ] && getent passwd "$1" >/dev/null &&
        ! as_user "$1" test -x "$REPO_DIR" 2>/dev/null; then
        printf '%s\n' "$ALT_HOME"
    else
        printf '%s\n' "$DATA_DIR"
    fi
}

# ---------------------------------------------------------------------------
# Instance table: the only place where per-instance values live.
# ---------------------------------------------------------------------------
select_instance() {
    INSTANCE="${1:-}"
    case "$INSTANCE" in
        local) PG_PORT=25432; AMQP_PORT=25672; DIST_PORT=27672; REDIS_PORT=26379 ;;
        test)  PG_PORT=21432; AMQP_PORT=21672; DIST_PORT=23672; REDIS_PORT=21379 ;;
        "")    usage ;;
        *)     die "unknown instance '$INSTANCE' (expected: local, test)" ;;
    esac
    # Erlang distribution: the node listens on DIST_PORT, CLI tools use DIST_PORT+1..+10.
    (( DIST_PORT + 10 < 65536 )) || die "Erlang distribution port out of range: $DIST_PORT"

    DATA_DIR="$REPO_DIR/.data/$INSTANCE"
    LOG_DIR="$DATA_DIR/logs"
    SECRETS_DIR="$DATA_DIR/secrets"
    local hash
    hash="$(printf '%s' "$REPO_DIR" | md5sum | cut -c1-10)"
    ALT_HOME="/var/lib/mapmo-chat/$hash/$INSTANCE"
    # the socket dir an older version of this script used (also as root); removed if empty
    PG_LEGACY_SOCK_DIR="/tmp/chat-pg-$INSTANCE-$hash"

    # The servers' OS users: the Debian system users when we are root, else ourselves.
    if is_root; then
        PG_USER=postgres; RABBIT_USER=rabbitmq; REDIS_USER=redis
    else
        PG_USER="$(id -un)"; RABBIT_USER="$PG_USER"; REDIS_USER="$PG_USER"
    fi

    # Postgres (refuses to run as root). Data and log in PG_HOME (see svc_home).
    PG_HOME="$(svc_home "$PG_USER")"
    PG_DATA="$PG_HOME/pg"
    if [ "$PG_HOME" = "$DATA_DIR" ]; then PG_LOG="$LOG_DIR/postgres.log"; else PG_LOG="$PG_HOME/postgres.log"; fi
    PG_SOCK_DIR="$DATA_DIR/pgsock"
    # unix socket paths are limited to 107 bytes; keep ours well below 100 (and where
    # postgres can reach it, and out of /tmp when we are root)
    if (( ${#PG_SOCK_DIR} + ${#PG_PORT} + 10 >= 100 )) || [ "$PG_HOME" != "$DATA_DIR" ]; then
        if is_root; then
            PG_SOCK_DIR="$ALT_HOME/pgsock"
        elif [ -n "${XDG_RUNTIME_DIR:-}" ] && [ -d "$XDG_RUNTIME_DIR" ] && [ ! -L "$XDG_RUNTIME_DIR" ] &&
            [ -O "$XDG_RUNTIME_DIR" ] && (( ${#XDG_RUNTIME_DIR} < 50 )); then
            PG_SOCK_DIR="$XDG_RUNTIME_DIR/chat-pg-$INSTANCE-$hash"
        else
            PG_SOCK_DIR="/tmp/chat-pg-$INSTANCE-$hash-$(id -u)"
        fi
    fi

    RABBIT_HOME="$(svc_home "$RABBIT_USER")"
    RABBIT_DIR="$RABBIT_HOME/rabbitmq"
    RABBIT_NODE="chat-$INSTANCE@localhost"
    if [ "$RABBIT_HOME" = "$DATA_DIR" ]; then RABBIT_LOG="$LOG_DIR/rabbitmq.log"; else RABBIT_LOG="$RABBIT_HOME/rabbitmq.log"; fi
    RABBIT_CONSOLE_LOG="$LOG_DIR/rabbitmq-console.log"   # opened by this script, any user
    RABBIT_PID_FILE="$RABBIT_DIR/rabbitmq.pid"
    # where an older version of this script kept the node (as root, in the repo)
    RABBIT_LEGACY_DIR="$DATA_DIR/rabbitmq"
    # Environment for the server and the CLI tools alike. The shared HOME gives both the
    # same $HOME/.erlang.cookie. Erlang distribution and epmd are kept on loopback.
    RABBIT_ENV=(env
        HOME="$RABBIT_DIR/home"
        LANG=C.UTF-8
        RABBITMQ_NODENAME="$RABBIT_NODE"
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        RABBITMQ_NODE_PORT="$AMQP_PORT"
        RABBITMQ_DIST_PORT="$DIST_PORT"
        RABBITMQ_CTL_DIST_PORT_MIN="$(( DIST_PORT + 1 ))"
        RABBITMQ_CTL_DIST_PORT_MAX="$(( DIST_PORT + 10 ))"
        # +sbwt none...: Erlang schedulers do not spin while idle (they would
        # burn the CPU the services on this machine share with the broker).
        # +S 1:1: one scheduler, for the reason the services run one Tokio
        # worker each here: with one per core, handing a message between
        # Erlang processes woke an idle scheduler on the other core. At
        # 1,000 msg/s the broker spent 121 instead of 150 µs per message, at
        # 10,000 the same throughput in two runs (docs/benchmarks.md). A broker of its
        # own on a bigger machine wants its default (one per core).
        # CHAT_RABBITMQ_ERL_ARGS adds or overrides emulator flags.
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none +S 1:1 ${CHAT_RABBITMQ_ERL_ARGS:-}"
        RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
        ERL_EPMD_ADDRESS=127.0.0.1
        ERL_CRASH_DUMP="$RABBIT_DIR/erl_crash.dump"
        RABBITMQ_CONF_ENV_FILE="$RABBIT_DIR/rabbitmq-env.conf"
        RABBITMQ_CONFIG_FILE="$RABBIT_DIR/rabbitmq.conf"
        RABBITMQ_ADVANCED_CONFIG_FILE="$RABBIT_DIR/advanced.config"
        RABBITMQ_ENABLED_PLUGINS_FILE="$RABBIT_DIR/enabled_plugins"
        RABBITMQ_MNESIA_BASE="$RABBIT_DIR/mnesia"
        RABBITMQ_LOG_BASE="$RABBIT_DIR/log"
        RABBITMQ_LOGS="$RABBIT_LOG"
        RABBITMQ_PID_FILE="$RABBIT_PID_FILE")

    REDIS_HOME="$(svc_home "$REDIS_USER")"
    REDIS_DIR="$REDIS_HOME/redis"
    if [ "$REDIS_HOME" = "$DATA_DIR" ]; then REDIS_LOG="$LOG_DIR/redis.log"; else REDIS_LOG="$REDIS_HOME/redis.log"; fi
    REDIS_PID_FILE="$REDIS_DIR/redis.pid"
    REDIS_LEGACY_PID_FILE="$DATA_DIR/redis/redis.pid"

    if [ -z "$PG_HOME" ] || [ -z "$RABBIT_HOME" ] || [ -z "$REDIS_HOME" ]; then
        die "cannot tell where the servers keep their data"
    fi

    NGINX_DIR="$DATA_DIR/nginx"
    NGINX_CONF="$NGINX_DIR/nginx.conf"
    NGINX_PID_FILE="$NGINX_DIR/nginx.pid"
    NGINX_ERROR_LOG="$LOG_DIR/nginx-error.log"
    NGINX_ACCESS_LOG="$LOG_DIR/nginx-access.log"

    # the passwords and URLs: load_secrets
    PG_PW=""; AMQP_PW=""; REDIS_PW=""
}

ensure_base_dirs() {
    mkdir -p "$DATA_DIR" "$LOG_DIR"
    # the servers' users (when root) must be able to traverse these
    chmod 755 "$REPO_DIR/.data" "$DATA_DIR" "$LOG_DIR"
    if is_root && { [ "$PG_HOME" != "$DATA_DIR" ] || [ "$RABBIT_HOME" != "$DATA_DIR" ] ||
                    [ "$REDIS_HOME" != "$DATA_DIR" ] || [ "${PG_SOCK_DIR#"$ALT_HOME"/}" != "$PG_SOCK_DIR" ]; }; then
        mkdir -p "$ALT_HOME"
        chmod 755 /var/lib/mapmo-chat "$(dirname "$ALT_HOME")" "$ALT_HOME"
    fi
}

# ---------------------------------------------------------------------------
# Passwords
# ---------------------------------------------------------------------------
SECRET_NAMES=(postgres rabbitmq redis)

# make_secrets: generates each missing password of the instance (once; kept across starts)
make_secrets() {
    private_dir "$SECRETS_DIR" "$(id -un)"
    local name f
    for name in "${SECRET_NAMES[@]}"; do
        f="$SECRETS_DIR/$name.password"
        [ -s "$f" ] && continue
        [ -L "$f" ] && rm -f "$f"
        (umask 077; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$f.new") && mv -f "$f.new" "$f"
        log "generated the $name password of instance '$INSTANCE' ($f)"
    done
}

# load_secrets [optional]: sets PG_PW, AMQP_PW, REDIS_PW and the URLs that carry them.
# Fails when a password is missing (the instance was never started), unless "optional".
load_secrets() {
    local name f pw
    for name in "${SECRET_NAMES[@]}"; do
        f="$SECRETS_DIR/$name.password"
        pw=""
        if [ -f "$f" ] && [ -r "$f" ]; then
            pw="$(head -c 256 "$f" | tr -d '\n')"
            # goes into URLs, SQL and config files unquoted: URL-safe characters only
            [[ "$pw" =~ ^[A-Za-z0-9._~-]{16,}$ ]] ||
                die "$f: a password must be 16 or more of A-Z a-z 0-9 . _ ~ - (delete the file to get a new one)"
        elif [ "${1:-}" != optional ]; then
            if [ -e "$f" ]; then die "cannot read $f (instance started by another user?)"; fi
            die "no $name password for instance '$INSTANCE' yet; run: $0 start $INSTANCE"
        fi
        case "$name" in
            postgres) PG_PW="$pw" ;;
            rabbitmq) AMQP_PW="$pw" ;;
            redis)    REDIS_PW="$pw" ;;
        esac
    done
    DATABASE_URL="postgres://chat:$PG_PW@127.0.0.1:$PG_PORT/chat"
    AMQP_URL="amqp://chat:$AMQP_PW@127.0.0.1:$AMQP_PORT/%2f"
    # user "default" (the one requirepass sets): redis-cli -u sends AUTH "" <pw> for an
    # empty user name; the Rust client accepts either form
    REDIS_URL="redis://default:$REDIS_PW@127.0.0.1:$REDIS_PORT/"
}

# redacted URL (for status)
redact() { sed -E 's#(://[^:/@]*:)[^@/]*@#\1***@#' <<<"$1"; }

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
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

# warn_ephemeral PORT...: warns about each port inside the kernel's ephemeral range
warn_ephemeral() {
    local lo hi p
    read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || return 0
    for p in "$@"; do
        if (( p >= lo && p <= hi )); then
            log "warning: port $p is inside this machine's ephemeral port range $lo-$hi (net.ipv4.ip_local_port_range): an outgoing connection may hold it"
        fi
    done
}

# true when process $1 exists and is not a zombie (daemons end up as children of
# pid 1, which may reap them late)
proc_alive() {
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}
# read_pid FILE: prints the pid in FILE (its first line) if it is a plausible pid
read_pid() {
    local pid
    [ -f "$1" ] || return 1
    pid="$(head -n1 "$1" 2>/dev/null | tr -d '[:space:]')" || return 1
    [[ "$pid" =~ ^[0-9]{1,10}$ ]] && (( 10#$pid > 1 )) || return 1
    pid=$(( 10#$pid ))
    printf '%s\n' "$pid"
}
# true when the pid file $1 names a live process
pid_alive() {
    local pid
    pid="$(read_pid "$1")" && proc_alive "$pid"
}
# proc_user PID: the name of the user PID runs as
proc_user() { stat -c %U "/proc/$1"; }
# wait_gone PID WHAT LOGFILE: wait (TIMEOUT) until PID is gone, else fail
wait_gone() {
    local pid="$1" what="$2" logfile="$3"
    local deadline=$(( SECONDS + TIMEOUT ))
    while proc_alive "$pid"; do
        (( SECONDS < deadline )) || die_log "$what (pid $pid) did not stop" "$logfile"
        sleep 0.3
    done
}

# term_and_wait PID WHAT LOGFILE: SIGTERM, then wait_gone
term_and_wait() {
    kill -TERM "$1" 2>/dev/null || true
    wait_gone "$@"
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
    # Prometheus and promtool: the alert-rule tests and the dashboard test.
    [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || missing+=(prometheus)
    if [ ${#missing[@]} -eq 0 ]; then
        log "postgresql, rabbitmq-server, redis-server, nginx and prometheus are already installed"
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
        for svc in rabbitmq-server redis-server nginx postgresql prometheus; do
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
    if is_root; then
        command -v setpriv >/dev/null 2>&1 || die "setpriv (util-linux) not found"
        local u
        for u in "$PG_USER" "$RABBIT_USER" "$REDIS_USER"; do
            getent passwd "$u" >/dev/null || die "system user '$u' missing (reinstall its package: $0 install $INSTANCE)"
        done
    fi
}

# ---------------------------------------------------------------------------
# Postgres
# ---------------------------------------------------------------------------
# Runs a server-side pg command as the server's OS user.
pg_run() { as_user "$PG_USER" "$@"; }

# The superuser (named after the server's OS user), over the unix socket: peer auth.
pg_admin() {
    pg_run "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK_DIR" -p "$PG_PORT" -U "$PG_USER" -d postgres "$@"
}
# The role chat, over TCP with its password (any OS user).
pg_psql() { PGPASSWORD="$PG_PW" "$PG_BIN/psql" -X -q -w -h 127.0.0.1 -p "$PG_PORT" -U chat "$@"; }

pg_running() { [ -f "$PG_DATA/PG_VERSION" ] && pg_run "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; }

# line $1 of the running server's postmaster.pid (4: port, 5: socket dir)
pg_pid_field() { sed -n "${1}p" "$PG_DATA/postmaster.pid" 2>/dev/null; }

# check_traversable USER DIR: dies naming the topmost directory USER cannot enter
check_traversable() {
    local user="$1" target="$2"
    is_root || return 0
    as_user "$user" test -x "$target" && return 0
    local d="" part
    local -a parts
    IFS=/ read -r -a parts <<<"${target#/}"
    for part in "${parts[@]}"; do
        d="$d/$part"
        as_user "$user" test -x "$d" ||
            die "user '$user' cannot enter $d (mode $(stat -c %A "$d"), owner $(stat -c %U "$d")), so it cannot use $target. Make the parent directories traversable (chmod o+x $d) or clone the repo elsewhere."
    done
    die "user '$user' cannot reach $target"
}

pg_check_traversable() {
    is_root || return 0
    if [ "$PG_HOME" != "$DATA_DIR" ]; then
        log "postgres: $REPO_DIR is not reachable by user $PG_USER; data and log in $PG_HOME"
    fi
    check_traversable "$PG_USER" "$PG_HOME"
}

pg_write_conf() {
    # regenerated on every start; included from postgresql.conf
    svc_write "$PG_USER" "$PG_DATA/chat.conf" 600 <<EOC
# generated by deploy/services.sh; edits are overwritten on start
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK_DIR'
password_encryption = 'scram-sha-256'
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
EOC
}

# Who may log in how; rewritten on every start (reloaded when it changed).
pg_write_hba() {
    local hba="$PG_DATA/pg_hba.conf" want
    want="# generated by deploy/services.sh; edits are overwritten on start
# TYPE  DATABASE  USER         ADDRESS        METHOD
# the superuser: only its own OS user, over the unix socket (a mode 700 directory)
local   all       $PG_USER                    peer
# everyone else (the role chat): TCP on loopback, with a password
host    all       all          127.0.0.1/32   scram-sha-256"
    [ "$(cat "$hba" 2>/dev/null)" = "$want" ] && return 0
    printf '%s\n' "$want" | svc_write "$PG_USER" "$hba" 600
    pg_admin -tAc 'SELECT pg_reload_conf()' >/dev/null || die_log "postgres: reloading pg_hba.conf failed" "$PG_LOG"
    log "postgres: pg_hba.conf written (scram-sha-256 over TCP, peer for $PG_USER over the socket)"
}

# true when the cluster was made by an older version of this script (trust over TCP)
pg_legacy_trust() { grep -Eq '^[[:space:]]*host.*[[:space:]]trust([[:space:]]|$)' "$PG_DATA/pg_hba.conf" 2>/dev/null; }

# The superuser the admin path uses, the role chat with its password, the database chat.
pg_setup_roles() {
    if ! pg_admin -tAc 'SELECT 1' >/dev/null 2>&1; then
        # A cluster made by an older version of this script: its bootstrap superuser is
        # chat, trusted over the socket. Add a superuser for the admin path.
        printf 'CREATE ROLE "%s" SUPERUSER LOGIN;\n' "$PG_USER" |
            pg_run "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK_DIR" -p "$PG_PORT" -U chat -d postgres \
                >/dev/null 2>&1 ||
            die_log "postgres: cannot log in as superuser $PG_USER over $PG_SOCK_DIR (peer), nor as chat (trust, older clusters)" "$PG_LOG"
        log "postgres: added superuser role $PG_USER (peer login over the unix socket) to a cluster made by an older services.sh"
    fi
    # on stdin, so that the password is in no process's arguments
    printf '%s\n' \
        "SELECT 'CREATE ROLE chat' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'chat')\\gexec" \
        "ALTER ROLE chat WITH LOGIN CREATEDB PASSWORD '$PG_PW';" \
        "SELECT 'CREATE DATABASE chat OWNER chat' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'chat')\\gexec" |
        pg_admin >/dev/null || die_log "postgres: setting up role chat failed" "$PG_LOG"
}

pg_start() {
    pg_check_traversable
    private_dir "$PG_SOCK_DIR" "$PG_USER"
    svc_log "$PG_LOG" "$PG_USER"
    link_log "$PG_LOG"

    if [ "$INSTANCE" = test ] && [ -f "$PG_DATA/PG_VERSION" ] && pg_legacy_trust; then
        # made by an older services.sh (trust auth, chat a superuser); tests keep nothing here
        log "postgres: re-initialising the test cluster $PG_DATA (made by an older services.sh: trust auth, superuser chat)"
        if pg_running; then
            pg_run "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t "$TIMEOUT" stop >/dev/null ||
                die_log "postgres did not stop" "$PG_LOG"
        fi
        rm -rf -- "$PG_DATA"
    fi

    if pg_running; then
        local port sock
        port="$(pg_pid_field 4)"; sock="$(pg_pid_field 5)"
        if [ "$port" != "$PG_PORT" ] || [ "$sock" != "$PG_SOCK_DIR" ]; then
            log "postgres ($INSTANCE) runs on port $port (socket dir $sock): restarting it on $PG_PORT ($PG_SOCK_DIR)"
            pg_write_conf
            pg_run "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -m fast -w -t "$TIMEOUT" restart >/dev/null ||
                die_log "postgres failed to restart" "$PG_LOG"
        else
            log "postgres ($INSTANCE) already running on 127.0.0.1:$PG_PORT"
        fi
    else
        if [ ! -f "$PG_DATA/PG_VERSION" ]; then
            log "postgres: initdb in $PG_DATA"
            svc_dir "$PG_DATA" "$PG_USER"
            pg_run "$PG_BIN/initdb" -D "$PG_DATA" -U "$PG_USER" --auth-local=peer --auth-host=scram-sha-256 \
                -E UTF8 --locale=C.UTF-8 >>"$PG_LOG" 2>&1 || die_log "initdb failed" "$PG_LOG"
            # shellcheck disable=SC2016  # expanded by that sh
            printf "\ninclude_if_exists = 'chat.conf'\n" | pg_run sh -c 'cat >>"$1"' sh "$PG_DATA/postgresql.conf"
        fi
        pg_write_conf
        log "postgres: starting on 127.0.0.1:$PG_PORT (log: $PG_LOG)"
        pg_run "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$TIMEOUT" start >/dev/null ||
            die_log "postgres failed to start" "$PG_LOG"
    fi
    wait_until "postgres" "$PG_LOG" pg_run "$PG_BIN/pg_isready" -q -h "$PG_SOCK_DIR" -p "$PG_PORT"
    if [ "$PG_LEGACY_SOCK_DIR" != "$PG_SOCK_DIR" ] && [ -d "$PG_LEGACY_SOCK_DIR" ] && [ ! -L "$PG_LEGACY_SOCK_DIR" ]; then
        rmdir "$PG_LEGACY_SOCK_DIR" 2>/dev/null || true   # only if empty
    fi
    pg_setup_roles
    pg_write_hba
    wait_until "postgres (role chat over TCP)" "$PG_LOG" pg_psql -d chat -tAc 'SELECT 1'
    if [ "$(pg_admin -tAc "SELECT rolsuper FROM pg_roles WHERE rolname = 'chat'")" = t ]; then
        log "postgres: note: role chat is a superuser here (cluster made by an older services.sh, where chat is the bootstrap superuser, which owns the system catalogs: demoting it is unsafe, and refused by Postgres 16+). For a chat without superuser rights, recreate the cluster (its data is lost): $0 stop $INSTANCE && rm -rf $PG_DATA && $0 start $INSTANCE"
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
    # a socket dir outside the instance's directories (plain user, long repo path)
    case "$PG_SOCK_DIR" in
        /tmp/chat-pg-*|"${XDG_RUNTIME_DIR:-/nonexistent}"/chat-pg-*) rmdir "$PG_SOCK_DIR" 2>/dev/null || true ;;
    esac
}

# ---------------------------------------------------------------------------
# RabbitMQ (run via /usr/lib/rabbitmq/bin/*, not the Debian /usr/sbin wrappers)
# ---------------------------------------------------------------------------
rabbit_ctl()  { as_user "$RABBIT_USER" "${RABBIT_ENV[@]}" "$RABBIT_LIB_BIN/rabbitmqctl" -n "$RABBIT_NODE" "$@"; }
# rabbit_node_pid PIDFILE HOMEDIR: prints the pid PIDFILE names if it is a live beam process
# with "-home HOMEDIR" (how a node of this instance is recognised)
rabbit_node_pid() {
    local pid
    pid="$(read_pid "$1")" && proc_alive "$pid" &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-home $2 " &&
        printf '%s\n' "$pid"
}
# true when the pid file names a live beam process of this instance; checked before any
# CLI call, because the CLI tools start an epmd daemon as a side effect
rabbit_proc_alive() { rabbit_node_pid "$RABBIT_PID_FILE" "$RABBIT_DIR/home" >/dev/null; }
rabbit_ping() {
    as_user "$RABBIT_USER" "${RABBIT_ENV[@]}" "$RABBIT_LIB_BIN/rabbitmq-diagnostics" -q -n "$RABBIT_NODE" ping >/dev/null 2>&1
}

rabbit_prepare() {
    svc_dir "$RABBIT_DIR" "$RABBIT_USER"
    as_user "$RABBIT_USER" mkdir -p "$RABBIT_DIR/home" "$RABBIT_DIR/mnesia" "$RABBIT_DIR/log"
    as_user "$RABBIT_USER" chmod 700 "$RABBIT_DIR/home"
    local cookie="$RABBIT_DIR/home/.erlang.cookie"
    if [ ! -s "$cookie" ]; then
        head -c 32 /dev/urandom | md5sum | cut -c1-20 | tr 'a-f' 'A-F' | svc_write "$RABBIT_USER" "$cookie" 400
    fi
    svc_write "$RABBIT_USER" "$RABBIT_DIR/rabbitmq-env.conf" 600 </dev/null   # keep /etc/rabbitmq/rabbitmq-env.conf out
    printf '[].\n' | svc_write "$RABBIT_USER" "$RABBIT_DIR/enabled_plugins" 600   # no management plugin on 15672
    svc_write "$RABBIT_USER" "$RABBIT_DIR/rabbitmq.conf" 600 <<EOC
# generated by deploy/services.sh; edits are overwritten on start
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
vm_memory_high_watermark.relative = 0.4
disk_free_limit.absolute = 200MB
# The user a fresh database gets (first start, and after \`rabbitmqctl reset\`) instead
# of guest; the password is the instance's (secrets/rabbitmq.password).
default_user = chat
default_pass = $AMQP_PW
EOC
    svc_log "$RABBIT_LOG" "$RABBIT_USER"
    link_log "$RABBIT_LOG"
}

# Why the running node must be restarted ("" if it need not): it runs as another user
# or with another configuration (an older services.sh, another port or password).
rabbit_stale_reason() {
    local pid conf
    pid="$(read_pid "$RABBIT_PID_FILE")" || return 0
    if is_root && [ "$(proc_user "$pid")" != "$RABBIT_USER" ]; then
        printf 'it runs as %s, not %s' "$(proc_user "$pid")" "$RABBIT_USER"
        return 0
    fi
    conf="$(cat "$RABBIT_DIR/rabbitmq.conf" 2>/dev/null)" || conf=""
    if [[ $'\n'"$conf"$'\n' != *$'\n'"listeners.tcp.default = 127.0.0.1:$AMQP_PORT"$'\n'* ||
          $'\n'"$conf"$'\n' != *$'\n'"default_pass = $AMQP_PW"$'\n'* ]]; then
        printf 'it was started with another configuration (port, password)'
    fi
}

# A node an older services.sh ran (as root) in the repo, when this instance's node now
# lives elsewhere (RABBIT_DIR moved out of a repo its user cannot enter).
rabbit_stop_legacy() {
    [ "$RABBIT_LEGACY_DIR" != "$RABBIT_DIR" ] || return 0
    local pid
    pid="$(rabbit_node_pid "$RABBIT_LEGACY_DIR/rabbitmq.pid" "$RABBIT_LEGACY_DIR/home")" || return 0
    log "rabbitmq: stopping the node an older services.sh runs from $RABBIT_LEGACY_DIR (pid $pid)"
    term_and_wait "$pid" "rabbitmq (old node)" "$RABBIT_CONSOLE_LOG"
    rm -f "$RABBIT_LEGACY_DIR/rabbitmq.pid"
}

# User chat with the instance's password and all permissions on /, no guest. A fresh
# database gets exactly that from rabbitmq.conf; this is for nodes made by an older
# services.sh, and for a new password. Skipped when already done for this password.
# Bounds every persist partition (any prefix): past PERSIST_QUEUE_MAX messages
# a publish is refused (the gateway's send gets `unavailable`), instead of the
# broker filling its memory and disk. A policy, not a queue argument, so it
# applies to queues that already exist and can change without redeclaring.
PERSIST_QUEUE_MAX=1000000
rabbit_policies() {
    rabbit_ctl -q set_policy --apply-to queues --priority 0 chat-persist-bound '\.persist\.[0-9]+$' \
        "{\"max-length\":$PERSIST_QUEUE_MAX,\"overflow\":\"reject-publish\"}" >/dev/null ||
        die_log "rabbitmq: set_policy chat-persist-bound failed" "$RABBIT_LOG"
}

rabbit_ensure_user() {
    local marker="$SECRETS_DIR/rabbitmq.applied" want users
    want="$(printf '%s\n%s\n' "$RABBIT_DIR" "$AMQP_PW" | sha256sum | cut -d' ' -f1)"
    if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; then return 0; fi
    users="$(rabbit_ctl -q list_users --no-table-headers 2>&1)" ||
        die_log "rabbitmq: list_users failed: $users" "$RABBIT_LOG"
    # the password goes on stdin (the CLI reads it there when it is not an argument)
    if awk '$1 == "chat" { found = 1 } END { exit !found }' <<<"$users"; then
        printf '%s\n' "$AMQP_PW" | rabbit_ctl -q change_password chat >/dev/null ||
            die_log "rabbitmq: change_password chat failed" "$RABBIT_LOG"
    else
        printf '%s\n' "$AMQP_PW" | rabbit_ctl -q add_user chat >/dev/null ||
            die_log "rabbitmq: add_user chat failed" "$RABBIT_LOG"
        log "rabbitmq: created user chat"
    fi
    rabbit_ctl -q set_permissions -p / chat '.*' '.*' '.*' >/dev/null ||
        die_log "rabbitmq: set_permissions failed" "$RABBIT_LOG"
    if awk '$1 == "guest" { found = 1 } END { exit !found }' <<<"$users"; then
        rabbit_ctl -q delete_user guest >/dev/null || die_log "rabbitmq: delete_user guest failed" "$RABBIT_LOG"
        log "rabbitmq: deleted user guest"
    fi
    (umask 077; printf '%s\n' "$want" >"$marker.new") && mv -f "$marker.new" "$marker"
}

rabbit_start() {
    local launcher="" reason pid
    local -a AS_USER
    rabbit_stop_legacy
    if rabbit_proc_alive; then
        reason="$(rabbit_stale_reason)"
        if [ -n "$reason" ]; then
            pid="$(read_pid "$RABBIT_PID_FILE")"
            log "rabbitmq ($RABBIT_NODE): restarting pid $pid: $reason"
            term_and_wait "$pid" "rabbitmq" "$RABBIT_LOG"
            rm -f "$RABBIT_PID_FILE"
        fi
    fi
    if rabbit_proc_alive; then
        if rabbit_ping; then
            log "rabbitmq ($RABBIT_NODE) already running on 127.0.0.1:$AMQP_PORT"
            rabbit_ensure_user
            rabbit_policies
            return 0
        fi
        log "rabbitmq ($RABBIT_NODE): process $(read_pid "$RABBIT_PID_FILE") exists, waiting for it"
    else
        tcp_open "$AMQP_PORT" && die "port $AMQP_PORT is already in use by another process"
        rabbit_prepare
        log "rabbitmq: starting $RABBIT_NODE on 127.0.0.1:$AMQP_PORT as user $RABBIT_USER (log: $RABBIT_LOG, console: $RABBIT_CONSOLE_LOG)"
        as_user_prefix "$RABBIT_USER"
        # setsid+nohup: the node survives the calling shell; no fds of the caller are kept open
        ( cd / && exec "${AS_USER[@]}" "${RABBIT_ENV[@]}" setsid nohup "$RABBIT_LIB_BIN/rabbitmq-server" ) \
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
    rabbit_ensure_user
    rabbit_policies
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
    rabbit_stop_legacy
    if ! rabbit_proc_alive; then
        log "rabbitmq ($RABBIT_NODE) not running"
        return 0
    fi
    local pid
    pid="$(read_pid "$RABBIT_PID_FILE")"
    if rabbit_ping; then
        log "rabbitmq: stopping $RABBIT_NODE"
        rabbit_ctl stop "$RABBIT_PID_FILE" >/dev/null 2>&1 || true
    else
        log "rabbitmq: node does not answer (to user $RABBIT_USER), terminating pid $pid"
        kill -TERM "$pid" 2>/dev/null || true
    fi
    wait_gone "$pid" rabbitmq "$RABBIT_LOG"
    rm -f "$RABBIT_PID_FILE"
    epmd_cleanup
}

# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------
# redis-cli with the instance's password (from the environment, not the arguments)
redis_cli() {
    if [ -n "$REDIS_PW" ]; then
        REDISCLI_AUTH="$REDIS_PW" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"
    else
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"
    fi
}
redis_ping() { [ "$(redis_cli ping 2>/dev/null)" = PONG ]; }
# true when a server on the port answers without a password (an older services.sh's)
redis_open() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }
# redis_pid PIDFILE: prints the pid PIDFILE names if it is a live redis-server
redis_pid() {
    local pid
    pid="$(read_pid "$1")" && proc_alive "$pid" &&
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = redis-server ] && printf '%s\n' "$pid"
}
# the pid files a server of this instance may have: this layout's, an older one's
redis_pid_files() {
    printf '%s\n' "$REDIS_PID_FILE"
    [ "$REDIS_LEGACY_PID_FILE" = "$REDIS_PID_FILE" ] || printf '%s\n' "$REDIS_LEGACY_PID_FILE"
}

redis_start() {
    local f pid reason
    while read -r f; do
        pid="$(redis_pid "$f")" || continue
        if [ "$f" != "$REDIS_PID_FILE" ]; then
            reason="it was started by an older services.sh ($f)"
        elif is_root && [ "$(proc_user "$pid")" != "$REDIS_USER" ]; then
            reason="it runs as $(proc_user "$pid"), not $REDIS_USER"
        elif redis_open; then
            reason="it accepts clients without a password"
        elif ! redis_ping; then
            reason="it does not answer on 127.0.0.1:$REDIS_PORT with the instance's password"
        else
            log "redis ($INSTANCE) already running on 127.0.0.1:$REDIS_PORT"
            return 0
        fi
        log "redis ($INSTANCE): restarting pid $pid: $reason"
        term_and_wait "$pid" "redis" "$REDIS_LOG"
    done < <(redis_pid_files)
    tcp_open "$REDIS_PORT" && die "port $REDIS_PORT is already in use by another process"
    svc_dir "$REDIS_DIR" "$REDIS_USER"
    svc_log "$REDIS_LOG" "$REDIS_USER"
    link_log "$REDIS_LOG"
    svc_write "$REDIS_USER" "$REDIS_DIR/redis.conf" 600 <<EOC
# generated by deploy/services.sh; edits are overwritten on start
bind 127.0.0.1
protected-mode yes
port $REDIS_PORT
# the default user's password: the instance's (secrets/redis.password)
requirepass $REDIS_PW
daemonize yes
supervised no
pidfile $REDIS_PID_FILE
logfile $REDIS_LOG
dir $REDIS_DIR
# presence state is ephemeral: no persistence
save ""
appendonly no
EOC
    log "redis: starting on 127.0.0.1:$REDIS_PORT as user $REDIS_USER (log: $REDIS_LOG)"
    as_user "$REDIS_USER" redis-server "$REDIS_DIR/redis.conf" >>"$REDIS_LOG" 2>&1 ||
        die_log "redis-server failed" "$REDIS_LOG"
    wait_until "redis" "$REDIS_LOG" redis_ping
}

redis_stop() {
    local f pid stopped=0
    if redis_ping; then
        log "redis: stopping"
        redis_cli shutdown nosave >/dev/null 2>&1 || true
        stopped=1
    fi
    while read -r f; do
        pid="$(redis_pid "$f")" || continue
        [ "$stopped" = 1 ] || log "redis ($INSTANCE): stopping pid $pid ($f)"
        stopped=1
        term_and_wait "$pid" "redis" "$REDIS_LOG"
    done < <(redis_pid_files)
    [ "$stopped" = 1 ] || log "redis ($INSTANCE) not running"
}
# ---------------------------------------------------------------------------
# nginx
# ---------------------------------------------------------------------------
nginx_cmd() { /usr/sbin/nginx -p "$NGINX_DIR/" -c "$NGINX_CONF" -e "$NGINX_ERROR_LOG" "$@"; }

nginx_running() {
    pid_alive "$NGINX_PID_FILE" && grep -q nginx "/proc/$(read_pid "$NGINX_PID_FILE")/cmdline" 2>/dev/null
}

# worker pids of nginx master $1
nginx_workers() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }

cmd_nginx_start() {
    local listen_port="${1:-}"; shift || true
    [ -x /usr/sbin/nginx ] || die "nginx not installed; run: $0 install $INSTANCE"
    [[ "$listen_port" =~ ^[0-9]+$ ]] && (( listen_port > 0 && listen_port < 65536 )) ||
        die "usage: $0 nginx-start <instance> <listen_port> <upstream host:port>..."
    [ $# -ge 1 ] || die "nginx-start: give at least one upstream host:port"
    warn_ephemeral "$listen_port"

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
    # CHAT_NGINX_WORKERS: nginx's worker_processes (default auto, one per core).
    conf="${conf//@@WORKER_PROCESSES@@/${CHAT_NGINX_WORKERS:-auto}}"
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
    # A reload ends every WebSocket through the old workers (within
    # worker_shutdown_timeout): never reload for nothing.
    if nginx_running && cmp -s "$NGINX_CONF.new" "$NGINX_CONF"; then
        rm -f "$NGINX_CONF.new"
        log "nginx ($INSTANCE): already serving 127.0.0.1:$listen_port -> $*"
        return 0
    fi
    nginx_cmd -t -q -c "$NGINX_CONF.new" 2>>"$NGINX_ERROR_LOG" ||
        die_log "generated nginx config is invalid ($NGINX_CONF.new)" "$NGINX_ERROR_LOG"
    mv "$NGINX_CONF.new" "$NGINX_CONF"

    if nginx_running; then
        log "nginx ($INSTANCE): reloading with upstreams $* on 127.0.0.1:$listen_port"
        local master old_workers
        master="$(read_pid "$NGINX_PID_FILE")"
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
    local pid; pid="$(read_pid "$NGINX_PID_FILE")"
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
    load_secrets
    printf 'export CHAT_DATABASE__URL=%s\n' "$DATABASE_URL"
    printf 'export CHAT_AMQP__URL=%s\n' "$AMQP_URL"
    printf 'export CHAT_REDIS__URL=%s\n' "$REDIS_URL"
}

cmd_start() {
    require_installed
    ensure_base_dirs
    make_secrets
    load_secrets
    warn_ephemeral "$PG_PORT" "$AMQP_PORT" "$REDIS_PORT" $(seq "$DIST_PORT" $(( DIST_PORT + 10 )))
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
    load_secrets optional
    cmd_nginx_stop
    redis_stop
    if [ -x "$RABBIT_LIB_BIN/rabbitmqctl" ]; then rabbit_stop; fi
    find_pg_bin
    if [ -n "$PG_BIN" ]; then pg_stop; fi
    log "instance '$INSTANCE' stopped"
}

# stop-one <instance> <postgres|rabbitmq|redis>: stops that server alone (the
# fault runs of deploy/faults.sh); `start` brings it back.
cmd_stop_one() {
    load_secrets optional
    case "${1:-}" in
        postgres) find_pg_bin; [ -n "$PG_BIN" ] && pg_stop ;;
        rabbitmq) rabbit_stop ;;
        redis)    redis_stop ;;
        *)        die "stop-one: expected postgres, rabbitmq or redis" ;;
    esac
}

cmd_status() {
    load_secrets optional
    find_pg_bin
    if [ -n "$PG_BIN" ] && pg_running; then
        echo "postgres  running   $(redact "$DATABASE_URL")"
    else
        echo "postgres  stopped   (port $PG_PORT)"
    fi
    if rabbit_proc_alive && rabbit_ping; then
        echo "rabbitmq  running   $(redact "$AMQP_URL") (node $RABBIT_NODE)"
    else
        echo "rabbitmq  stopped   (port $AMQP_PORT, node $RABBIT_NODE)"
    fi
    if command -v redis-cli >/dev/null 2>&1 && redis_ping; then
        echo "redis     running   $(redact "$REDIS_URL")"
    else
        echo "redis     stopped   (port $REDIS_PORT)"
    fi
    if nginx_running; then
        local port; port="$(sed -n 's/^[[:space:]]*listen[[:space:]]\{1,\}127\.0\.0\.1:\([0-9]\{1,\}\).*/\1/p' "$NGINX_CONF" | head -n1)"
        echo "nginx     running   http://127.0.0.1:$port/ (pid $(read_pid "$NGINX_PID_FILE"))"
    else
        echo "nginx     stopped"
    fi
    echo "passwords in $SECRETS_DIR/ (full URLs: $0 env $INSTANCE)"
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
        stop-one)    cmd_stop_one "$@" ;;
        rabbit-policies) load_secrets; rabbit_proc_alive || die "rabbitmq ($RABBIT_NODE) is not running"; rabbit_policies ;;
        redis-cli)   load_secrets; redis_cli "$@" ;;
        rabbitmqctl|rabbitmq-diagnostics|rabbitmq-queues)
                     rabbit_proc_alive || die "rabbitmq ($RABBIT_NODE) is not running"
                     as_user "$RABBIT_USER" "${RABBIT_ENV[@]}" "$RABBIT_LIB_BIN/$cmd" -n "$RABBIT_NODE" "$@" ;;
        *)           die "unknown command '$cmd'" ;;
    esac
}

main "$@"
