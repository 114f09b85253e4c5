#!/bin/bash
# mapmo-chat/postgres: Debian's PostgreSQL 15. On first start (empty
# PGDATA) creates the cluster with scram-sha-256 over TCP and a role and
# database named $POSTGRES_USER (default chat) whose password is
# $POSTGRES_PASSWORD (required), and a database $POSTGRES_DB (default: the
# user's name) it owns, then runs the server in the foreground.
set -euo pipefail
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
POSTGRES_USER="${POSTGRES_USER:-chat}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
BIN=/usr/lib/postgresql/15/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  "$BIN/initdb" -D "$PGDATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >/dev/null
  {
    echo "listen_addresses = '*'"
    echo "unix_socket_directories = '/tmp'"
    echo "max_connections = 200"
  } >>"$PGDATA/postgresql.conf"
  echo "host all all 0.0.0.0/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
  "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  "$BIN/psql" -h /tmp -U postgres -v ON_ERROR_STOP=1 -q <<SQL
\set pw \`cat $pwfile\`
CREATE ROLE "$POSTGRES_USER" LOGIN CREATEDB PASSWORD :'pw';
CREATE DATABASE "$POSTGRES_DB" OWNER "$POSTGRES_USER";
SQL
  rm -f "$pwfile"
  "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec "$BIN/postgres" -D "$PGDATA"
