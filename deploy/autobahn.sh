#!/usr/bin/env bash
# Runs the Autobahn WebSocket conformance suite (autobahntestsuite's
# `wstest -m fuzzingclient`) against a gateway's GET /ws/echo, and prints,
# per section, how many cases were OK, NON-STRICT, INFORMATIONAL,
# UNIMPLEMENTED or FAILED. Exits 1 if a case failed.
#
#   deploy/autobahn.sh                 the gateway, two passes (below)
#   deploy/autobahn.sh --echoserver    self-check of the harness: the same cases
#                                      against wstest's own echo server
#   deploy/autobahn.sh --build         only prepare the wstest image
#
# The chat endpoint /ws speaks JSON and wants a token first, so the suite
# drives /ws/echo instead (gateway.conformance_echo, loopback only): the
# same upgrade, frame and message limits and close codes, echoing every
# message. Two passes, each with its own gateway process:
#   1. sections 1-7 and 9 with gateway.max_frame_bytes = MAX_FRAME_BYTES,
#      16 MiB + 64 KiB by default: section 9 sends messages of up to 16 MiB;
#   2. sections 1-7 with the production default, 65536 (the largest message
#      of those sections is 65,536 bytes, case 1.1.7).
# Sections 10 (auto-fragmentation) and 12-13 (permessage-deflate, which the
# gateway does not offer) are not run.
#
# wstest runs only on Python 2.7, which Debian 12 lacks: Debian 11 (bullseye,
# python2.7) is bootstrapped once into ~/.cache/mapmo-chat/autobahn
# (debootstrap minbase; the C compiler builds wsaccel and ujson, autobahn's
# accelerators), the pinned, hash-checked packages of deploy/autobahn/ are
# pip-installed into it in a chroot, and the tree is imported as the Docker
# image mapmo-chat/autobahn:<hash of those files> (nothing is pulled). wstest
# runs in a container of it with --network host, to reach 127.0.0.1: a
# container rather than a chroot because it needs no host mounts (/proc,
# /dev) inside the cached tree, sees only its spec and its report folder,
# cannot leave a process behind (docker rm -f), and the tree stays as built.
# Needs root the first time (debootstrap, chroot) and Docker every time.
#
# The gateway runs against the `test` instance of deploy/services.sh
# (started if it is not running; never stopped), with its own database
# `autobahn`, AMQP prefix and Redis prefix `autobahn`, on 127.0.0.1:21090
# (metrics 21091); wstest's echo server on 21094. The gateway binary comes
# from CHAT_BIN_DIR, default $CARGO_TARGET_DIR/debug (CARGO_TARGET_DIR
# default ~/.cache/mapmo-chat/target); nothing is built.
#
# Time on the 2-vCPU VM: about 45 s for both passes (300 + 246 cases); the
# first run 3 minutes, 140 s of them to bootstrap, pip-install and import
# the image (a Debian mirror and PyPI must answer then, not later).
#
# Reports: .data/autobahn/<UTC time>/<agent>/index.html (and index.json, a
# JSON and an HTML file per case with the wire log); .data/autobahn/latest.
#
# Environment:
#   CASES            cases of pass 1 (comma-separated wstest patterns),
#                    default 1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*
#   MAX_FRAME_BYTES  gateway.max_frame_bytes of pass 1, default 16842752
#   DEFAULT_CASES    cases of pass 2 (max_frame_bytes 65536), default
#                    1.*,...,7.*; empty (or MAX_FRAME_BYTES=65536): no pass 2
#   CHAT_BIN_DIR, CARGO_TARGET_DIR   where chat-gateway and chat-persister are
#   AUTOBAHN_CACHE   default ~/.cache/mapmo-chat/autobahn
#   DEBIAN_MIRROR    default http://deb.debian.org/debian
# The image is rebuilt when deploy/autobahn/requirements-*.txt change; after
# any other change to how it is built, remove it (docker rmi) and the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd -P)"

CASES="${CASES:-1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*}"
DEFAULT_CASES="${DEFAULT_CASES-1.*,2.*,3.*,4.*,5.*,6.*,7.*}"
MAX_FRAME_BYTES="${MAX_FRAME_BYTES:-$((16 * 1024 * 1024 + 64 * 1024))}"
CACHE="${AUTOBAHN_CACHE:-$HOME/.cache/mapmo-chat/autobahn}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mapmo-chat/target}"
BIN="${CHAT_BIN_DIR:-$CARGO_TARGET_DIR/debug}"
GATEWAY_PORT=21090
METRICS_PORT=21091
ECHO_PORT=21094
SUITE=bullseye
# python2.7-dev, gcc and libc6-dev build the sdists (wsaccel, ujson, ...);
# python-pip-whl brings the pip that installs pip.
PACKAGES=python2.7,python2.7-dev,python-pip-whl,gcc,libc6-dev,ca-certificates

