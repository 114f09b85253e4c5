#!/usr/bin/env bash
# Browser tests of the web client (gateway/web/): Debian's Chromium driven by
# Playwright (PyPI, pinned in requirements.txt), against the real system as
# processes (tests/browser/system.py: a fresh database, persister, presence,
# two gateways, nginx on 127.0.0.1:21080).
#
#   tests/browser/run.sh                  every browser test
#   tests/browser/run.sh -k presence      extra arguments go to pytest
#
# Installs what is missing: the chromium package (apt) and a virtualenv in
# ~/.cache/mapmo-chat/browser-venv (never a browser download). Takes the
# binaries from $CHAT_BIN_DIR (default ${CARGO_TARGET_DIR:-~/.cache/mapmo-chat/target}/debug;
# build them with `cargo build`). Called by deploy/test.sh with the `test`
# servers started and their URLs in the environment; run alone, it starts
# them itself. Logs: .data/test/logs/browser-*.log. Screenshot:
# .data/test/browser/web-client.png (BROWSER_SCREENSHOT=docs/images/web-client.png
# to renew README's picture).
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { echo "[browser] $*"; }
die() { echo "[browser] FAILED: $*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

CHROMIUM=/usr/bin/chromium
VENV="$HOME/.cache/mapmo-chat/browser-venv"
REQUIREMENTS=tests/browser/requirements.txt
PYTHON=/usr/bin/python3
BIN_DIR="${CHAT_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/mapmo-chat/target}/debug}"

# Debian's Chromium, and a Python with venv.
missing=()
[ -x "$CHROMIUM" ] || missing+=(chromium)
[ -x "$PYTHON" ] || missing+=(python3)
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v psql >/dev/null || missing+=(postgresql-client)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (apt)"
  as_root apt-get update -q
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "${missing[@]}"
fi
"$CHROMIUM" --version >/dev/null 2>&1 || die "$CHROMIUM does not run"

# The virtualenv, made again whenever requirements.txt changes.
want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null || true)" != "$want" ]; then
  say "creating $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$VENV/bin/pip" install -q --disable-pip-version-check \
    -r "$REQUIREMENTS" || die "pip install -r $REQUIREMENTS"
  echo "$want" >"$VENV/.requirements.sha256"
fi
"$VENV/bin/python" -c 'import playwright, pytest' || die "the virtualenv $VENV is broken: remove it"

for binary in chat-gateway chat-persister chat-presence; do
  [ -x "$BIN_DIR/$binary" ] || die "$BIN_DIR/$binary is missing: cargo build -p chat-gateway -p chat-persister -p chat-presence (or set CHAT_BIN_DIR)"
done
export CHAT_BIN_DIR="$BIN_DIR"

# The test servers: deploy/test.sh has started them; alone, start them here.
if [ -z "${CHAT_DATABASE__URL:-}" ] || [ -z "${CHAT_AMQP__URL:-}" ] || [ -z "${CHAT_REDIS__URL:-}" ]; then
  say "starting the test servers (deploy/services.sh, instance test)"
  deploy/services.sh install test
  deploy/services.sh start test >/dev/null
  eval "$(deploy/services.sh env test)"
fi
export CHAT_PROFILE=test
export CHROMIUM PYTHONDONTWRITEBYTECODE=1

say "pytest tests/browser (binaries from $BIN_DIR)"
started=$SECONDS
set +e
"$VENV/bin/python" -m pytest tests/browser "$@"
status=$?
set -e
say "took $((SECONDS - started)) s"
case $status in
  0) ;;
  5) die "no test ran" ;;
  *) die "pytest exited with $status (logs: .data/test/logs/browser-*.log)" ;;
esac
