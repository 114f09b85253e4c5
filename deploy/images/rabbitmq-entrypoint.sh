#!/bin/bash
# mapmo-chat/rabbitmq: Debian's RabbitMQ. The default user is
# $RABBITMQ_USER (default chat) with $RABBITMQ_PASSWORD (required); no
# guest. The Erlang cookie comes from $RABBITMQ_ERLANG_COOKIE when set
# (every node of a cluster needs the same one), and the node name from
# $RABBITMQ_NODENAME (default rabbit@<hostname>).
set -euo pipefail
: "${RABBITMQ_PASSWORD:?set RABBITMQ_PASSWORD}"
RABBITMQ_USER="${RABBITMQ_USER:-chat}"
export HOME=/var/lib/rabbitmq
conf=/var/lib/rabbitmq/rabbitmq.conf
{
  echo "default_user = $RABBITMQ_USER"
  echo "default_pass = $RABBITMQ_PASSWORD"
  echo "loopback_users = none"
  echo "listeners.tcp.default = 5672"
} >"$conf"
if [ -n "${RABBITMQ_ERLANG_COOKIE:-}" ]; then
  printf '%s' "$RABBITMQ_ERLANG_COOKIE" >"$HOME/.erlang.cookie"
  chmod 400 "$HOME/.erlang.cookie"
fi
export RABBITMQ_CONFIG_FILE="$conf" RABBITMQ_LOGS=- RABBITMQ_MNESIA_BASE=/var/lib/rabbitmq/mnesia
exec /usr/lib/rabbitmq/bin/rabbitmq-server
