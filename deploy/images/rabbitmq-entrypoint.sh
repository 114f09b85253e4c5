#!/bin/bash
# mapmo-chat/rabbitmq: Debian's RabbitMQ. With RABBITMQ_CONFIG_FILE set
# (k8s/ mounts one, with definitions that create the user and the policy)
# that file is used as it is; otherwise the default user is $RABBITMQ_USER
# (default chat) with $RABBITMQ_PASSWORD (required), and no guest. The Erlang cookie comes from $RABBITMQ_ERLANG_COOKIE when set
# (every node of a cluster needs the same one), and the node name from
# $RABBITMQ_NODENAME (default rabbit@<hostname>).
set -euo pipefail
export HOME=/var/lib/rabbitmq
if [ -z "${RABBITMQ_CONFIG_FILE:-}" ]; then
  : "${RABBITMQ_PASSWORD:?set RABBITMQ_PASSWORD}"
  RABBITMQ_CONFIG_FILE=/var/lib/rabbitmq/rabbitmq.conf
  {
    echo "default_user = ${RABBITMQ_USER:-chat}"
    echo "default_pass = $RABBITMQ_PASSWORD"
    echo "loopback_users = none"
    echo "listeners.tcp.default = 5672"
  } >"$RABBITMQ_CONFIG_FILE"
fi
if [ -n "${RABBITMQ_ERLANG_COOKIE:-}" ]; then
  printf '%s' "$RABBITMQ_ERLANG_COOKIE" >"$HOME/.erlang.cookie"
  chmod 400 "$HOME/.erlang.cookie"
fi
export RABBITMQ_CONFIG_FILE
export RABBITMQ_LOGS="${RABBITMQ_LOGS:--}" RABBITMQ_MNESIA_BASE="${RABBITMQ_MNESIA_BASE:-/var/lib/rabbitmq/mnesia}"
exec /usr/lib/rabbitmq/bin/rabbitmq-server
