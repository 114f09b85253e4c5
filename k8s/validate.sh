#!/usr/bin/env bash
# Validates the Kubernetes manifests of mapmo-chat offline (no cluster, no
# network once the venv exists); deploy/test.sh runs it. Exits non-zero on
# any failure. Steps:
#   1. kubectl kustomize renders k8s/base, every overlay, and an example
#      release: k8s/release.sh with example values (not placeholders) on
#      top of k8s/overlays/production, which is a template;
#   2. the PrometheusRule is up to date with deploy/observability/rules.yml,
#      the dashboard's ConfigMap with deploy/observability/dashboard.json
#      (k8s/tools/dashboard.py; step 4 compares the JSON in every render),
#      and every alert has a runbook_url whose anchor is a heading of
#      docs/operations.md (k8s/tools/runbooks.py);
#   3. k8s/tools/placeholders.py: no placeholder is left in a release
#      (documentation ranges in trusted_proxies or in a NetworkPolicy's
#      ipBlock, the example backup bucket, images without a registry host
#      and a digest, monitoring objects without their Prometheus's selector
#      label), and, as a self-test, the same check finds every kind of
#      placeholder in the template;
#   4. k8s/tools/check_manifests.py: kubernetes-validate --strict for
#      Kubernetes 1.32 (operators' CRD kinds skipped, each named with its
#      reason), CHAT_* names and values against config/default.toml, Secrets,
#      bus layout, restricted Pod Security (pods and namespaces), probes and
#      ports, route, network policies (a default deny per namespace, every
#      pod covered, the operators' included), monitoring, broker policy,
#      TLS to the backends outside dev (CA files in every chat pod, RabbitMQ
#      and Redis on TLS only);
#   5. checkov (kubernetes framework, --skip-download) on every overlay and
#      release: no failed check, every skipped one with its reason in the
#      manifest.
#
#   k8s/validate.sh                  the committed manifests
#   k8s/validate.sh --release DIR    and a release overlay of yours
#                                    (k8s/release.sh --out DIR), before you
#                                    apply it
#
# Tools: kubectl (with kustomize), python3; kubernetes-validate and checkov
# live in a venv, created on first use (needs PyPI once):
#   ~/.cache/mapmo-chat/k8s-venv (override with MAPMO_K8S_VENV).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${MAPMO_K8S_VENV:-$HOME/.cache/mapmo-chat/k8s-venv}"
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
RENDERS=(base=k8s/base dev=k8s/overlays/dev production=k8s/overlays/production)
# What is deployed: the example release, and any --release DIR.
RELEASES=(example-release)

