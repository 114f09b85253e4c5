# deploy/services/nginx.sh — the instance's nginx in front of the gateways (deploy/up.sh,
# the browser tests): its config generated from deploy/nginx.conf.tmpl into
# .data/<instance>/nginx, started (workers as www-data when we are root), reloaded only
# when the config changed, stopped gracefully. Sourced by deploy/services.sh.
# shellcheck shell=bash

# nginx_vars: the server's paths for the selected instance
nginx_vars() {
    NGINX_DIR="$DATA_DIR/nginx"
    NGINX_CONF="$NGINX_DIR/nginx.conf"
    NGINX_PID_FILE="$NGINX_DIR/nginx.pid"
    NGINX_ERROR_LOG="$LOG_DIR/nginx-error.log"
    NGINX_ACCESS_LOG="$LOG_DIR/nginx-access.log"
}

nginx_cmd() { /usr/sbin/nginx -p "$NGINX_DIR/" -c "$NGINX_CONF" -e "$NGINX_ERROR_LOG" "$@"; }

# the master's pid, if it runs
nginx_pid() { live_pid "$NGINX_PID_FILE" nginx; }

# worker pids of nginx master $1
nginx_workers() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }

cmd_nginx_start() {
    local listen_port="${1:-}"; shift || true
    [ -x /usr/sbin/nginx ] || die "nginx not installed; run: $0 install $INSTANCE"
    if ! [[ "$listen_port" =~ ^[0-9]+$ ]] || (( listen_port < 1 || listen_port > 65535 )); then
        die "usage: $0 nginx-start <instance> <listen_port> <upstream host:port>..."
    fi
    [ $# -ge 1 ] || die "nginx-start: give at least one upstream host:port"
    warn_ephemeral "$listen_port"

    local up servers=""
    for up in "$@"; do
        [[ "$up" =~ ^[A-Za-z0-9._-]+:[0-9]+$ || "$up" =~ ^\[[0-9A-Fa-f:]+\]:[0-9]+$ ]] ||
            die "nginx-start: bad upstream '$up' (expected host:port)"
        # max_fails=0: nginx never takes a gateway out on its own. A 503 (a
        # gateway without its broker) still sends the request to the next
        # gateway (proxy_next_upstream), and a stopped gateway on loopback
        # refuses at once. With max_fails=1 a 503 took it out, and nginx
        # forgets a failure only when a request to the peer ends well: a
        # WebSocket ends when its session does, so after a broker restart
        # a gateway took one new session per fail_timeout and clients met
        # "no live upstreams" (502) for a minute (docs/reliability.md,
        # "RabbitMQ restarts: the fixed schedule and the crawl").
        servers+="        server $up max_fails=0;"$'\n'
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
    if nginx_pid >/dev/null && cmp -s "$NGINX_CONF.new" "$NGINX_CONF"; then
        rm -f "$NGINX_CONF.new"
        log "nginx ($INSTANCE): already serving 127.0.0.1:$listen_port -> $*"
        return 0
    fi
    nginx_cmd -t -q -c "$NGINX_CONF.new" 2>>"$NGINX_ERROR_LOG" ||
        die_log "generated nginx config is invalid ($NGINX_CONF.new)" "$NGINX_ERROR_LOG"
    mv "$NGINX_CONF.new" "$NGINX_CONF"

    local master old_workers
    if master="$(nginx_pid)"; then
        log "nginx ($INSTANCE): reloading with upstreams $* on 127.0.0.1:$listen_port"
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
    local pid
    if ! pid="$(nginx_pid)"; then
        log "nginx ($INSTANCE) not running"
        return 0
    fi
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

nginx_status() {
    local pid port
    if pid="$(nginx_pid)"; then
        port="$(sed -n 's/^[[:space:]]*listen[[:space:]]\{1,\}127\.0\.0\.1:\([0-9]\{1,\}\).*/\1/p' "$NGINX_CONF" | head -n1)"
        echo "nginx     running   http://127.0.0.1:$port/ (pid $pid)"
    else
        echo "nginx     stopped"
    fi
}
