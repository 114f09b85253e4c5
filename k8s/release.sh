#!/usr/bin/env bash
# Writes a release overlay: k8s/overlays/production (a template) with its
# placeholders filled in, as a kustomize overlay on top of it in a directory
# of its own. Apply that directory, never the template (docs/operations.md,
# "Releases").
#
#   k8s/release.sh --out releases/2026-12-01 \
#     --registry registry.mapmo.vn/chat \
#     --digests digests.txt \
#     --trusted-proxies 10.42.0.0/16 \
#     --api-server 172.20.0.10/32,172.20.0.11/32,172.20.0.12/32 \
#     --backup-destination s3://mapmo-chat-pg-backups/postgres \
#     --prometheus-selector release=kube-prometheus-stack \
#     --postgres-image ghcr.io/cloudnative-pg/postgresql:15.10@sha256:<digest> \
#     --rabbitmq-image docker.io/library/rabbitmq:3.13.7-management@sha256:<digest>
#
# --registry R          where deploy/images.sh --push R put the images: each
#                       becomes R/mapmo-chat/<name>@<digest>
# --digests FILE        the lines deploy/images.sh --push prints,
#                       <name>=sha256:<hex>, for gateway, persister, presence
#                       and redis (or --digest <name>=sha256:<hex>, repeated)
# --trusted-proxies L   gateway.trusted_proxies: the networks the proxies in
#                       front of the gateways connect from (comma-separated)
# --api-server L        the Kubernetes API server's endpoint addresses
#                       (comma-separated), which the operators' pods call
#                       (NetworkPolicies chat-pg-kube-api, chat-mq-kube-api)
# --backup-destination  the Barman Cloud destinationPath (s3://bucket/path,
#                       gs://..., https://<account>.blob.core.windows.net/...)
# --backup-endpoint U   optional: the S3 endpoint URL of a non-AWS store
# --otlp-endpoint U     optional: the OpenTelemetry collector's OTLP base URL,
#                       http://host[:port] (default, from k8s/components/otel:
#                       http://otel-collector.observability:4318)
# --prometheus-selector the label KEY=VALUE your Prometheus selects
#                       PodMonitors and PrometheusRules by
# --postgres-image, --rabbitmq-image
#                       the server images the operators run, pinned by digest
# --scale-on-connections
#                       optional: the gateway autoscaler also scales on open
#                       sessions per pod (k8s/components/hpa-connections;
#                       needs prometheus-adapter, docs/operations.md "Scaling")
# --force               overwrite an existing release overlay in --out
#
# It then renders the overlay (kubectl kustomize) and refuses it, removing
# its kustomization.yaml, while any placeholder is left
# (k8s/tools/placeholders.py). `k8s/validate.sh --release DIR` checks it
# fully before you apply it.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TEMPLATE="$ROOT/k8s/overlays/production"
SERVICE_IMAGES=(gateway persister presence redis)

