#!/usr/bin/env bash
# Builds the runtime images of mapmo-chat on a machine without a container
# registry: nothing is pulled. The same images as deploy/Dockerfile (which
# needs a registry for its base images):
#
#   mapmo-chat/gateway:TAG  mapmo-chat/persister:TAG  mapmo-chat/presence:TAG
#
# each holding only its binary (the host's release build), glibc and libgcc,
# CA certificates, tzdata, and /etc/passwd with the non-root user 10001; no
# shell, no package manager. CHAT_PROFILE=production, STOPSIGNAL SIGTERM, OCI
# labels.
#
# How: Debian 12 is bootstrapped once into a folder (debootstrap, minbase,
# with ca-certificates and tzdata; cached under ~/.cache/mapmo-chat/images),
# the files the binaries need are copied from it into a runtime tree, and
# `docker import` turns that tree into the base image mapmo-chat/runtime;
# each service image is then a `docker build` FROM it that adds the binary.
#
# and, with `--servers`, the images of the servers the container tests and
# the dev overlay of k8s/ run, from Debian's packages on the same Debian 12
# (each bootstrapped once, with a small entrypoint from deploy/images/):
#
#   mapmo-chat/postgres:TAG (PostgreSQL 15)  mapmo-chat/rabbitmq:TAG  mapmo-chat/redis:TAG
#   mapmo-chat/nginx:TAG (the gateways' load balancer of deploy/compose.yaml)
#
# and, with `--patroni`, the image of the Postgres failover variant
# (deploy/compose.patroni.yaml, issue 22): Debian 12's PostgreSQL 15,
# Patroni 3.0.2, etcd 3.4 and HAProxy 2.6 in one image whose entrypoint
# (deploy/images/patroni-entrypoint.sh) runs one of them by its first
# argument (patroni, etcd or haproxy):
#
#   mapmo-chat/patroni:TAG
#
#   deploy/images.sh                 build (TAG=dev by default)
#   deploy/images.sh --servers       also the server images
#   deploy/images.sh --servers-only  only the server images (no binaries needed)
#   deploy/images.sh --patroni ...   also mapmo-chat/patroni (with any of the above;
#                                    --patroni alone: the chat images and it)
#   TAG=1.0 deploy/images.sh
#   CHAT_SKIP_BUILD=1 ...       use the release binaries as they are
#   TAG=1.0 deploy/images.sh --push REGISTRY >digests.txt
#       build, then push what the production overlay runs (gateway,
#       persister, presence, redis) as REGISTRY/mapmo-chat/<name>:TAG, and
#       print one <name>=sha256:<digest> line each on stdout (logs go to
#       stderr): the --digests file of k8s/release.sh. REGISTRY is a host
#       with an optional path (registry.mapmo.vn/chat); `docker login` to it
#       first. TAG must be set (not dev): the digest is what k8s/ pins, the
#       tag is for people.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG_SET="${TAG:+1}"
TAG="${TAG:-dev}"
CACHE="${CHAT_IMAGE_CACHE:-$HOME/.cache/mapmo-chat/images}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mapmo-chat/target}"
BIN="$CARGO_TARGET_DIR/release"
SERVICES=(gateway persister presence)
VERSION="$(git describe --always --dirty 2>/dev/null || echo unknown)"

say() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }

SERVERS=0 CHAT=1 PUSH="" PATRONI=0
while [ $# -gt 0 ]; do
  case "$1" in
    --servers) SERVERS=1 ;;
    --patroni) PATRONI=1 ;;
    --servers-only) SERVERS=1 CHAT=0 ;;
    --push)
      [ $# -ge 2 ] || die "--push needs a registry (host[:port][/path])"
      PUSH="${2%/}"
      shift
      ;;
    *) die "unknown argument $1 (expected --servers, --servers-only, --patroni or --push REGISTRY)" ;;
  esac
  shift
done
if [ -n "$PUSH" ]; then
  # A registry host, as Docker tells one from a Docker Hub name: a dot or a
  # port in the first part, or localhost. Lower case, no scheme.
  [[ "$PUSH" =~ ^([a-z0-9-]+\.[a-z0-9.-]+|[a-z0-9.-]+:[0-9]+|localhost)(/[a-z0-9._-]+)*$ ]] ||
    die "--push $PUSH: not a registry host with an optional path (registry.mapmo.vn/chat)"
  [ "$CHAT" = 1 ] || die "--push pushes the service images: not with --servers-only"
  { [ -n "${TAG_SET:-}" ] && [ "$TAG" != dev ]; } ||
    die "--push: set TAG to the release's version (TAG=1.0 deploy/images.sh --push $PUSH)"
fi

command -v docker >/dev/null || die "docker is not installed (the machine kind rust-docker has it)"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (is it running?)"
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
if ! command -v debootstrap >/dev/null; then
  say "installing debootstrap (Debian package)"
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
fi

