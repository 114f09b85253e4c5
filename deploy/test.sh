#!/usr/bin/env bash
# Runs every test of mapmo-chat on a fresh Debian machine or a developer's:
# installs what is missing, starts the private `test` servers (Postgres,
# RabbitMQ, Redis; see deploy/services.sh), clears what earlier runs left in
# them, then runs the unit tests and the end-to-end tests (tests/tests/e2e),
# which start gateways and persisters in process against those servers,
# then the browser tests of the web client (tests/browser/run.sh).
#
#   deploy/test.sh                 everything
#   deploy/test.sh -p chat-tests   extra arguments go to `cargo test` (and
#                                  skip the browser tests)
#
# The servers keep running afterwards (quicker next time) unless CI=true;
# stop them with `deploy/services.sh stop test`. Logs: .data/test/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/services.sh install test
deploy/services.sh start test >/dev/null
if [ "${CI:-}" = "true" ]; then
  trap 'deploy/services.sh stop test || true' EXIT
fi
eval "$(deploy/services.sh env test)"
export CHAT_PROFILE=test

# Each test makes its own database and its own exchanges and queues; clear
# those of earlier runs so they do not pile up.
echo "[test] clearing state left by earlier runs"
# postgres://user:password@host:port/db -> libpq variables (a password on
# psql's command line would show in ps).
db_url=${CHAT_DATABASE__URL#*://}
db_auth=${db_url%%@*} db_server=${db_url#*@}
db_server=${db_server%%/*}
export PGUSER=${db_auth%%:*} PGHOST=${db_server%:*} PGPORT=${db_server##*:} PGDATABASE=postgres
if [ "$db_auth" != "$PGUSER" ]; then export PGPASSWORD=${db_auth#*:}; fi
psql -Atqc \
  "SELECT 'DROP DATABASE \"' || datname || '\";' FROM pg_database WHERE datname LIKE 'test\_%'" \
  | psql -q >/dev/null
deploy/services.sh rabbitmqctl test -q stop_app
deploy/services.sh rabbitmqctl test -q reset
deploy/services.sh rabbitmqctl test -q start_app
deploy/services.sh rabbit-policies test   # a reset removes them

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mapmo-chat/target}"
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
# One test runs the gateway as a process of its own (to kill it with
# SIGKILL), and the browser tests run every service as a process;
# `cargo test` builds other packages' binaries only in test form, so build
# the real ones first (this must not depend on a warm target dir).
echo "[test] cargo build of the services (target dir $CARGO_TARGET_DIR)"
cargo build -p chat-gateway -p chat-persister -p chat-presence --bins
echo "[test] promtool: the alert rules, and their unit tests"
promtool check rules deploy/observability/rules.yml
promtool test rules deploy/observability/rules_test.yml
echo "[test] k8s/: render, validate (kubernetes-validate, checkov), check against the binaries' settings"
k8s/validate.sh
echo "[test] cargo test"
cargo test --workspace --all-targets --no-fail-fast "$@"
# The web client in Debian's Chromium against the services as processes
# (the binaries built above, with the client built in).
if [ $# -eq 0 ]; then
  echo "[test] browser tests (tests/browser/run.sh)"
  tests/browser/run.sh
fi