say() { printf '[autobahn] %s\n' "$*" >&2; }
die() { printf '[autobahn] ERROR: %s\n' "$*" >&2; exit 1; }

MODE=gateway
case "${1:-}" in
  "") ;;
  --echoserver) MODE=echoserver ;;
  --build) MODE=build ;;
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
  *) die "unknown argument $1 (try --help)" ;;
esac

# "1.*,2.*" -> ["1.*", "2.*"]
cases_json() {
  local list=$1 json="" pattern
  [[ $list =~ ^[0-9.*]+(,[0-9.*]+)*$ ]] || die "bad case list '$list' (e.g. 1.*,2.1.*,9.1.1)"
  IFS=, read -r -a patterns <<<"$list"
  for pattern in "${patterns[@]}"; do json+="${json:+, }\"$pattern\""; done
  printf '[%s]' "$json"
}
cases_json "$CASES" >/dev/null
[ -z "$DEFAULT_CASES" ] || cases_json "$DEFAULT_CASES" >/dev/null
[[ $MAX_FRAME_BYTES =~ ^[0-9]+$ ]] || die "MAX_FRAME_BYTES must be a number of bytes"

if [ "$MODE" = gateway ]; then
  for bin in chat-gateway chat-persister; do
    [ -x "$BIN/$bin" ] || die "$BIN/$bin is missing: build it with cargo build -p $bin (or set CHAT_BIN_DIR)"
  done
fi
command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (is it running?)"

# ---------------------------------------------------------------------------
# The wstest image: Debian 11 + Python 2.7 + deploy/autobahn/requirements-*.
# ---------------------------------------------------------------------------
KEY=$(cat deploy/autobahn/requirements-pip.txt deploy/autobahn/requirements-py27.txt |
  { cat; echo "$SUITE $PACKAGES"; } | sha256sum | cut -c1-12)
IMAGE="mapmo-chat/autobahn:$KEY"
ROOTFS="$CACHE/rootfs-$KEY"
CHROOT=$(PATH="$PATH:/usr/sbin:/sbin" command -v chroot || echo chroot)

chroot_run() {
  env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/host-ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 PIP_NO_PYTHON_VERSION_WARNING=1 \
    ${HTTPS_PROXY:+HTTPS_PROXY="$HTTPS_PROXY"} ${https_proxy:+https_proxy="$https_proxy"} \
    ${NO_PROXY:+NO_PROXY="$NO_PROXY"} ${no_proxy:+no_proxy="$no_proxy"} \
    "$CHROOT" "$1" "${@:2}"
}

build_rootfs() {
  [ "$(id -u)" -eq 0 ] || die "building the Python 2.7 tree needs root (debootstrap, chroot)"
  if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap (Debian package)"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null
  fi
  mkdir -p "$CACHE"
  local tmp="$ROOTFS.tmp" old
  for old in "$CACHE"/rootfs-*; do
    case $old in "$ROOTFS" | "$tmp") continue ;; esac
    [ -d "$old" ] && { say "removing the outdated $old"; rm -rf "$old"; }
  done
  # A tree whose debootstrap completed is kept when pip fails.
  if [ ! -f "$tmp/.debootstrap-complete" ]; then
    rm -rf "$tmp"
    say "debootstrap $SUITE (minbase + $PACKAGES) into $tmp (about a minute)"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$MIRROR" \
      >"$CACHE/debootstrap.log" 2>&1 || die "debootstrap failed; see $CACHE/debootstrap.log"
    touch "$tmp/.debootstrap-complete"
  fi
  # pip trusts the host's CA bundle, which may hold a TLS proxy's CA.
  cp -L /etc/ssl/certs/ca-certificates.crt "$tmp/etc/ssl/host-ca-certificates.crt"
  cp -L /etc/resolv.conf "$tmp/etc/resolv.conf"
  mkdir -p "$tmp/tmp/autobahn"
  cp deploy/autobahn/requirements-pip.txt deploy/autobahn/requirements-py27.txt "$tmp/tmp/autobahn/"
  say "pip install deploy/autobahn/requirements-py27.txt (Python 2.7, hashes checked)"
  {
    # Debian's pip wheel installs pip 20.3.4 (the last for Python 2.7) ...
    chroot_run "$tmp" python2.7 /usr/share/python-wheels/pip-20.3.4-py2.py3-none-any.whl/pip \
      install --require-hashes -r /tmp/autobahn/requirements-pip.txt &&
      # ... which installs the suite.
      chroot_run "$tmp" python2.7 -m pip install --require-hashes -r /tmp/autobahn/requirements-py27.txt &&
      chroot_run "$tmp" python2.7 -m pip check &&
      chroot_run "$tmp" wstest --autobahnversion
  } >"$CACHE/pip.log" 2>&1 || die "pip install failed; see $CACHE/pip.log"
  rm -rf "$tmp"/tmp/autobahn "$tmp"/etc/ssl/host-ca-certificates.crt "$tmp"/root/.cache \
    "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/* \
    "$tmp"/usr/share/doc "$tmp"/usr/share/man "$tmp"/usr/share/locale
  : >"$tmp/etc/resolv.conf"
  rm "$tmp/.debootstrap-complete"
  mv "$tmp" "$ROOTFS"
  touch "$ROOTFS/.complete"
}

