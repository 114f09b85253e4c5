#!/usr/bin/env bash
# Validates the Kubernetes manifests of mapmo-chat offline (no cluster, no
# network once the venv exists); deploy/test.sh runs it. Exits non-zero on
# any failure. Steps:
#   1. kubectl kustomize renders k8s/base and every overlay;
#   2. the PrometheusRule is up to date with deploy/observability/rules.yml;
#   3. k8s/tools/check_manifests.py: kubernetes-validate --strict for
#      Kubernetes 1.32 (operators' CRD kinds skipped, each named with its
#      reason), CHAT_* names and values against config/default.toml, Secrets,
#      bus layout, restricted Pod Security, probes and ports, route, network
#      policies, monitoring, broker policy;
#   4. checkov (kubernetes framework, --skip-download) on every overlay: no
#      failed check, every skipped one with its reason in the manifest.
# Tools: kubectl (with kustomize), python3; kubernetes-validate and checkov
# live in a venv, created on first use (needs PyPI once):
#   ~/.cache/mapmo-chat/k8s-venv (override with MAPMO_K8S_VENV).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${MAPMO_K8S_VENV:-$HOME/.cache/mapmo-chat/k8s-venv}"
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
RENDERS=(base=k8s/base dev=k8s/overlays/dev production=k8s/overlays/production)

say() { printf '[k8s] %s\n' "$*"; }
die() { printf '[k8s] FAILED: %s\n' "$*" >&2; exit 1; }

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
renders=()
for item in "${RENDERS[@]}"; do
    name="${item%%=*}" dir="${item#*=}"
    if kubectl kustomize "$dir" >"$work/$name.yaml" 2>"$work/$name.err"; then
        say "   $dir: $(grep -c '^kind:' "$work/$name.yaml") objects"
        renders+=(--render "$name=$work/$name.yaml")
    else
        say "   $dir: FAILED"
        sed 's/^/       /' "$work/$name.err"
        failed=1
    fi
done
[ "$failed" = 0 ] || die "a kustomization does not render"

say "2. the PrometheusRule against deploy/observability/rules.yml"
python3 k8s/tools/prometheusrule.py --check || failed=1

say "3. the rendered objects (kubernetes-validate for Kubernetes 1.32, settings, security, wiring)"
"$VENV/bin/python" k8s/tools/check_manifests.py objects "${renders[@]}" || failed=1

# checkov: offline. --skip-download keeps it from the Bridgecrew platform;
# BC_SKIP_MAPPING and CKV_SKIP_PACKAGE_UPDATE_CHECK from its mapping and
# PyPI version look-ups. Where a network namespace can be made (root), it
# runs in one without any network, which proves it.
offline=()
if unshare -n true >/dev/null 2>&1; then
    offline=(unshare -n)
fi
say "4. checkov (kubernetes framework, --skip-download${offline:+, in a network namespace without network})"
say "   base is left out: it has no namespace, which CKV_K8S_21 (default namespace) refuses; the overlays are what is deployed"
for name in dev production; do
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