say() { printf '[release] %s\n' "$*" >&2; }
die() { printf '[release] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

# Each value is checked against a strict pattern before it is written into
# YAML, so that nothing an argument holds can change the file's structure.
REGISTRY_RE='^[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)*$'
DIGEST_RE='^sha256:[0-9a-f]{64}$'
PINNED_RE='^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9._-]+)?@sha256:[0-9a-f]{64}$'
PROXIES_RE='^[0-9A-Fa-f.:/]+(,[0-9A-Fa-f.:/]+)*$'
DESTINATION_RE='^(s3|gs|https)://[A-Za-z0-9._~/-]+$'
ENDPOINT_RE='^https?://[A-Za-z0-9.-]+(:[0-9]+)?(/[A-Za-z0-9._~/-]*)?$'
# The binaries export over plain http:// only (an in-cluster collector).
OTLP_RE='^http://[A-Za-z0-9.-]+(:[0-9]+)?/?$'
SELECTOR_RE='^([a-z0-9.-]+/)?[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?=[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$'

out="" registry="" proxies="" api_server="" destination="" endpoint="" selector="" otlp=""
postgres_image="" rabbitmq_image="" force=0 render="" connections=0
declare -A digests=()

add_digest() {  # NAME=sha256:HEX
  local name="${1%%=*}" digest="${1#*=}"
  [[ " ${SERVICE_IMAGES[*]} " == *" $name "* ]] ||
    die "digest for $name: expected one of ${SERVICE_IMAGES[*]}"
  [[ "$digest" =~ $DIGEST_RE ]] || die "digest for $name: $digest is not sha256:<64 hex>"
  digests[$name]="$digest"
}

read_digests() {  # FILE of NAME=sha256:HEX lines; blank lines and # comments skipped
  local line
  [ -r "$1" ] || die "--digests $1: cannot read it"
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line%%#*}"
    line="${line//[[:space:]]/}"
    [ -z "$line" ] || add_digest "$line"
  done <"$1"
}

need() {  # VALUE OPTION PATTERN
  [ -n "$1" ] || die "$2 is required (k8s/release.sh --help)"
  [[ "$1" =~ $3 ]] || die "$2 $1: not of the expected form"
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --force | --scale-on-connections | -h | --help) ;;
      *) [ $# -ge 2 ] || die "$1 needs a value" ;;
    esac
    case "$1" in
      --out) out="${2:-}"; shift ;;
      --registry) registry="${2:-}"; shift ;;
      --digests) read_digests "${2:-}"; shift ;;
      --digest) add_digest "${2:-}"; shift ;;
      --trusted-proxies) proxies="${2:-}"; shift ;;
      --api-server) api_server="${2:-}"; shift ;;
      --backup-destination) destination="${2:-}"; shift ;;
      --backup-endpoint) endpoint="${2:-}"; shift ;;
      --otlp-endpoint) otlp="${2:-}"; shift ;;
      --prometheus-selector) selector="${2:-}"; shift ;;
      --postgres-image) postgres_image="${2:-}"; shift ;;
      --rabbitmq-image) rabbitmq_image="${2:-}"; shift ;;
      --force) force=1 ;;
      --scale-on-connections) connections=1 ;;
      -h | --help) usage ;;
      *) die "unknown argument $1 (k8s/release.sh --help)" ;;
    esac
    shift
  done
  [ -n "$out" ] || die "--out DIR is required"
  need "$registry" --registry "$REGISTRY_RE"
  local name
  for name in "${SERVICE_IMAGES[@]}"; do
    [ -n "${digests[$name]:-}" ] || die "no digest for $name (--digests FILE from deploy/images.sh --push)"
  done
  need "$proxies" --trusted-proxies "$PROXIES_RE"
  need "$api_server" --api-server "$PROXIES_RE"
  need "$destination" --backup-destination "$DESTINATION_RE"
  [ -z "$endpoint" ] || need "$endpoint" --backup-endpoint "$ENDPOINT_RE"
  [ -z "$otlp" ] || need "$otlp" --otlp-endpoint "$OTLP_RE"
  need "$selector" --prometheus-selector "$SELECTOR_RE"
  need "$postgres_image" --postgres-image "$PINNED_RE"
  need "$rabbitmq_image" --rabbitmq-image "$PINNED_RE"
}