build_image() {
  if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    return
  fi
  [ -f "$ROOTFS/.complete" ] || build_rootfs
  say "importing $ROOTFS as $IMAGE"
  tar -C "$ROOTFS" --exclude=./.complete -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PYTHONDONTWRITEBYTECODE=1' \
    --change 'WORKDIR /tmp' \
    - "$IMAGE" >/dev/null
  say "$IMAGE: $(docker run --rm "$IMAGE" wstest --autobahnversion 2>&1 | tr -s '\n' ' ')"
}

started=$SECONDS
build_image
say "image ready after $((SECONDS - started)) s"
[ "$MODE" != build ] || exit 0

# ---------------------------------------------------------------------------
# Running.
# ---------------------------------------------------------------------------
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$REPO/.data/autobahn/$STAMP"
mkdir -p "$OUT"
CONTAINERS=()
GATEWAY_PID=""

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  stop_gateway
  local c
  for c in "${CONTAINERS[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true; }

stop_gateway() {
  [ -n "$GATEWAY_PID" ] || return 0
  kill -TERM "$GATEWAY_PID" 2>/dev/null || true
  wait "$GATEWAY_PID" 2>/dev/null || true
  GATEWAY_PID=""
}

# The test instance's servers, a database and prefixes of our own.
prepare_servers() {
  deploy/services.sh start test >/dev/null
  eval "$(deploy/services.sh env test)"
  export CHAT_PROFILE=test CHAT_AMQP__PREFIX=autobahn CHAT_REDIS__PREFIX=autobahn
  if [ "$(psql "$CHAT_DATABASE__URL" -Atc "SELECT count(*) FROM pg_database WHERE datname = 'autobahn'")" = 0 ]; then
    psql -q "$CHAT_DATABASE__URL" -c 'CREATE DATABASE autobahn'
  fi
  export CHAT_DATABASE__URL="${CHAT_DATABASE__URL%/*}/autobahn"
  "$BIN/chat-persister" migrate >"$OUT/migrate.log" 2>&1 || die "chat-persister migrate failed; see $OUT/migrate.log"
}

