#!/bin/bash
# mapmo-chat/rabbitmq: Debian's RabbitMQ. With RABBITMQ_CONFIG_FILE set
# (k8s/ mounts one, with definitions that create the user and the policy)
# that file is used as it is; otherwise the default user is $RABBITMQ_USER
# (default chat) with $RABBITMQ_PASSWORD (required), and no guest. The Erlang cookie comes from $RABBITMQ_ERLANG_COOKIE when set
# (every node of a cluster needs the same one), and the node name from
# $RABBITMQ_NODENAME (default rabbit@<hostname>).
#
# A cluster (deploy/compose.yaml): RABBITMQ_CLUSTER_NODES names every node,
# comma-separated (rabbit@rabbit1,rabbit@rabbit2,rabbit@rabbit3; the host
# part must be the node's hostname and resolve on the network). A blank
# node then finds its cluster by classic_config peer discovery: it asks the
# listed nodes and joins the first that runs; if none does, it starts a new
# cluster of its own. So start one node first and the others once it
# answers (compose: depends_on service_healthy), else two blank nodes
# starting at the same moment may each start a cluster. A node that was
# already a member rejoins from its data directory (discovery only runs
# on a blank node). Why classic_config rather than `rabbitmqctl
# join_cluster` after the start: nothing has to run against a node that
# is up (no stop_app/join/start_app dance, no window where a node serves as
# a cluster of one), and a node whose volume is lost rejoins by itself.
# Partition handling is pause_minority (RABBITMQ_PARTITION_HANDLING to
# change it): a node that sees less than half of the cluster stops serving
# (closes its clients' connections and its listener) until the partition
# heals, so clients go to the majority and no side diverges; with three
# nodes one can be lost or cut off. A cut-off node is seen down after
# Erlang's net_ticktime (60 s; RABBITMQ_NET_TICKTIME to change it): until
# then the cluster waits for it (quorum queues it leads, metadata changes).
#
#   entrypoint cluster-init   a one-shot: waits until every node of
#   RABBITMQ_CLUSTER_NODES runs in one cluster, then sets the broker policy
#   chat-persist-bound (as deploy/services.sh does; `queues` applies it to
#   classic and quorum queues alike). Needs the same cookie.
set -euo pipefail
export HOME=/var/lib/rabbitmq

write_cookie() {
  if [ -n "${RABBITMQ_ERLANG_COOKIE:-}" ]; then
    # (a restarted container finds the read-only file of its last start)
    rm -f "$HOME/.erlang.cookie"
    printf '%s' "$RABBITMQ_ERLANG_COOKIE" >"$HOME/.erlang.cookie"
    chmod 400 "$HOME/.erlang.cookie"
  fi
  # (the CLI tools warn that the variable is deprecated: the file is enough)
  unset RABBITMQ_ERLANG_COOKIE
}

cluster_init() {
  : "${RABBITMQ_CLUSTER_NODES:?set RABBITMQ_CLUSTER_NODES}"
  write_cookie
  local nodes first want running deadline=$((SECONDS + ${CLUSTER_INIT_TIMEOUT:-300}))
  IFS=, read -r -a nodes <<<"$RABBITMQ_CLUSTER_NODES"
  first=${nodes[0]} want=${#nodes[@]}
  echo "cluster-init: waiting for $want running nodes (asking $first)"
  until running=$(rabbitmqctl -n "$first" -q eval 'length(rabbit_nodes:all_running()).' 2>/dev/null) &&
    [ "$running" = "$want" ]; do
    ((SECONDS < deadline)) || { echo "cluster-init: only ${running:-no} nodes after the timeout" >&2; exit 1; }
    sleep 2
  done
  rabbitmqctl -n "$first" -q set_policy --apply-to queues --priority 0 chat-persist-bound \
    '\.persist\.[0-9]+$' '{"max-length":1000000,"overflow":"reject-publish"}'
  rabbitmqctl -n "$first" cluster_status
  rabbitmqctl -n "$first" list_policies
  echo "cluster-init: $want nodes running, policy chat-persist-bound set"
}

if [ "${1:-}" = cluster-init ]; then
  cluster_init
  exit 0
fi

if [ -z "${RABBITMQ_CONFIG_FILE:-}" ]; then
  : "${RABBITMQ_PASSWORD:?set RABBITMQ_PASSWORD}"
  RABBITMQ_CONFIG_FILE=/var/lib/rabbitmq/rabbitmq.conf
  {
    echo "default_user = ${RABBITMQ_USER:-chat}"
    echo "default_pass = $RABBITMQ_PASSWORD"
    echo "loopback_users = none"
    echo "listeners.tcp.default = 5672"
    if [ -n "${RABBITMQ_CLUSTER_NODES:-}" ]; then
      echo "cluster_formation.peer_discovery_backend = classic_config"
      IFS=, read -r -a nodes <<<"$RABBITMQ_CLUSTER_NODES"
      for i in "${!nodes[@]}"; do
        echo "cluster_formation.classic_config.nodes.$((i + 1)) = ${nodes[$i]}"
      done
      echo "cluster_partition_handling = ${RABBITMQ_PARTITION_HANDLING:-pause_minority}"
      if [ -n "${RABBITMQ_NET_TICKTIME:-}" ]; then echo "net_ticktime = $RABBITMQ_NET_TICKTIME"; fi
    fi
  } >"$RABBITMQ_CONFIG_FILE"
fi
write_cookie
export RABBITMQ_CONFIG_FILE
export RABBITMQ_LOGS="${RABBITMQ_LOGS:--}" RABBITMQ_MNESIA_BASE="${RABBITMQ_MNESIA_BASE:-/var/lib/rabbitmq/mnesia}"
exec /usr/lib/rabbitmq/bin/rabbitmq-server