say() { printf '[k8s] %s\n' "$*"; }
die() { printf '[k8s] FAILED: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --release)
            [ $# -ge 2 ] && [ -f "$2/kustomization.yaml" ] ||
                die "--release needs a directory with a kustomization.yaml (k8s/release.sh --out DIR)"
            name="release-$(basename "$2")"
            RENDERS+=("$name=$2")
            RELEASES+=("$name")
            shift 2
            ;;
        *) die "unknown argument $1 (expected --release DIR)" ;;
    esac
done

# An example release, made the way an operator makes one, with values of
# the right form that are not placeholders. The digests are the sha256 of a
# word: no such images exist, and none is needed offline.
example_release() {
    local out="$1" name digests=()
    for name in gateway persister presence redis; do
        digests+=(--digest "$name=sha256:$(printf '%s' "$name" | sha256sum | cut -c1-64)")
    done
    k8s/release.sh --out "$out" --registry registry.chat.mapmo.vn/chat "${digests[@]}" \
        --trusted-proxies 10.42.0.0/16,fd00:42::/56 \
        --api-server 172.20.0.10/32,172.20.0.11/32 \
        --backup-destination s3://mapmo-chat-pg-backups/postgres \
        --prometheus-selector release=kube-prometheus-stack \
        --otlp-endpoint http://opentelemetry-collector.observability:4318 \
        --scale-on-connections \
        --postgres-image "ghcr.io/cloudnative-pg/postgresql:15.10@sha256:$(printf postgres | sha256sum | cut -c1-64)" \
        --rabbitmq-image "docker.io/library/rabbitmq:3.13.7-management@sha256:$(printf rabbitmq | sha256sum | cut -c1-64)"
}

command -v kubectl >/dev/null 2>&1 || die "kubectl not found (it renders the kustomizations)"
command -v python3 >/dev/null 2>&1 || die "python3 not found"

# The validators, pinned, in a venv of their own.
if ! "$VENV/bin/python" -c 'import kubernetes_validate, checkov' >/dev/null 2>&1 ||
    [ "$("$VENV/bin/python" -m pip show checkov 2>/dev/null | sed -n 's/^Version: //p')" != "$CHECKOV_VERSION" ] ||
    [ "$("$VENV/bin/python" -m pip show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')" != "$KUBERNETES_VALIDATE_VERSION" ]; then
    say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION and checkov $CHECKOV_VERSION into $VENV (once; a minute or two)"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "checkov==$CHECKOV_VERSION" ||
        die "pip install into $VENV failed"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0

say "1. kubectl kustomize ($(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p' | head -1))"
if example_release "$work/example-release" >"$work/example-release.log" 2>&1; then
    RENDERS+=("example-release=$work/example-release")
else
    say "   k8s/release.sh (the example release): FAILED"
    sed 's/^/       /' "$work/example-release.log"
    failed=1
fi
renders=()
for item in "${RENDERS[@]}"; do
    name="${item%%=*}" dir="${item#*=}"
    if kubectl kustomize "$dir" >"$work/$name.yaml" 2>"$work/$name.err"; then
        case "$name" in
            production) what="a template: its placeholders are filled in by k8s/release.sh (step 3)" ;;
            example-release) what="k8s/release.sh with example values" ;;
            *) what="" ;;
        esac
        say "   $dir: $(grep -c '^kind:' "$work/$name.yaml") objects${what:+ ($what)}"
        renders+=(--render "$name=$work/$name.yaml")
    else
        say "   $dir: FAILED"
        sed 's/^/       /' "$work/$name.err"
        failed=1
    fi
done
[ "$failed" = 0 ] || die "a kustomization does not render"

say "2. the PrometheusRule against deploy/observability/rules.yml, the dashboard's ConfigMap against dashboard.json; every alert's runbook"
python3 k8s/tools/prometheusrule.py --check || failed=1
python3 k8s/tools/dashboard.py --check || failed=1
"$VENV/bin/python" k8s/tools/runbooks.py || failed=1

say "3. placeholders: none in a release; every kind found in the template (the check's self-test)"
for name in "${RELEASES[@]}"; do
    "$VENV/bin/python" k8s/tools/placeholders.py check "$work/$name.yaml" --name "$name" || failed=1
done
"$VENV/bin/python" k8s/tools/placeholders.py template "$work/production.yaml" --name production || failed=1

say "4. the rendered objects (kubernetes-validate for Kubernetes 1.32, settings, security, wiring)"
"$VENV/bin/python" k8s/tools/check_manifests.py objects "${renders[@]}" || failed=1

# checkov: offline. --skip-download keeps it from the Bridgecrew platform;
# BC_SKIP_MAPPING and CKV_SKIP_PACKAGE_UPDATE_CHECK from its mapping and
# PyPI version look-ups. Where a network namespace can be made (root), it
# runs in one without any network, which proves it.
offline=()
if unshare -n true >/dev/null 2>&1; then
    offline=(unshare -n)
fi
say "5. checkov (kubernetes framework, --skip-download${offline:+, in a network namespace without network})"
say "   base is left out: it has no namespace, which CKV_K8S_21 (default namespace) refuses; the overlays are what is deployed"
for name in dev production "${RELEASES[@]}"; do
    CKV_SKIP_PACKAGE_UPDATE_CHECK=true BC_SKIP_MAPPING=TRUE \
        "${offline[@]}" "$VENV/bin/checkov" --framework kubernetes --skip-download \
        --output json --file "$work/$name.yaml" >"$work/checkov-$name.json" 2>"$work/checkov-$name.err" || true
    if ! "$VENV/bin/python" k8s/tools/check_manifests.py checkov "$name" "$work/checkov-$name.json"; then
        sed 's/^/       /' "$work/checkov-$name.err" | tail -20
        failed=1
    fi
done

if [ "$failed" != 0 ]; then
    die "see the FAIL lines above"
fi
say "all checks passed"