# start_gateway NAME MAX_FRAME_BYTES
start_gateway() {
  port_free "$GATEWAY_PORT" || die "127.0.0.1:$GATEWAY_PORT is taken (another run?)"
  CHAT_GATEWAY__LISTEN="127.0.0.1:$GATEWAY_PORT" CHAT_GATEWAY__METRICS_LISTEN="127.0.0.1:$METRICS_PORT" \
    CHAT_GATEWAY__CONFORMANCE_ECHO=true CHAT_GATEWAY__MAX_FRAME_BYTES="$2" \
    "$BIN/chat-gateway" >"$OUT/$1.log" 2>&1 &
  GATEWAY_PID=$!
  local deadline=$((SECONDS + 60))
  until [ "$(http_code "http://127.0.0.1:$GATEWAY_PORT/ready")" = 200 ]; do
    kill -0 "$GATEWAY_PID" 2>/dev/null || { tail -n 20 "$OUT/$1.log" >&2; die "the gateway exited; see $OUT/$1.log"; }
    [ $SECONDS -lt $deadline ] || die "the gateway is not ready after 60 s; see $OUT/$1.log"
    sleep 0.2
  done
  # Without the Upgrade headers: 4xx from the WebSocket extractor, or 404
  # from a gateway without the route (or without conformance_echo).
  [ "$(http_code "http://127.0.0.1:$GATEWAY_PORT/ws/echo")" != 404 ] ||
    die "the gateway answers 404 on /ws/echo: $BIN/chat-gateway predates gateway.conformance_echo; rebuild it"
}

# fuzz AGENT URL CASES: one wstest fuzzingclient run, reports in $OUT/AGENT/
fuzz() {
  local agent=$1 url=$2 cases=$3 t0=$SECONDS name="mapmo-autobahn-$$-fuzz"
  mkdir -p "$OUT/$agent"
  sed -e "s#@@AGENT@@#$agent#g" -e "s#@@URL@@#$url#g" -e "s#@@CASES@@#$(cases_json "$cases")#" \
    deploy/autobahn/fuzzingclient.json >"$OUT/$agent.spec.json"
  say "$agent: wstest -m fuzzingclient, cases $cases"
  CONTAINERS+=("$name")
  # In the background: bash runs the INT/TERM trap (and so the cleanup)
  # during a `wait`, not while a foreground command runs.
  docker run --rm --name "$name" --network host --user "$(id -u):$(id -g)" --read-only --tmpfs /tmp \
    -v "$OUT:/reports" -v "$OUT/$agent.spec.json:/spec.json:ro" \
    "$IMAGE" wstest -m fuzzingclient -s /spec.json >"$OUT/$agent.wstest.log" 2>&1 &
  wait $! || die "wstest failed; see $OUT/$agent.wstest.log"
  [ -f "$OUT/$agent/index.json" ] || die "wstest wrote no report; see $OUT/$agent.wstest.log"
  say "$agent: $(grep -c '^Running test case' "$OUT/$agent.wstest.log") cases in $((SECONDS - t0)) s"
  AGENTS+=("$agent")
}

AGENTS=()
run_started=$SECONDS
if [ "$MODE" = echoserver ]; then
  port_free "$ECHO_PORT" || die "127.0.0.1:$ECHO_PORT is taken"
  name="mapmo-autobahn-$$-echo"
  CONTAINERS+=("$name")
  docker run -d --rm --name "$name" --network host --read-only --tmpfs /tmp "$IMAGE" \
    wstest -m echoserver -w "ws://127.0.0.1:$ECHO_PORT" -u 0 >/dev/null
  deadline=$((SECONDS + 30))
  until [ "$(http_code "http://127.0.0.1:$ECHO_PORT/")" != 000 ]; do
    [ $SECONDS -lt $deadline ] || die "wstest's echo server does not answer on $ECHO_PORT"
    sleep 0.2
  done
  fuzz autobahn-echoserver "ws://127.0.0.1:$ECHO_PORT" "$CASES"
else
  prepare_servers
  say "gateway: $BIN/chat-gateway ($(date -u -r "$BIN/chat-gateway" +%Y-%m-%dT%H:%MZ))"
  agent="gateway-max-frame-$MAX_FRAME_BYTES"
  start_gateway "$agent" "$MAX_FRAME_BYTES"
  fuzz "$agent" "ws://127.0.0.1:$GATEWAY_PORT/ws/echo" "$CASES"
  stop_gateway
  # (Pass 1 at 65536 already is pass 2.)
  if [ -n "$DEFAULT_CASES" ] && [ "$MAX_FRAME_BYTES" != 65536 ]; then
    agent=gateway-max-frame-65536
    start_gateway "$agent" 65536
    fuzz "$agent" "ws://127.0.0.1:$GATEWAY_PORT/ws/echo" "$DEFAULT_CASES"
    stop_gateway
  fi
  # The gateway declared the autobahn.* queues on the test broker, and its
  # presence heartbeats pile up in autobahn.presence (no presence service).
  for queue in $(deploy/services.sh rabbitmqctl test list_queues -q name 2>/dev/null | grep '^autobahn\.'); do
    deploy/services.sh rabbitmqctl test delete_queue "$queue" >/dev/null 2>&1 || true
  done
fi
ln -sfn "$STAMP" "$REPO/.data/autobahn/latest"

say "ran in $((SECONDS - run_started)) s ($((SECONDS - started)) s in all); reports: $OUT/*/index.html"
echo
status=0
docker run --rm --network none --read-only -v "$OUT:/reports:ro" \
  -v "$REPO/deploy/autobahn/summary.py:/summary.py:ro" "$IMAGE" \
  python2.7 /summary.py "${AGENTS[@]/#//reports/}" | tee "$OUT/summary.txt" || status=$?
exit "$status"