# The release's kustomization.yaml, on stdout.
write_kustomization() {
  local base="$1" name cidr key="${selector%%=*}" value="${selector#*=}"
  cat <<EOF
# A release of mapmo-chat, written by k8s/release.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)
# from $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "an unknown commit").
# Do not edit: run k8s/release.sh again. It is k8s/overlays/production with
# its placeholders filled in (docs/operations.md, "Releases").
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $base
EOF
  if [ "$connections" = 1 ]; then
    cat <<EOF
# The gateway autoscaler on open sessions per pod too (prometheus-adapter).
components:
  - $(realpath --relative-to="$out" "$ROOT/k8s/components/hpa-connections")
EOF
  fi
  cat <<EOF
images:
EOF
  for name in "${SERVICE_IMAGES[@]}"; do
    printf '  - name: mapmo-chat/%s\n    newName: "%s/mapmo-chat/%s"\n    digest: "%s"\n' \
      "$name" "$registry" "$name" "${digests[$name]}"
  done
  cat <<EOF
configMapGenerator:
  - name: chat-config
    behavior: merge
    literals:
      - "CHAT_GATEWAY__TRUSTED_PROXIES=$proxies"
EOF
  if [ -n "$otlp" ]; then
    cat <<EOF
  # Where the services send their traces (k8s/components/otel).
  - name: chat-otel
    behavior: merge
    literals:
      - "OTEL_EXPORTER_OTLP_ENDPOINT=$otlp"
EOF
  fi
  cat <<EOF
patches:
  # The images the operators run.
  - target:
      group: postgresql.cnpg.io
      kind: Cluster
      name: chat-pg
    patch: |-
      - op: replace
        path: /spec/imageName
        value: "$postgres_image"
  - target:
      group: rabbitmq.com
      kind: RabbitmqCluster
      name: chat-mq
    patch: |-
      - op: replace
        path: /spec/image
        value: "$rabbitmq_image"
  # The Kubernetes API server, for the operators' pods.
  - target:
      kind: NetworkPolicy
      labelSelector: chat.mapmo.vn/egress=kube-api
    patch: |-
      - op: replace
        path: /spec/egress/0/to
        value:
EOF
  # (split on commas; the pattern checked above allows no glob character)
  for cidr in ${api_server//,/ }; do
    printf '          - ipBlock:\n              cidr: "%s"\n' "$cidr"
  done
  cat <<EOF
  # Where the Barman Cloud plugin archives WAL and base backups.
  - target:
      group: barmancloud.cnpg.io
      kind: ObjectStore
      name: chat-pg-backups
    patch: |-
      - op: replace
        path: /spec/configuration/destinationPath
        value: "$destination"
EOF
  if [ -n "$endpoint" ]; then
    cat <<EOF
      - op: add
        path: /spec/configuration/endpointURL
        value: "$endpoint"
EOF
  fi
  # A strategic merge patch: with a target, its own kind and name are
  # ignored, and it adds to the labels and annotations already there.
  cat <<EOF
  # The label the Prometheus selects these by; the annotation records which
  # label that is, for k8s/tools/placeholders.py.
  - target:
      group: monitoring.coreos.com
    patch: |-
      apiVersion: monitoring.coreos.com/v1
      kind: PodMonitor
      metadata:
        name: any
        labels:
          "$key": "$value"
        annotations:
          chat.mapmo.vn/prometheus-selector: "$selector"
EOF
}

# PyYAML, from the system (python3-yaml) or the validators' venv.
yaml_python() {
  local python
  for python in python3 "${MAPMO_K8S_VENV:-$HOME/.cache/mapmo-chat/k8s-venv}/bin/python"; do
    if "$python" -c 'import yaml' >/dev/null 2>&1; then
      echo "$python"
      return 0
    fi
  done
  die "no Python with PyYAML for k8s/tools/placeholders.py (Debian: apt-get install python3-yaml)"
}

main() {
  parse_args "$@"
  command -v kubectl >/dev/null 2>&1 || die "kubectl not found (it renders the overlay)"
  out="$(realpath -m "$out")"
  # A release holds one cluster's values: never in the committed template's place.
  case "$out/" in "$ROOT/k8s/"*) die "--out $out: keep releases out of k8s/" ;; esac
  mkdir -p "$out"
  if [ -e "$out/kustomization.yaml" ] && [ "$force" != 1 ]; then
    die "$out/kustomization.yaml exists (--force to replace it)"
  fi
  write_kustomization "$(realpath --relative-to="$out" "$TEMPLATE")" >"$out/kustomization.yaml"

  render="$(mktemp)"
  trap 'rm -f "$render"' EXIT
  if ! kubectl kustomize "$out" >"$render"; then
    rm -f "$out/kustomization.yaml"
    die "the release overlay does not render (kubectl kustomize $out)"
  fi
  if ! "$(yaml_python)" "$ROOT/k8s/tools/placeholders.py" check "$render" --name release >&2; then
    rm -f "$out/kustomization.yaml"
    die "placeholders left: release refused, $out/kustomization.yaml removed"
  fi
  say "wrote $out/kustomization.yaml ($(grep -c '^kind:' "$render") objects, no placeholder)"
  say "next: k8s/validate.sh --release $out, then kubectl apply -k $out (docs/operations.md, \"Deploying\")"
}

main "$@"