started=$SECONDS
mkdir -p "$CACHE"

# 1. Debian 12, once.
ROOTFS="$CACHE/bookworm-minbase"
if [ ! -f "$ROOTFS/.complete" ]; then
  say "debootstrap bookworm (minbase + ca-certificates, tzdata) into $ROOTFS"
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase --include=ca-certificates,tzdata bookworm "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    die "debootstrap failed; see $CACHE/debootstrap.log"
  touch "$ROOTFS/.complete"
else
  say "Debian rootfs cached: $ROOTFS"
fi

# 2.-4. The chat services' images (not with --servers-only).
if [ "$CHAT" = 1 ]; then
# 2. The release binaries.
if [ "${CHAT_SKIP_BUILD:-}" != 1 ]; then
  say "cargo build --release"
  cargo build --release -p chat-gateway -p chat-persister -p chat-presence --bins
fi
for svc in "${SERVICES[@]}"; do
  [ -x "$BIN/chat-$svc" ] || die "$BIN/chat-$svc missing (build it, or unset CHAT_SKIP_BUILD)"
done

# 3. The runtime tree: exactly the shared libraries the binaries load (as
# the Debian rootfs has them), certificates, zoneinfo, a passwd file.
RUNTIME="$CACHE/runtime"
rm -rf "$RUNTIME"
mkdir -p "$RUNTIME"/{etc/ssl/certs,usr/share,tmp}
chmod 1777 "$RUNTIME/tmp"
libs=$(for svc in "${SERVICES[@]}"; do ldd "$BIN/chat-$svc"; done |
  awk '/=>/ { print $3 } /^[[:space:]]*\/lib/ { print $1 }' | sort -u)
for lib in $libs; do
  # the rootfs's copy (the image is Debian 12's, whatever the host is)
  src="$ROOTFS$lib"
  [ -e "$src" ] || src="$ROOTFS$(readlink -f "$lib")"
  [ -e "$src" ] || die "$lib is not in the Debian rootfs"
  mkdir -p "$RUNTIME$(dirname "$lib")"
  cp -L "$src" "$RUNTIME$lib"
done
# usrmerge: /lib and /lib64 are links into /usr in Debian 12
for link in lib lib64; do
  if [ -L "$ROOTFS/$link" ] && [ ! -e "$RUNTIME/$link" ]; then
    cp -a "$ROOTFS/$link" "$RUNTIME/$link"
  fi
done
cp -L "$ROOTFS/etc/ssl/certs/ca-certificates.crt" "$RUNTIME/etc/ssl/certs/"
cp -a "$ROOTFS/usr/share/zoneinfo" "$RUNTIME/usr/share/"
printf 'root:x:0:0:root:/root:/nonexistent\nchat:x:10001:10001:chat:/nonexistent:/nonexistent\n' >"$RUNTIME/etc/passwd"
printf 'root:x:0:\nchat:x:10001:\n' >"$RUNTIME/etc/group"
say "runtime tree: $(du -sh "$RUNTIME" | cut -f1) ($(echo "$libs" | wc -w) libraries)"
tar -C "$RUNTIME" -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'USER 10001:10001' \
  - "mapmo-chat/runtime:$TAG" >/dev/null
say "mapmo-chat/runtime:$TAG imported"

# 4. One image per service.
for svc in "${SERVICES[@]}"; do
  ctx="$CACHE/context-$svc"
  rm -rf "$ctx"
  mkdir -p "$ctx"
  # Without the debug line tables of the release profile (kept on the host
  # for profiling): a third of the size.
  strip -o "$ctx/chat-service" "$BIN/chat-$svc"
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM mapmo-chat/runtime:$TAG
LABEL org.opencontainers.image.title="mapmo-chat $svc" \\
      org.opencontainers.image.description="mapmo-chat $svc: real-time chat backend (Rust)" \\
      org.opencontainers.image.version="$VERSION" \\
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY chat-service /usr/local/bin/chat-service
ENV CHAT_PROFILE=production
STOPSIGNAL SIGTERM
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/chat-service"]
DOCKERFILE
  docker build --pull=false -q -t "mapmo-chat/$svc:$TAG" "$ctx" >/dev/null
  say "mapmo-chat/$svc:$TAG built ($(docker image inspect -f '{{.Size}}' "mapmo-chat/$svc:$TAG" | awk '{ printf "%.1f MB", $1 / 1e6 }'))"
done
fi

