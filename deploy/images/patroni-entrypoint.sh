#!/bin/bash
# mapmo-chat/patroni: Debian 12's PostgreSQL 15 run by Patroni 3.0.2, with
# etcd 3.4 as its DCS and HAProxy 2.6 in front (deploy/compose.patroni.yaml,
# issue 22). One image, three roles, chosen by the first argument:
#
#   entrypoint patroni   (the default) a Postgres node managed by Patroni
#   entrypoint etcd      an etcd member
#   entrypoint haproxy   TCP on 5432 to the node whose Patroni answers
#                        GET /primary with 200
#
# patroni: writes /var/lib/postgresql/patroni.yml from the environment and
# runs Patroni in the foreground (`patronictl list` reads the same file:
# PATRONICTL_CONFIG_FILE). The first node to take the cluster's initialize
# key runs initdb and creates the role and database $POSTGRES_USER (chat,
# password $POSTGRES_PASSWORD, the same as mapmo-chat/postgres); the others
# clone it with pg_basebackup.
#   NODE_NAME                  the member's name (pg1)
#   NODE_ADDRESS               the address the others reach it at (IP or name)
#   DCS_ENDPOINTS              etcd's client endpoints, host:port,host:port,...
#   PG_SYNC                    on (default) or off: Patroni's synchronous_mode
#                              (with synchronous_mode_strict off: with no
#                              standby left, the primary goes on alone)
#   PG_SUPERUSER_PASSWORD, PG_REPLICATION_PASSWORD, POSTGRES_PASSWORD  required
#   POSTGRES_USER (chat), POSTGRES_DB (the user's name), PG_SCOPE
#   (chat-pg), DCS_TTL (15 s), DCS_LOOP_WAIT (3 s), DCS_RETRY_TIMEOUT (5 s):
#   the leader key expires DCS_TTL s after the primary's last refresh, so a
#   killed primary is replaced 12-15 s later (Patroni's defaults 30/10/10:
#   20-30 s). Only applied when the cluster is bootstrapped (they live in
#   the DCS afterwards: `patronictl edit-config`).
# etcd: NODE_NAME (etcd1), NODE_ADDRESS, ETCD_INITIAL_MEMBERS
#   (etcd1=http://addr:2380,etcd2=...). (No ETCD_* names of etcd's own: etcd
#   refuses a variable that shadows a flag.)
# haproxy: PG_BACKENDS, the Patroni nodes as name=address (space-separated);
#   each is checked on its REST port 8008 every second (two failures: down,
#   its sessions closed at once; one success: up).
set -euo pipefail
ROLE="${1:-patroni}"
BIN=/usr/lib/postgresql/15/bin
HOME_DIR=/var/lib/postgresql
DATA=/var/lib/postgresql/data

case "$ROLE" in
patroni)
  : "${NODE_NAME:?set NODE_NAME}" "${NODE_ADDRESS:?set NODE_ADDRESS}" "${DCS_ENDPOINTS:?set DCS_ENDPOINTS}"
  : "${PG_SUPERUSER_PASSWORD:?set PG_SUPERUSER_PASSWORD}" "${PG_REPLICATION_PASSWORD:?set PG_REPLICATION_PASSWORD}"
  : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
  case "${PG_SYNC:-on}" in
    on | true | 1) sync=true ;;
    off | false | 0) sync=false ;;
    *) echo "PG_SYNC=$PG_SYNC: expected on or off" >&2; exit 2 ;;
  esac
  conf="$HOME_DIR/patroni.yml"
  umask 077
  cat >"$conf" <<YAML
scope: ${PG_SCOPE:-chat-pg}
name: $NODE_NAME
log:
  level: INFO
restapi:
  listen: 0.0.0.0:8008
  connect_address: $NODE_ADDRESS:8008
etcd3:
  hosts: $DCS_ENDPOINTS
watchdog:
  mode: off
