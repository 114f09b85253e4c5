# deploy/services/lib.sh — what the servers of deploy/services.sh share: logging,
# the instance table (ports, directories, OS users), the passwords, running commands
# as the servers' OS users, pid files and processes, waiting until something is ready.
# Sourced by deploy/services.sh (which sets REPO_DIR), before the servers' files.
# shellcheck shell=bash

TIMEOUT="${CHAT_SERVICES_TIMEOUT:-90}"

# ---------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------
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
# die_old_layout WHAT: WHAT was left by an older version of this script (or by another
# user), which this version does not convert: the instance's data must go.
die_old_layout() {
    local dirs="$DATA_DIR"
    if [ -d "$ALT_HOME" ]; then dirs+=" $ALT_HOME"; fi
    die "$1: made by an older deploy/services.sh or by another user, which this version does not convert. Remove the instance's data (databases, queues, passwords) and start afresh: $0 stop $INSTANCE; rm -rf $dirs; $0 start $INSTANCE"
}
is_root() { [ "$(id -u)" -eq 0 ]; }

# ---------------------------------------------------------------------------
# Instance table: the only place where per-instance values live. The servers'
# own paths come from pg_vars, rabbit_vars, redis_vars, nginx_vars (their files).
# ---------------------------------------------------------------------------
select_instance() {
    INSTANCE="${1:-}"
    case "$INSTANCE" in
        local) PG_PORT=25432; AMQP_PORT=25672; AMQPS_PORT=25671; DIST_PORT=27672; REDIS_PORT=26379; REDIS_TLS_PORT=26380 ;;
        test)  PG_PORT=21432; AMQP_PORT=21672; AMQPS_PORT=21671; DIST_PORT=23672; REDIS_PORT=21379; REDIS_TLS_PORT=21380 ;;
        "")    usage ;;
        *)     die "unknown instance '$INSTANCE' (expected: local, test)" ;;
    esac
    # Erlang distribution: the node listens on DIST_PORT, CLI tools use DIST_PORT+1..+10.
    (( DIST_PORT + 10 < 65536 )) || die "Erlang distribution port out of range: $DIST_PORT"

    DATA_DIR="$REPO_DIR/.data/$INSTANCE"
    LOG_DIR="$DATA_DIR/logs"
    SECRETS_DIR="$DATA_DIR/secrets"
    REPO_HASH="$(printf '%s' "$REPO_DIR" | md5sum | cut -c1-10)"
    # where a server keeps its data when its OS user cannot enter the repo (svc_home)
    ALT_HOME="/var/lib/mapmo-chat/$REPO_HASH/$INSTANCE"

    # The servers' OS users: the Debian system users when we are root, else ourselves.
    # shellcheck disable=SC2034  # used by the servers' files
    if is_root; then
        PG_USER=postgres; RABBIT_USER=rabbitmq; REDIS_USER=redis
    else
        PG_USER="$(id -un)"; RABBIT_USER="$PG_USER"; REDIS_USER="$PG_USER"
    fi

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
    # used by the commands (start, env, status). Redis: user "default" (the one
    # requirepass sets): redis-cli -u sends AUTH "" <pw> for an empty user name; the Rust
    # client accepts either form. Postgres serves plain and TLS on one port: the plain
    # URL says sslmode=disable (else the client would take TLS whenever it is offered),
    # the TLS one verify-full (with the instance's CA: TLS_URLS, deploy/services/tls.sh).
    # shellcheck disable=SC2034
    {
        DATABASE_URL="postgres://chat:$PG_PW@127.0.0.1:$PG_PORT/chat?sslmode=disable"
        AMQP_URL="amqp://chat:$AMQP_PW@127.0.0.1:$AMQP_PORT/%2f"
        REDIS_URL="redis://default:$REDIS_PW@127.0.0.1:$REDIS_PORT/"
        TLS_DATABASE_URL="postgres://chat:$PG_PW@127.0.0.1:$PG_PORT/chat?sslmode=verify-full"
        TLS_AMQP_URL="amqps://chat:$AMQP_PW@127.0.0.1:$AMQPS_PORT/%2f"
        TLS_REDIS_URL="rediss://default:$REDIS_PW@127.0.0.1:$REDIS_TLS_PORT/"
    }
}