# 5. The servers, when asked: Debian's packages, an entrypoint, their user.
# server NAME PACKAGES USER DATA_DIR PORTS... (DATA_DIR is a VOLUME unless
# VOLUME=no: nginx keeps nothing)
server() {
  local name=$1 packages=$2 user=$3 data=$4
  shift 4
  local rootfs="$CACHE/bookworm-$name"
  if [ ! -f "$rootfs/.complete" ]; then
    say "debootstrap bookworm + $packages into $rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$MIRROR" \
      >"$CACHE/debootstrap-$name.log" 2>&1 || die "debootstrap failed; see $CACHE/debootstrap-$name.log"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    touch "$rootfs/.complete"
  fi
  install -m 755 "deploy/images/$name-entrypoint.sh" "$rootfs/usr/local/bin/entrypoint"
  mkdir -p "$rootfs$data"
  # The server's user gets uid and gid 10001, as every mapmo-chat image
  # (k8s/ runs every pod as 10001); its files follow.
  if [ "$(chroot "$rootfs" id -u "$user")" != 10001 ]; then
    local old_uid old_gid
    old_uid=$(chroot "$rootfs" id -u "$user")
    old_gid=$(chroot "$rootfs" id -g "$user")
    chroot "$rootfs" groupmod -g 10001 "$user"
    chroot "$rootfs" usermod -u 10001 -g 10001 "$user"
    chroot "$rootfs" find / -xdev \( -uid "$old_uid" -o -gid "$old_gid" \) -exec chown -h 10001:10001 {} + 2>/dev/null || true
  fi
  chroot "$rootfs" chown -R 10001:10001 "$data"
  local changes=(--change "USER 10001:10001" --change 'ENTRYPOINT ["/usr/local/bin/entrypoint"]')
  [ "${VOLUME:-yes}" = no ] || changes+=(--change "VOLUME $data")
  local port
  for port in "$@"; do changes+=(--change "EXPOSE $port"); done
  # Imported again only when something changed (the rootfs, its entrypoint,
  # these settings): an import of a few hundred MB takes seconds.
  local stamp have
  stamp=$(printf '%s\n' "$(stat -c %Y "$rootfs/.complete")" "${changes[@]}" |
    cat - "deploy/images/$name-entrypoint.sh" | sha256sum | cut -c1-16)
  have=$(docker image inspect -f '{{index .Config.Labels "vn.mapmo.chat.stamp"}}' "mapmo-chat/$name:$TAG" 2>/dev/null || true)
  if [ "$have" = "$stamp" ]; then
    say "mapmo-chat/$name:$TAG is up to date"
    return 0
  fi
  changes+=(--change "LABEL vn.mapmo.chat.stamp=$stamp")
  tar -C "$rootfs" --exclude=./.complete -c . | docker import "${changes[@]}" - "mapmo-chat/$name:$TAG" >/dev/null
  say "mapmo-chat/$name:$TAG imported ($(docker image inspect -f '{{.Size}}' "mapmo-chat/$name:$TAG" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
}
if [ "$SERVERS" = 1 ]; then
  server postgres postgresql-15 postgres /var/lib/postgresql/data 5432
  server rabbitmq rabbitmq-server rabbitmq /var/lib/rabbitmq 5672 4369 25672
  server redis redis-server redis /var/lib/redis 6379
  VOLUME=no server nginx nginx www-data /var/lib/nginx 8080
elif [ -n "$PUSH" ]; then
  # Production runs this one server image of ours (k8s/redis); Postgres and
  # RabbitMQ come from their operators' images.
  server redis redis-server redis /var/lib/redis 6379
fi
if [ "$PATRONI" = 1 ]; then
  # python3-etcd: Patroni's etcd3 client builds on it (the package lists it
  # as the first of alternatives, which debootstrap does not resolve);
  # etcd-client for etcdctl, when looking at the cluster by hand.
  server patroni postgresql-15,patroni,python3-etcd,etcd-server,etcd-client,haproxy \
    postgres /var/lib/postgresql/data 5432 8008 2379 2380
fi

# 6. With --push: tag, push, and print each digest as k8s/release.sh reads
# it. The digest is the registry's (RepoDigests, set by the push), so what
# k8s/ pins is exactly what was pushed.
push() {
  local name=$1 ref="$PUSH/mapmo-chat/$1:$TAG" line digest=""
  # Docker lists Docker Hub repositories without their docker.io/ prefix.
  local repo="$PUSH/mapmo-chat/$name" familiar="${PUSH#docker.io/}/mapmo-chat/$name"
  docker tag "mapmo-chat/$name:$TAG" "$ref"
  say "pushing $ref"
  docker push "$ref" >&2 || die "docker push $ref failed (docker login $PUSH?)"
  while IFS= read -r line; do
    case "$line" in "$repo@sha256:"* | "$familiar@sha256:"*) digest="${line#*@}" ;; esac
  done < <(docker image inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' "$ref")
  [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || die "no digest for $ref after the push"
  printf '%s=%s\n' "$name" "$digest"
}
if [ -n "$PUSH" ]; then
  for name in "${SERVICES[@]}" redis; do
    push "$name"
  done
  say "pushed to $PUSH: pass the lines above to k8s/release.sh --registry $PUSH --digests FILE"
fi
say "done in $((SECONDS - started)) s"