bootstrap:
  dcs:
    ttl: ${DCS_TTL:-15}
    loop_wait: ${DCS_LOOP_WAIT:-3}
    retry_timeout: ${DCS_RETRY_TIMEOUT:-5}
    maximum_lag_on_failover: 1048576
    synchronous_mode: $sync
    synchronous_mode_strict: false
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_connections: 200
        wal_level: replica
        hot_standby: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 256MB
        synchronous_commit: 'on'
  initdb:
    - encoding: UTF8
    - locale: C.UTF-8
    - data-checksums
  post_bootstrap: /usr/local/bin/entrypoint post-bootstrap
postgresql:
  listen: 0.0.0.0:5432
  connect_address: $NODE_ADDRESS:5432
  data_dir: $DATA/pg15
  bin_dir: $BIN
  use_unix_socket: true
  # a replica's base backup starts at once (not after a spread checkpoint)
  basebackup:
    checkpoint: fast
  remove_data_directory_on_rewind_failure: true
  remove_data_directory_on_diverged_timelines: true
  parameters:
    unix_socket_directories: /tmp
  pg_hba:
    - local all postgres peer
    - local all all scram-sha-256
    - host replication replicator 0.0.0.0/0 scram-sha-256
    - host all all 0.0.0.0/0 scram-sha-256
  authentication:
    superuser:
      username: postgres
      password: '$PG_SUPERUSER_PASSWORD'
    replication:
      username: replicator
      password: '$PG_REPLICATION_PASSWORD'
    rewind:
      username: postgres
      password: '$PG_SUPERUSER_PASSWORD'
YAML
  exec /usr/bin/patroni "$conf"
  ;;
post-bootstrap)
  # Patroni's post_bootstrap, on the node that ran initdb, with a
  # connection string to it as the last argument.
  : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
  user="${POSTGRES_USER:-chat}"
  db="${POSTGRES_DB:-$user}"
  "$BIN/psql" -d "${!#}" -v ON_ERROR_STOP=1 -q <<SQL
\getenv pw POSTGRES_PASSWORD
CREATE ROLE "$user" LOGIN CREATEDB PASSWORD :'pw';
CREATE DATABASE "$db" OWNER "$user";
SQL
  ;;
etcd)
  : "${NODE_NAME:?set NODE_NAME}" "${NODE_ADDRESS:?set NODE_ADDRESS}" "${ETCD_INITIAL_MEMBERS:?set ETCD_INITIAL_MEMBERS}"
  exec /usr/bin/etcd --name "$NODE_NAME" --data-dir "$DATA/etcd" \
    --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls "http://$NODE_ADDRESS:2379" \
    --listen-peer-urls http://0.0.0.0:2380 --initial-advertise-peer-urls "http://$NODE_ADDRESS:2380" \
    --initial-cluster "$ETCD_INITIAL_MEMBERS" --initial-cluster-state new \
    --initial-cluster-token "${PG_SCOPE:-chat-pg}-etcd"
  ;;
haproxy)
  : "${PG_BACKENDS:?set PG_BACKENDS (name=address ...)}"
  cfg=/tmp/haproxy.cfg
  {
    cat <<CFG
global
  maxconn 2000
  log stdout format raw local0 info

defaults
  mode tcp
  log global
  option tcplog
  timeout connect 2s
  timeout client 1h
  timeout server 1h
  timeout check 1s

# The primary: the one node whose Patroni answers GET /primary with 200
# (the leader, running as a primary). A node marked down has its sessions
# closed at once, so that the clients' pools do not keep connections to a
# demoted or dead primary.
listen postgres
  bind *:5432
  option httpchk GET /primary
  http-check expect status 200
  default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
CFG
    for b in $PG_BACKENDS; do
      printf '  server %s %s:5432 check port 8008\n' "${b%%=*}" "${b#*=}"
    done
  } >"$cfg"
  exec /usr/sbin/haproxy -db -f "$cfg"
  ;;
*)
  echo "unknown role $ROLE (expected patroni, etcd or haproxy)" >&2
  exit 2
  ;;
esac
