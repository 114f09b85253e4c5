#!/usr/bin/env bash
# deploy/services.sh — private Postgres / RabbitMQ / Redis (and nginx) instances
# for the chat system, for development ("local") and tests/CI ("test").
# This file holds the commands; each server is in deploy/services/ (postgres.sh,
# rabbitmq.sh, redis.sh, nginx.sh), what they share in deploy/services/lib.sh.
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
#               Postgres  AMQP   AMQPS  Erlang dist  Redis  Redis TLS
#   local       25432     25672  25671  27672        26379  26380   (nginx and gateways:
#                                                          deploy/up.sh, 28080, 28081, 28082)
#   test        21432     21672  21671  23672        21379  21380
# TLS: every server also speaks TLS (Postgres on its one port), with a throw-away CA made
# on `start` in .data/<instance>/tls/ (deploy/services/tls.sh); `env` prints the TLS URLs
# and the CA's file as MAPMO_TLS_* (the TLS tests and `deploy/bench.sh` with CHAT_TLS=1).
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
#   RabbitMQ  user chat, all permissions on vhost /; no guest user.
#   Redis     requirepass (user "default" in the URL), bound to 127.0.0.1, protected mode.
# Data left by an older version of this script (a cluster trusting TCP clients or with
# chat a superuser, a node with guest, directories owned by root or by another user, a
# server's data in the repo that now lives in /var/lib/mapmo-chat) is not converted:
# `start` stops with a message to remove the instance's data (rm -rf .data/<instance>).
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

# The broker policy bounding every persist partition (any prefix), set by `start` and
# `rabbit-policies` (rabbit_policies, deploy/services/rabbitmq.sh): past
# PERSIST_QUEUE_MAX messages a publish is refused (the gateway's send gets
# `unavailable`), instead of the broker filling its memory and disk. A policy, not a
# queue argument, so it applies to queues that already exist and can change without
# redeclaring. Here rather than in rabbitmq.sh: k8s/tools/check_manifests.py reads both
# lines from this file to check that the manifests set the same policy.
PERSIST_QUEUE_MAX=1000000
PERSIST_POLICY=(chat-persist-bound '\.persist\.[0-9]+$')   # name, queue name pattern

# shellcheck source=deploy/services/lib.sh
. "$DEPLOY_DIR/services/lib.sh"
# shellcheck source=deploy/services/postgres.sh
. "$DEPLOY_DIR/services/postgres.sh"
# shellcheck source=deploy/services/rabbitmq.sh
. "$DEPLOY_DIR/services/rabbitmq.sh"
# shellcheck source=deploy/services/redis.sh
. "$DEPLOY_DIR/services/redis.sh"
# shellcheck source=deploy/services/tls.sh
. "$DEPLOY_DIR/services/tls.sh"
# shellcheck source=deploy/services/nginx.sh
. "$DEPLOY_DIR/services/nginx.sh"

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
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

require_installed() {
    find_pg_bin
    if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/postgres" ]; then die "postgresql not installed; run: $0 install $INSTANCE"; fi
    [ -x "$RABBIT_LIB_BIN/rabbitmq-server" ] || die "rabbitmq-server not installed; run: $0 install $INSTANCE"
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        die "redis-server not installed; run: $0 install $INSTANCE"
    fi
    if is_root; then
        command -v setpriv >/dev/null 2>&1 || die "setpriv (util-linux) not found"
        local u
        for u in "$PG_USER" "$RABBIT_USER" "$REDIS_USER"; do
            getent passwd "$u" >/dev/null || die "system user '$u' missing (reinstall its package: $0 install $INSTANCE)"
        done
    fi
}

# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------
cmd_env() {
    load_secrets
    printf 'export CHAT_DATABASE__URL=%s\n' "$DATABASE_URL"
    printf 'export CHAT_AMQP__URL=%s\n' "$AMQP_URL"
    printf 'export CHAT_REDIS__URL=%s\n' "$REDIS_URL"
    # the same servers over TLS, and the CAs (deploy/services/tls.sh)
    printf 'export MAPMO_TLS_DATABASE_URL=%s\n' "$TLS_DATABASE_URL"
    printf 'export MAPMO_TLS_AMQP_URL=%s\n' "$TLS_AMQP_URL"
    printf 'export MAPMO_TLS_REDIS_URL=%s\n' "$TLS_REDIS_URL"
    printf 'export MAPMO_TLS_CA_FILE=%s\n' "$TLS_CA"
    printf 'export MAPMO_TLS_OTHER_CA_FILE=%s\n' "$TLS_OTHER_CA"
    printf 'export MAPMO_TLS_CLIENT_CERT_FILE=%s\n' "$TLS_CLIENT_CERT"
    printf 'export MAPMO_TLS_CLIENT_KEY_FILE=%s\n' "$TLS_CLIENT_KEY"
}

cmd_start() {
    require_installed
    ensure_base_dirs
    make_secrets
    load_secrets
    warn_ephemeral "$PG_PORT" "$AMQP_PORT" "$AMQPS_PORT" "$REDIS_PORT" "$REDIS_TLS_PORT" \
        $(seq "$DIST_PORT" $(( DIST_PORT + 10 )))
    tls_make
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
    if [ -n "$PG_BIN" ]; then pg_status; else echo "postgres  stopped   (port $PG_PORT)"; fi
    rabbit_status
    redis_status
    nginx_status
    echo "passwords in $SECRETS_DIR/ (full URLs: $0 env $INSTANCE)"
}

main() {
    local cmd="${1:-}"
    [ $# -ge 2 ] || usage
    select_instance "$2"                        # lib.sh: ports, directories, OS users
    pg_vars; rabbit_vars; redis_vars; nginx_vars; tls_vars   # each server's paths
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
        rabbit-policies) load_secrets; rabbit_pid >/dev/null || die "rabbitmq ($RABBIT_NODE) is not running"; rabbit_policies ;;
        redis-cli)   load_secrets; redis_cli "$@" ;;
        rabbitmqctl|rabbitmq-diagnostics|rabbitmq-queues)
                     rabbit_pid >/dev/null || die "rabbitmq ($RABBIT_NODE) is not running"
                     rabbit_tool "$cmd" "$@" ;;
        *)           die "unknown command '$cmd'" ;;
    esac
}

main "$@"