# redacted URL (for status)
redact() { sed -E 's#(://[^:/@]*:)[^@/]*@#\1***@#' <<<"$1"; }

# ---------------------------------------------------------------------------
# Running things as the servers' OS users, in directories they own
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

# svc_write USER FILE [MODE]: writes stdin to FILE (in a directory USER owns) as USER, via
# a temporary file renamed over FILE, so that a link planted at FILE is replaced, never
# followed by root.
svc_write() {
    local user="$1" file="$2" mode="${3:-600}"
    # shellcheck disable=SC2016  # expanded by that sh
    as_user "$user" sh -c 'umask 077; t="$1.new.$$"; cat >"$t" && chmod "$2" "$t" && mv -f "$t" "$1"' \
        svc_write "$file" "$mode"
}

# svc_owned DIR USER: dies unless DIR, when it exists, is a real directory owned by USER
# (one owned by anybody else was made by an older version of this script, or as another
# user: root, or a plain user instead of the servers' system users)
svc_owned() {
    local dir="$1" user="$2"
    [ -L "$dir" ] && die "$dir is a symbolic link; expected a directory (remove it)"
    [ -e "$dir" ] || return 0
    [ -d "$dir" ] || die "$dir is not a directory"
    [ "$(stat -c %U "$dir")" = "$user" ] || die_old_layout "$dir (owned by $(stat -c %U "$dir"), expected $user)"
}

# svc_dir DIR USER: DIR is a real directory owned by USER, mode 700 (created if missing).
# DIR's parent must be ours (root's), so nobody else can have planted DIR.
svc_dir() {
    local dir="$1" user="$2"
    svc_owned "$dir" "$user"
    if [ ! -e "$dir" ]; then
        mkdir -p "$dir"
        if [ "$(stat -c %U "$dir")" != "$user" ]; then chown "$user:$(id -gn "$user")" "$dir"; fi
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
    if [ -e "$link" ] && [ ! -L "$link" ]; then die_old_layout "$link (a log file where a link to $file belongs)"; fi
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

# svc_in_repo_check NAME HOME: when a server keeps its data in HOME outside the repo
# (ALT_HOME), .data/<instance>/NAME is what an older version of this script ran there
svc_in_repo_check() {
    local old="$DATA_DIR/$1"
    if [ "$2" != "$DATA_DIR" ] && { [ -e "$old" ] || [ -L "$old" ]; }; then
        die_old_layout "$old (this server's data now lives in $2)"
    fi
}

# ---------------------------------------------------------------------------
# Processes and pid files
# ---------------------------------------------------------------------------
# true when process $1 exists and is not a zombie (daemons end up as children of
# pid 1, which may reap them late)
proc_alive() {
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

# live_pid PIDFILE NAME [ARG]: prints the pid in PIDFILE (its first line) when that is
# a live process (not a zombie) of the program NAME (/proc/PID/comm) whose command line,
# if ARG is given, contains ARG. How every server recognises its running process: a
# stale pid file, or one naming another program, is not that server.
live_pid() {
    local file="$1" name="$2" arg="${3:-}" pid
    [ -f "$file" ] || return 1
    pid="$(head -n1 "$file" 2>/dev/null | tr -d '[:space:]')" || return 1
    [[ "$pid" =~ ^[0-9]{1,10}$ ]] && (( 10#$pid > 1 )) || return 1
    pid=$(( 10#$pid ))
    proc_alive "$pid" || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
    if [ -n "$arg" ]; then
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$arg" || return 1
    fi
    printf '%s\n' "$pid"
}

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
# Waiting and ports
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
