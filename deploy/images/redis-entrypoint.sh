#!/bin/bash
# mapmo-chat/redis: Debian's Redis 7, with a password ($REDIS_PASSWORD,
# required), on every address of the container, no persistence to disk
# (presence state is rebuilt from the gateways' heartbeats).
set -euo pipefail
: "${REDIS_PASSWORD:?set REDIS_PASSWORD}"
exec redis-server --bind 0.0.0.0 --port 6379 --protected-mode yes \
  --requirepass "$REDIS_PASSWORD" --save '' --appendonly no
