#!/usr/bin/env python3
"""Offline checks of the rendered Kubernetes manifests of mapmo-chat.

k8s/validate.sh renders every kustomization and runs this with the Python of
its venv (PyYAML and kubernetes-validate):

    check_manifests.py objects --render base=base.yaml --render dev=dev.yaml \
        --render production=production.yaml
    check_manifests.py checkov NAME REPORT.json

`objects` checks, for every render:
- every object against the Kubernetes API schemas (kubernetes-validate,
  strict, Kubernetes 1.32); kinds of operators' CRDs are skipped by name,
  with the reason, and any other unknown kind fails;
- every CHAT_* variable the manifests set is a key of config/default.toml
  (CHAT_<SECTION>__<KEY>, CHAT_<SECTION>__<TABLE>__<KEY>) with a value of the
  right type; the JWT secret and the three URLs come from Secrets in every
  service; the bus layout is the same for every service;
- the restricted Pod Security Standard (and read-only root filesystems,
  resources, no service account token) on every pod and container, and
  enforced by every namespace the render owns (or an annotation says why);
- probes, ports and the shutdown timing of the services against
  config/production.toml; the public route reaches port 8080 only;
- the gateway autoscaler: on CPU, and where k8s/components/hpa-connections
  is in the render, on gateway_connections_active per pod (a metric the
  gateway exports, below 90 % of gateway.max_connections);
- where traces are on (k8s/components/otel), every service's OTLP endpoint,
  protocol, sampler, resource attributes from the downward API, and its
  egress to the collector;
- TLS to the backends, in every render but the base and the dev overlay:
  every chat pod names the CA of Postgres, RabbitMQ and Redis (the migration
  Job: of Postgres) in files of read-only volume mounts; the RabbitmqCluster
  serves TLS only, Redis too (--port 0, --tls-port), each with a
  certificate of the render that names what the services reach it by;
- a closed network: a default deny in every namespace the render owns, and
  every pod, the ones the operators make included (modelled from their
  Cluster and RabbitmqCluster by the labels the operators give them),
  selected by policies of its own for ingress and egress; no rule open to
  anyone but the gateway's public port, none for every port;
- the monitoring objects against deploy/observability/rules.yml (and the
  servers' PodMonitors against the pods they select), the dashboard's
  ConfigMap against deploy/observability/dashboard.json, and the
  operators' objects against what the services need.
`checkov` summarises a checkov JSON report: it fails on any failed check and
on any skipped check without a reason.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import pathlib
import re
import sys
import tomllib
from typing import Any, Iterator

import yaml
from kubernetes_validate import utils as kv

ROOT = pathlib.Path(__file__).resolve().parents[2]
K8S_VERSION = "1.32.0"

# Kinds that are not built into Kubernetes: their schemas come with the
# operators' CRDs, which are not on this machine. Checked below by what the
# chat services need from them instead.
CRD_KINDS = {
    ("gateway.networking.k8s.io", "HTTPRoute"):
        ("the Gateway API", "its backends and paths are checked below"),
    ("monitoring.coreos.com", "PodMonitor"):
        ("the Prometheus Operator", "its port and job name are checked below"),
    ("monitoring.coreos.com", "PrometheusRule"):
        ("the Prometheus Operator", "its groups are compared with rules.yml below"),
    ("postgresql.cnpg.io", "Cluster"):
        ("CloudNativePG", "its instances and bootstrap Secret are checked below"),
    ("postgresql.cnpg.io", "ScheduledBackup"): ("CloudNativePG", "not checked further"),
    ("barmancloud.cnpg.io", "ObjectStore"):
        ("CloudNativePG's Barman Cloud plugin", "not checked further"),
    ("rabbitmq.com", "RabbitmqCluster"):
        ("the RabbitMQ Cluster Operator", "its node count is checked below"),
    ("rabbitmq.com", "User"):
        ("the RabbitMQ Messaging Topology Operator", "its credentials Secret is checked below"),
    ("rabbitmq.com", "Permission"):
        ("the RabbitMQ Messaging Topology Operator", "not checked further"),
    ("rabbitmq.com", "Policy"):
        ("the RabbitMQ Messaging Topology Operator",
         "compared with deploy/services.sh's policy below"),
    ("cert-manager.io", "Issuer"):
        ("cert-manager", "the Certificates' issuers are checked below"),
    ("cert-manager.io", "Certificate"):
        ("cert-manager", "its issuer and the names the servers need are checked below"),
}

SERVICES = ("chat-gateway", "chat-persister", "chat-presence")
JOBS = {"chat-gateway", "chat-persister", "chat-presence"}
SECRET_SETTINGS = (
    "CHAT_AUTH__JWT_SECRET",
    "CHAT_DATABASE__URL",
    "CHAT_AMQP__URL",
    "CHAT_REDIS__URL",
)
BUS_SETTINGS = ("CHAT_AMQP__PREFIX", "CHAT_AMQP__PARTITIONS", "CHAT_AMQP__ROUTE_SHARDS")
# Read by the binaries, not settings: the profile and an extra file.
NOT_SETTINGS = {"CHAT_PROFILE", "CHAT_CONFIG_FILE"}
WORKLOADS = {"Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"}
METRICS_PORTS = {"chat-gateway": 9100, "chat-persister": 9101, "chat-presence": 9102}
MONITORING_LABEL = ("mapmo.vn/monitoring", "true")
# The host site's server API: its own port, reachable only from namespaces
# carrying this label (the site's backend).
SERVER_API_PORT = 8081
SERVER_API_LABEL = ("mapmo.vn/chat-server-api", "true")
ROLE_LABEL = "chat.mapmo.vn/role"
# The exporters of the servers the operators run, by the name of their
# container port, and the pods that serve it (k8s/overlays/production/
# monitoring.yaml; the ports the network policies open to monitoring).
SERVER_METRICS_PORTS = {
    "metrics": ("CloudNativePG's instance manager, 9187",
                {"matchExpressions": [{"key": "cnpg.io/cluster", "operator": "Exists"}]}),
    "prometheus": ("RabbitMQ's prometheus plugin, 15692",
                   {"matchLabels": {"app.kubernetes.io/component": "rabbitmq"}}),
    "prometheus-tls": ("RabbitMQ's prometheus plugin over TLS, 15691",
                       {"matchLabels": {"app.kubernetes.io/component": "rabbitmq"}}),
}


class Report:
    """Collects check results; prints each as it comes."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, problems: list[str]) -> None:
        if problems:
            self.failed += 1
            print(f"  FAIL {name}")
            for problem in problems:
                print(f"       - {problem}")
        else:
            self.passed += 1
            print(f"  ok   {name}")

    def note(self, text: str) -> None:
        print(f"       {text}")


# ---------------------------------------------------------------- helpers


def load_render(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def group_of(obj: dict[str, Any]) -> str:
    api = obj.get("apiVersion", "")
    return api.split("/")[0] if "/" in api else ""


def ident(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    for obj in objs:
        if obj.get("kind") == kind and obj["metadata"]["name"] == name:
            return obj
    return None


def app_name(obj: dict[str, Any]) -> str:
    return obj.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/name", "")


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", []) or []
    yield from spec.get("containers", []) or []


def generated(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    """A ConfigMap or Secret by its name, with or without kustomize's hash."""
    for obj in by_kind(objs, kind):
        actual = obj["metadata"]["name"]
        if actual == name or re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", actual):
            return obj
    return None


def secret_value(objs: list[dict[str, Any]], name: str, key: str) -> str | None:
    secret = find(objs, "Secret", name)
    if secret is None:
        return None
    if key in (secret.get("stringData") or {}):
        return secret["stringData"][key]
    if key in (secret.get("data") or {}):
        return base64.b64decode(secret["data"][key]).decode()
    return None


class Env:
    """A container's environment as the manifests set it."""

    def __init__(self, objs: list[dict[str, Any]], container: dict[str, Any]) -> None:
        self.values: dict[str, str | None] = {}  # None: from a Secret
        self.secret_refs: dict[str, tuple[str, str]] = {}
        self.problems: list[str] = []
        for source in container.get("envFrom", []) or []:
            if "configMapRef" in source:
                name = source["configMapRef"]["name"]
                config = find(objs, "ConfigMap", name)
                if config is None:
                    self.problems.append(f"envFrom ConfigMap {name} is not in the render")
                    continue
                for key, value in (config.get("data") or {}).items():
                    self.values[source.get("prefix", "") + key] = str(value)
            else:
                self.problems.append(f"envFrom {sorted(source)}: only ConfigMaps can be checked")
        for var in container.get("env", []) or []:
            name = var["name"]
            if "value" in var:
                self.values[name] = str(var["value"])
            elif "secretKeyRef" in var.get("valueFrom", {}):
                ref = var["valueFrom"]["secretKeyRef"]
                self.values[name] = None
                self.secret_refs[name] = (ref["name"], ref["key"])
            else:
                self.values[name] = None


# ------------------------------------------------------------ the settings


def known_settings() -> dict[str, tuple[str, Any]]:
    """CHAT_<SECTION>__<KEY> -> (dotted key, default) for every leaf of default.toml."""
    with open(ROOT / "config" / "default.toml", "rb") as f:
        defaults = tomllib.load(f)
    known: dict[str, tuple[str, Any]] = {}

    def walk(path: list[str], table: dict[str, Any]) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(path + [key], value)
            else:
                dotted = path + [key]
                known["CHAT_" + "__".join(p.upper() for p in dotted)] = (".".join(dotted), value)

    walk([], defaults)
    return known


def production_profile() -> dict[str, Any]:
    with open(ROOT / "config" / "production.toml", "rb") as f:
        return tomllib.load(f)


def value_problem(dotted: str, default: Any, value: str) -> str | None:
    """Why `value` cannot be what the binaries parse for `dotted`, or None."""
    if isinstance(default, bool):
        return None if value.lower() in ("true", "false") else "not true or false"
    if isinstance(default, int):
        return None if re.fullmatch(r"\d+", value) else "not a whole number"
    if isinstance(default, float):
        try:
            number = float(value)
        except ValueError:
            return "not a number"
        return None if number == number and abs(number) != float("inf") else "not finite"
    if isinstance(default, list):
        items = value.split(",")
        if any(not item.strip() for item in items):
            return "an empty item (a comma list; an empty value is a list of one empty string)"
        if dotted == "gateway.trusted_proxies":
            for item in items:
                try:
                    # an address or a network (host bits allowed), as
                    # shared/src/net.rs parses it
                    ipaddress.ip_network(item.strip(), strict=False)
                except ValueError:
                    return f"{item!r} is not an IP address or network"
        if dotted == "auth.allowed_origins":
            for item in items:
                if item != "*" and not re.fullmatch(r"https?://[^/\s]+", item):
                    return f"{item!r} is not an origin (scheme://host[:port], no path)"
        return None
    if dotted.endswith("listen"):
        host, _, port = value.rpartition(":")
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return "not address:port"
        return None if port.isdigit() else "not address:port"
    if dotted == "log.format":
        return None if value in ("text", "json") else "not text or json"
    url_schemes = {"database.url": ("postgres://",), "amqp.url": ("amqp://", "amqps://"),
                   "redis.url": ("redis://", "rediss://")}
    if dotted in url_schemes and not value.startswith(url_schemes[dotted]):
        return f"must start with {' or '.join(url_schemes[dotted])}"
    if dotted == "auth.jwt_secret" and len(value.encode()) < 32:
        return "shorter than 32 bytes"
    return None


# ------------------------------------------------------------------ checks


def check_schemas(report: Report, name: str, objs: list[dict[str, Any]]) -> None:
    problems: list[str] = []
    skipped: dict[str, list[str]] = {}
    checked = 0
    for obj in objs:
        key = (group_of(obj), obj.get("kind", ""))
        if key in CRD_KINDS:
            skipped.setdefault(f"{obj['apiVersion']} {obj['kind']}", []).append(
                obj["metadata"]["name"])
            continue
        try:
            kv.validate(obj, K8S_VERSION, strict=True)
            checked += 1
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            problems.append(f"{ident(obj)}: {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            problems.append(f"{ident(obj)}: {e.message}; not a known CRD kind either")
    report.check(f"{name}: {checked} objects valid against the Kubernetes {K8S_VERSION[:4]} "
                 "schemas (kubernetes-validate, strict)", problems)
    for kind, names in sorted(skipped.items()):
        owner, checked_here = CRD_KINDS[(kind.split("/")[0], kind.split()[-1])]
        report.note(f"skipped {kind} ({', '.join(names)}): a custom resource of {owner}, not "
                    "built into Kubernetes, so kubernetes-validate has no schema for it (the "
                    f"CRD comes with the operator, not on this machine); {checked_here}")


def check_settings(report: Report, name: str, objs: list[dict[str, Any]],
                   known: dict[str, tuple[str, Any]]) -> None:
    problems: list[str] = []
    names: set[str] = set()
    literal: dict[str, set[str]] = {}
    # Every ConfigMap key and env entry named CHAT_*, wherever it is.
    for config in by_kind(objs, "ConfigMap"):
        for key, value in (config.get("data") or {}).items():
            if key.startswith("CHAT_"):
                names.add(key)
                literal.setdefault(key, set()).add(str(value))
    for obj in objs:
        if obj.get("kind") not in WORKLOADS:
            continue
        for container in containers(pod_spec(obj)):
            env = Env(objs, container)
            problems += [f"{ident(obj)} {container['name']}: {p}" for p in env.problems]
            for var in container.get("env", []) or []:
                if var["name"].startswith("CHAT_"):
                    names.add(var["name"])
                    if "value" in var:
                        literal.setdefault(var["name"], set()).add(str(var["value"]))
            for var, (secret, key) in env.secret_refs.items():
                value = secret_value(objs, secret, key)
                if value is not None and var in known:
                    literal.setdefault(var, set()).add(value)
    for var in sorted(names):
        if var in NOT_SETTINGS:
            continue
        if var not in known:
            problems.append(f"{var} is not a setting of config/default.toml")
    for var, values in sorted(literal.items()):
        if var == "CHAT_PROFILE":
            bad = values - {"production"}
            if bad:
                problems.append(f"CHAT_PROFILE={sorted(bad)}: the manifests run the "
                                "production profile")
            continue
        if var not in known:
            continue
        dotted, default = known[var]
        for value in values:
            why = value_problem(dotted, default, value)
            if why:
                problems.append(f"{var}={value!r} ({dotted}): {why}")
        if var == "CHAT_AUTH__DEV_LOGIN" and "true" in {v.lower() for v in values}:
            problems.append("CHAT_AUTH__DEV_LOGIN=true: never outside a developer's machine")
    report.check(f"{name}: {len(names)} CHAT_* names are settings of config/default.toml, "
                 "with values of the right type", problems)
    report.note("set: " + ", ".join(sorted(names)))


def service_containers(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for service in SERVICES:
        deployment = find(objs, "Deployment", service)
        if deployment is None:
            continue
        for container in pod_spec(deployment)["containers"]:
            yield service, container


def check_secrets_and_bus(report: Report, name: str, objs: list[dict[str, Any]]) -> None:
    problems: list[str] = []
    present = {service for service, _ in service_containers(objs)}
    missing = set(SERVICES) - present
    if missing:
        problems.append(f"no Deployment for {sorted(missing)}")
    refs: set[tuple[str, str]] = set()
    bus: dict[str, dict[str, str | None]] = {}
    for service, container in service_containers(objs):
        env = Env(objs, container)
        for var in SECRET_SETTINGS:
            if var not in env.secret_refs:
                how = "not set" if var not in env.values else "not from a Secret"
                problems.append(f"{service}: {var} {how} (the default names a local server)")
            else:
                refs.add(env.secret_refs[var])
        bus[service] = {var: env.values.get(var) for var in BUS_SETTINGS}
    migrate = find(objs, "Job", "chat-migrate")
    if migrate is None:
        problems.append("no Job chat-migrate")
    else:
        env = Env(objs, pod_spec(migrate)["containers"][0])
        for var in ("CHAT_DATABASE__URL", "CHAT_AUTH__JWT_SECRET"):
            if var not in env.secret_refs:
                problems.append(f"chat-migrate: {var} not from a Secret")
            else:
                refs.add(env.secret_refs[var])
    report.check(f"{name}: JWT secret and database, AMQP and Redis URLs come from Secrets "
                 "in every service (and the migration Job)", problems)
    problems = []
    for var in BUS_SETTINGS:
        values = {service: settings[var] for service, settings in bus.items()}
        if None in values.values():
            problems.append(f"{var} not set in {sorted(s for s, v in values.items() if v is None)}")
        elif len(set(values.values())) > 1:
            problems.append(f"{var} differs: {values}")
    report.check(f"{name}: one bus layout (prefix, partitions, route_shards) for every service",
                 problems)
    # Secrets: where the render holds them (dev), every reference must
    # resolve; elsewhere they are created by hand (docs/operations.md).
    in_render = {s["metadata"]["name"] for s in by_kind(objs, "Secret")}
    if in_render:
        problems = []
        for obj in objs:
            if obj.get("kind") not in WORKLOADS:
                continue
            for container in containers(pod_spec(obj)):
                for var in container.get("env", []) or []:
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref and secret_value(objs, ref["name"], ref["key"]) is None:
                        problems.append(f"{ident(obj)}: {var['name']} -> Secret {ref['name']} "
                                        f"key {ref['key']} is not in the render")
            for volume in pod_spec(obj).get("volumes", []) or []:
                if "secret" in volume and volume["secret"]["secretName"] not in in_render:
                    problems.append(f"{ident(obj)}: volume Secret {volume['secret']['secretName']} "
                                    "is not in the render")
        report.check(f"{name}: every Secret reference resolves to a Secret of the render", problems)
    else:
        report.note("Secrets created outside the manifests, referenced by the services: "
                    + ", ".join(f"{n}/{k}" for n, k in sorted(refs)))


def check_pod_security(report: Report, name: str, objs: list[dict[str, Any]]) -> None:
    problems: list[str] = []
    accounts = {a["metadata"]["name"]: a for a in by_kind(objs, "ServiceAccount")}
    workloads = [o for o in objs if o.get("kind") in WORKLOADS]
    for obj in workloads:
        where = ident(obj)
        spec = pod_spec(obj)
        pod_sc = spec.get("securityContext") or {}
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(field):
                problems.append(f"{where}: {field}")
        for volume in spec.get("volumes", []) or []:
            if "hostPath" in volume:
                problems.append(f"{where}: hostPath volume {volume['name']}")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken is not false")
        if spec.get("enableServiceLinks") is not False:
            problems.append(f"{where}: enableServiceLinks is not false (service links set "
                            "CHAT_*_PORT variables for Services named chat-*)")
        account = spec.get("serviceAccountName")
        if not account or account == "default":
            problems.append(f"{where}: no service account of its own")
        elif account not in accounts:
            problems.append(f"{where}: ServiceAccount {account} is not in the render")
        elif accounts[account].get("automountServiceAccountToken") is not False:
            problems.append(f"ServiceAccount/{account}: automountServiceAccountToken is not false")
        if pod_sc.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser 0")
        for container in containers(spec):
            cwhere = f"{where} {container['name']}"
            sc = container.get("securityContext") or {}
            effective = dict(pod_sc, **sc).get

            if effective("runAsNonRoot") is not True:
                problems.append(f"{cwhere}: runAsNonRoot is not true")
            if effective("runAsUser") == 0:
                problems.append(f"{cwhere}: runAsUser 0")
            seccomp = (effective("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{cwhere}: seccompProfile is {seccomp}, not RuntimeDefault")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cwhere}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                problems.append(f"{cwhere}: privileged")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                problems.append(f"{cwhere}: capabilities do not drop ALL")
            if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
                problems.append(f"{cwhere}: adds capabilities {caps['add']}")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cwhere}: readOnlyRootFilesystem is not true")
            resources = container.get("resources") or {}
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(part) or {}):
                        problems.append(f"{cwhere}: no {resource} {part[:-1]}")
    report.check(f"{name}: restricted Pod Security Standard, read-only root, resources and "
                 f"no service account token on {len(workloads)} workloads", problems)


# A namespace that cannot enforce restricted (a pod there that needs more)
# says why in this annotation; k8s/validate.sh prints the reason.
PSS_EXCEPTION = "chat.mapmo.vn/pod-security-exception"


def check_namespaces(report: Report, name: str, objs: list[dict[str, Any]]) -> None:
    """Every namespace an overlay owns enforces the restricted Pod Security Standard."""
    problems: list[str] = []
    namespaces = by_kind(objs, "Namespace")
    for namespace in namespaces:
        labels = labels_of(namespace)
        level = labels.get("pod-security.kubernetes.io/enforce")
        why = (namespace["metadata"].get("annotations") or {}).get(PSS_EXCEPTION)
        if level == "restricted":
            continue
        if why:
            report.note(f"{ident(namespace)} enforces {level}, not restricted: {why}")
        else:
            problems.append(f"{ident(namespace)}: enforces {level or 'nothing'}, not restricted, "
                            f"and no {PSS_EXCEPTION} annotation says why")
    if namespaces:
        report.check(f"{name}: Pod Security: {', '.join(ident(n) for n in namespaces)} "
                     "enforce restricted (or say why not)", problems)


def probe(container: dict[str, Any], kind: str) -> tuple[str, Any] | None:
    """An HTTP probe as (path, port number), the port resolved from its name."""
    spec = (container.get(kind) or {}).get("httpGet")
    if spec is None:
        return None
    port = spec.get("port")
    for p in container.get("ports", []) or []:
        if p.get("name") == port:
            port = p["containerPort"]
    return spec.get("path"), port


def check_services(report: Report, name: str, objs: list[dict[str, Any]]) -> None:
    problems: list[str] = []
    profile = production_profile()
    listen = {
        "chat-gateway": int(profile["gateway"]["listen"].rsplit(":", 1)[1]),
    }
    metrics = {
        "chat-gateway": int(profile["gateway"]["metrics_listen"].rsplit(":", 1)[1]),
        "chat-persister": int(profile["persister"]["metrics_listen"].rsplit(":", 1)[1]),
        "chat-presence": int(profile["presence"]["metrics_listen"].rsplit(":", 1)[1]),
    }
    for service, container in service_containers(objs):
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", []) or []}
        if ports.get("metrics") != metrics[service]:
            problems.append(f"{service}: container port metrics is {ports.get('metrics')}, the "
                            f"production profile serves /metrics on {metrics[service]}")
        if service == "chat-gateway":
            if ports.get("http") != listen[service]:
                problems.append(f"{service}: container port http is {ports.get('http')}, the "
                                f"production profile listens on {listen[service]}")
            wanted = {
                "startupProbe": ("/health", 8080),
                "livenessProbe": ("/health", 8080),
                "readinessProbe": ("/ready?require=broker,database", 8080),
            }
        else:
            # /health on the internal port: 503 once the broker connection
            # has been down for broker_dead_ms, so a stuck client is restarted.
            wanted = {
                "startupProbe": ("/health", metrics[service]),
                "livenessProbe": ("/health", metrics[service]),
            }
        for kind, expected in wanted.items():
            if probe(container, kind) != expected:
                problems.append(f"{service}: {kind} is {probe(container, kind)}, expected GET "
                                f"{expected[0]} on {expected[1]}")
    report.check(f"{name}: ports and probes of the services match config/production.toml",
                 problems)

    problems = []
    gateway = find(objs, "Deployment", "chat-gateway")
    if gateway is not None:
        spec = pod_spec(gateway)
        container = spec["containers"][0]
        sleep = (((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {})
        seconds = sleep.get("seconds")
        env = Env(objs, container)
        grace_ms = int(env.values.get("CHAT_GATEWAY__SHUTDOWN_GRACE_MS")
                       or known_settings()["CHAT_GATEWAY__SHUTDOWN_GRACE_MS"][1])
        drain_ms = int(env.values.get("CHAT_GATEWAY__DRAIN_MS")
                       or known_settings()["CHAT_GATEWAY__DRAIN_MS"][1])
        period = spec.get("terminationGracePeriodSeconds", 30)
        if not seconds:
            problems.append("chat-gateway: no preStop sleep action")
        else:
            # The gateway drains HTTP for up to the grace, closes its sessions
            # over the drain window, then waits for them up to the grace again.
            need = seconds + (2 * grace_ms + drain_ms) / 1000 + 5
            if period < need:
                problems.append(f"chat-gateway: terminationGracePeriodSeconds {period} < preStop "
                                f"{seconds} s + drain {drain_ms} ms + 2 x shutdown grace "
                                f"{grace_ms} ms + 5 s margin")
            else:
                report.note(f"gateway shutdown: preStop {seconds} s + drain {drain_ms} ms + up to "
                            f"2 x {grace_ms} ms <= {period} s grace period")
    report.check(f"{name}: the gateway's grace period covers preStop, the drain and its shutdown",
                 problems)


def check_network(report: Report, name: str, objs: list[dict[str, Any]]) -> None:
    problems: list[str] = []
    # The route: the gateway's public port only, never a metrics path.
    for route in by_kind(objs, "HTTPRoute"):
        for rule in route["spec"].get("rules", []):
            for ref in rule.get("backendRefs", []):
                if (ref.get("name"), ref.get("port")) != ("chat-gateway", 8080):
                    problems.append(f"{ident(route)}: backend {ref.get('name')}:{ref.get('port')} "
                                    "(only chat-gateway:8080 is public)")
            for match in rule.get("matches", []):
                path = (match.get("path") or {}).get("value", "/")
                if path in ("/", "") or path.startswith("/metrics"):
                    problems.append(f"{ident(route)}: path {path!r} would expose more than the API")
    # An Ingress (docs/operations.md has one) obeys the same rule.
    for ingress in by_kind(objs, "Ingress"):
        for rule in ingress["spec"].get("rules", []):
            for path in (rule.get("http") or {}).get("paths", []):
                service = path["backend"].get("service", {})
                port = service.get("port", {})
                if service.get("name") != "chat-gateway" or port not in (
                        {"number": 8080}, {"name": "http"}):
                    problems.append(f"{ident(ingress)}: backend {service} (only chat-gateway:8080)")
                if path.get("path", "/") in ("/", "") or path["path"].startswith("/metrics"):
                    problems.append(f"{ident(ingress)}: path {path.get('path')!r} would expose "
                                    "more than the API")
    public = find(objs, "Service", "chat-gateway")
    if public is not None:
        ports = [p["port"] for p in public["spec"]["ports"]]
        if ports != [8080]:
            problems.append(f"Service/chat-gateway exposes {ports}, not only 8080")
    for service in by_kind(objs, "Service"):
        if service["spec"].get("type") in ("LoadBalancer", "NodePort"):
            problems.append(f"{ident(service)}: type {service['spec']['type']}")
    report.check(f"{name}: only the gateway's port 8080 is routed; /metrics never", problems)

    problems = []
    policies = {p["metadata"]["name"]: p for p in by_kind(objs, "NetworkPolicy")}
    for service in (*SERVICES, "chat-migrate"):
        policy = policies.get(service)
        if policy is None:
            if find(objs, "Deployment", service) or find(objs, "Job", service):
                problems.append(f"no NetworkPolicy {service}")
            continue
        if set(policy["spec"].get("policyTypes", [])) != {"Ingress", "Egress"}:
            problems.append(f"NetworkPolicy/{service}: not both Ingress and Egress")
        for rule in policy["spec"].get("ingress", []) or []:
            ports = {p.get("port") for p in rule.get("ports", []) or []}
            if service == "chat-gateway" and ports == {8080}:
                continue
            if service == "chat-gateway" and ports == {SERVER_API_PORT}:
                sources = rule.get("from") or []
                if not sources or any(
                        (src.get("namespaceSelector") or {}).get("matchLabels")
                        != dict([SERVER_API_LABEL]) for src in sources):
                    problems.append(f"NetworkPolicy/{service}: server API port {SERVER_API_PORT} "
                                    f"open to more than namespaces labelled "
                                    f"{'='.join(SERVER_API_LABEL)}")
                continue
            if ports != {METRICS_PORTS.get(service)}:
                problems.append(f"NetworkPolicy/{service}: ingress to {sorted(ports)}")
            sources = rule.get("from") or []
            if not sources or any(
                    (s.get("namespaceSelector") or {}).get("matchLabels")
                    != dict([MONITORING_LABEL]) or "podSelector" in s for s in sources):
                problems.append(f"NetworkPolicy/{service}: metrics port {sorted(ports)} open to "
                                f"more than namespaces labelled {'='.join(MONITORING_LABEL)}")
    # Every server role the services are allowed to reach is carried by some
    # pod (or operator object that labels its pods) in the render.
    wanted: set[str] = set()
    for policy in policies.values():
        for rule in policy["spec"].get("egress", []) or []:
            for to in rule.get("to", []) or []:
                role = (to.get("podSelector") or {}).get("matchLabels", {}).get(ROLE_LABEL)
                if role:
                    wanted.add(role)
    carried: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == ROLE_LABEL and isinstance(value, str):
                    carried.add(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for obj in objs:
        if obj.get("kind") != "NetworkPolicy":
            walk(obj)
    if name != "base" and wanted - carried:
        problems.append(f"no server carries {ROLE_LABEL} = {sorted(wanted - carried)}")
    report.check(f"{name}: network policies of the services: metrics only from "
                 f"{'='.join(MONITORING_LABEL)} namespaces, the server API only from "
                 f"{'='.join(SERVER_API_LABEL)} namespaces, servers labelled "
                 f"({', '.join(sorted(carried)) or 'none here'})", problems)
    check_network_coverage(report, name, objs)


# ------------------------------------------- every pod, and its policies
#
# A namespace that denies by default is only safe if every pod in it also
# has policies of its own: a pod selected by the default deny alone has no
# network at all. The pods the operators make are not in the render, so
# they are modelled from the objects that make them, with the labels each
# operator gives its pods (CloudNativePG: cnpg.io/cluster; the RabbitMQ
# Cluster Operator: app.kubernetes.io/name and app.kubernetes.io/component).

# The one port any client may reach.
PUBLIC_PORTS = {("chat-gateway", 8080)}


def operator_pods(obj: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """(what, labels) of the pods an operator makes for obj."""
    name, spec = obj["metadata"]["name"], obj.get("spec") or {}
    kind = (group_of(obj), obj.get("kind"))
    if kind == ("postgresql.cnpg.io", "Cluster"):
        labels = {"cnpg.io/cluster": name,
                  **((spec.get("inheritedMetadata") or {}).get("labels") or {})}
        return [(f"{ident(obj)} instances", {**labels, "cnpg.io/podRole": "instance"}),
                (f"{ident(obj)} initdb/join Jobs", {**labels, "cnpg.io/jobRole": "join"})]
    if kind == ("rabbitmq.com", "RabbitmqCluster"):
        template = (((spec.get("override") or {}).get("statefulSet") or {}).get("spec")
                    or {}).get("template") or {}
        labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "rabbitmq",
                  "app.kubernetes.io/part-of": "rabbitmq",
                  **((template.get("metadata") or {}).get("labels") or {})}
        return [(f"{ident(obj)} nodes", labels)]
    return []


def render_pods(objs: list[dict[str, Any]]) -> list[tuple[str, str | None, dict[str, str]]]:
    """(what, namespace, labels) of every pod the render makes run."""
    pods = []
    for obj in objs:
        namespace = obj.get("metadata", {}).get("namespace")
        if obj.get("kind") in WORKLOADS:
            labels = obj["spec"]["template"].get("metadata", {}).get("labels") or {}
            pods.append((f"{ident(obj)} pods", namespace, labels))
        for what, labels in operator_pods(obj):
            pods.append((what, namespace, labels))
    return pods


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) on labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (op == "In" and labels.get(key) not in values
                or op == "NotIn" and key in labels and labels[key] in values
                or op == "Exists" and key not in labels
                or op == "DoesNotExist" and key in labels):
            return False
    return True


def is_default_deny(policy: dict[str, Any]) -> bool:
    spec = policy["spec"]
    return (not spec.get("podSelector") and not spec.get("ingress") and not spec.get("egress")
            and set(spec.get("policyTypes") or []) == {"Ingress", "Egress"})


def open_rules(policy: dict[str, Any]) -> list[str]:
    """Rules that admit anyone, or every port: only the gateway's public port may."""
    problems = []
    spec, where = policy["spec"], ident(policy)
    app = (spec.get("podSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/name")
    for rule in spec.get("ingress") or []:
        ports = {p.get("port") for p in rule.get("ports") or []}
        if not ports:
            problems.append(f"{where}: an ingress rule for every port")
        elif not rule.get("from") and not {(app, port) for port in ports} <= PUBLIC_PORTS:
            problems.append(f"{where}: ingress to {sorted(ports)} from anywhere (only "
                            f"{sorted(PUBLIC_PORTS)} is public)")
    for rule in spec.get("egress") or []:
        if not rule.get("ports"):
            problems.append(f"{where}: an egress rule for every port")
        if not rule.get("to"):
            problems.append(f"{where}: egress to anywhere")
    return problems


def check_network_coverage(report: Report, name: str, objs: list[dict[str, Any]]) -> None:
    policies = by_kind(objs, "NetworkPolicy")
    problems: list[str] = []
    owned = [ns["metadata"]["name"] for ns in by_kind(objs, "Namespace")]
    for namespace in owned:
        if not any(is_default_deny(p) and p["metadata"].get("namespace") == namespace
                   for p in policies):
            problems.append(f"Namespace/{namespace}: no default deny (a NetworkPolicy with an "
                            "empty podSelector, both policy types and no rule)")
    pods = render_pods(objs)
    for what, namespace, labels in pods:
        own = [p for p in policies if p["metadata"].get("namespace") == namespace
               and not is_default_deny(p) and selects(p["spec"].get("podSelector") or {}, labels)]
        types = {t for p in own for t in p["spec"].get("policyTypes") or []}
        for direction in ("Ingress", "Egress"):
            if direction not in types:
                problems.append(f"{what}: no NetworkPolicy of its own for {direction} "
                                f"(labels {labels})")
    for policy in policies:
        problems += open_rules(policy)
    operated = sum(1 for obj in objs for _ in operator_pods(obj))
    report.check(f"{name}: a default deny in {', '.join(owned) or 'no namespace (none here)'}; "
                 f"every pod ({len(pods) - operated} from workloads, {operated} made by "
                 "operators) has policies of its own for ingress and egress; no port open to "
                 "all but the gateway's 8080, no rule for every port", problems)


def check_monitoring(report: Report, name: str, objs: list[dict[str, Any]]) -> None:
    rules_path = ROOT / "deploy" / "observability" / "rules.yml"
    with open(rules_path, encoding="utf-8") as f:
        rules = yaml.safe_load(f)
    monitors = by_kind(objs, "PodMonitor")
    prometheus_rules = by_kind(objs, "PrometheusRule")
    if not monitors and not prometheus_rules:
        report.note("no Prometheus Operator objects in this render")
        return
    problems: list[str] = []
    jobs = set()
    # The servers' exporters (k8s/overlays/production/monitoring.yaml): each
    # PodMonitor must select pods the render makes run (the operators'
    # included) on the port their exporter serves, under a job of its own.
    chat_monitors = []
    for monitor in monitors:
        selector = monitor["spec"].get("selector") or {}
        if (selector.get("matchLabels") or {}).get("app.kubernetes.io/name") in SERVICES:
            chat_monitors.append(monitor)
            continue
        selected = [labels for _, namespace, labels in render_pods(objs)
                    if namespace == monitor["metadata"].get("namespace")
                    and selects(selector, labels)]
        if not selected:
            problems.append(f"{ident(monitor)}: selects no pod of the render")
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            wanted = SERVER_METRICS_PORTS.get(endpoint.get("port"))
            if wanted is None or not any(selects(wanted[1], labels) for labels in selected):
                problems.append(f"{ident(monitor)}: scrapes port {endpoint.get('port')}, which "
                                "is not the metrics port of the pods it selects")
            server_jobs = {r.get("replacement") for r in endpoint.get("relabelings", [])
                           if r.get("targetLabel") == "job"}
            if len(server_jobs) != 1 or server_jobs & JOBS:
                problems.append(f"{ident(monitor)}: job {sorted(map(str, server_jobs))}, expected "
                                "one job of its own (not a chat service's)")
        report.note(f"{ident(monitor)} scrapes the servers' exporter on "
                    f"{', '.join(sorted({str(e.get('port')) for e in monitor['spec']['podMetricsEndpoints']}))}")
    for monitor in chat_monitors:
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            if endpoint.get("port") != "metrics":
                problems.append(f"{ident(monitor)}: scrapes port {endpoint.get('port')}")
            for relabel in endpoint.get("relabelings", []):
                if relabel.get("targetLabel") == "job":
                    jobs.add(relabel.get("replacement"))
                    app = monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
                    if relabel.get("replacement") != app:
                        problems.append(f"{ident(monitor)}: job {relabel.get('replacement')} "
                                        f"for pods of {app}")
    if jobs != JOBS:
        problems.append(f"scrape jobs {sorted(jobs)}, the rules expect {sorted(JOBS)}")
    text = rules_path.read_text(encoding="utf-8")
    for job in re.findall(r'job="([^"]+)"', text):
        if job not in jobs:
            problems.append(f"rules.yml names job {job!r}, which no PodMonitor scrapes")
    if len(prometheus_rules) != 1:
        problems.append(f"{len(prometheus_rules)} PrometheusRule objects, expected one")
    for rule in prometheus_rules:
        if rule["spec"].get("groups") != rules["groups"]:
            problems.append(f"{ident(rule)}: spec.groups differ from "
                            f"{rules_path.relative_to(ROOT)} "
                            "(run python3 k8s/tools/prometheusrule.py)")
    report.check(f"{name}: PodMonitors scrape jobs {', '.join(sorted(jobs))} (and the servers' "
                 f"exporters: {len(monitors) - len(chat_monitors)}); the PrometheusRule holds "
                 f"exactly the groups of deploy/observability/rules.yml", problems)


def gateway_metric_names() -> set[str]:
    """The metric names the gateway registers (gateway/src/metrics.rs)."""
    text = (ROOT / "gateway" / "src" / "metrics.rs").read_text(encoding="utf-8")
    return set(re.findall(r'register\(\s*"(gateway_[a-z_]+)"', text))


def check_autoscaler(report: Report, name: str, objs: list[dict[str, Any]]) -> None:
    """The gateway autoscaler: on CPU, and on sessions per pod where a release asks."""
    hpa = find(objs, "HorizontalPodAutoscaler", "chat-gateway")
    if hpa is None:
        report.note("no gateway autoscaler in this render")
        return
    problems: list[str] = []
    spec = hpa["spec"]
    if spec.get("scaleTargetRef", {}).get("name") != "chat-gateway":
        problems.append(f"{ident(hpa)} scales {spec.get('scaleTargetRef')}, not the gateways")
    metrics = spec.get("metrics") or []
    if not any(m.get("type") == "Resource" and m["resource"].get("name") == "cpu"
               for m in metrics):
        problems.append(f"{ident(hpa)}: no CPU metric (connections add to it, never replace it)")
    gateway = find(objs, "Deployment", "chat-gateway")
    env = Env(objs, pod_spec(gateway)["containers"][0]) if gateway else None
    known = known_settings()
    limit = int((env.values.get("CHAT_GATEWAY__MAX_CONNECTIONS") if env else None)
                or known["CHAT_GATEWAY__MAX_CONNECTIONS"][1])
    exported = gateway_metric_names()
    pods = [m for m in metrics if m.get("type") == "Pods"]
    for metric in pods:
        metric_name = metric["pods"]["metric"]["name"]
        target = metric["pods"]["target"]
        if metric_name not in exported:
            problems.append(f"{ident(hpa)}: Pods metric {metric_name} is no gauge the gateway "
                            "exports (gateway/src/metrics.rs)")
            continue
        if metric_name != "gateway_connections_active":
            continue
        if target.get("type") != "AverageValue":
            problems.append(f"{ident(hpa)}: {metric_name} target {target.get('type')}, expected "
                            "AverageValue (sessions per pod)")
            continue
        try:
            average = float(str(target.get("averageValue")))
        except ValueError:
            problems.append(f"{ident(hpa)}: averageValue {target.get('averageValue')!r} is not a "
                            "plain number of sessions")
            continue
        # Below ChatGatewayNearCapacity's 90 %, so that gateways are added
        # before the alert, let alone the refusals at 100 %.
        if not 0 < average <= 0.9 * limit:
            problems.append(f"{ident(hpa)}: {average:g} sessions per pod is not below 90 % of "
                            f"gateway.max_connections ({limit})")
    what = (f"and {', '.join(m['pods']['metric']['name'] for m in pods)} per pod"
            if pods else "only (k8s/components/hpa-connections adds sessions per pod)")
    report.check(f"{name}: the gateway autoscaler scales chat-gateway on CPU {what}", problems)


OTLP_PORTS = {4317, 4318}


def check_telemetry(report: Report, name: str, objs: list[dict[str, Any]]) -> None:
    """Where the render exports traces (k8s/components/otel), every service does, alike."""
    problems: list[str] = []
    exporting = {}
    for service, container in service_containers(objs):
        env = Env(objs, container)
        exporting[service] = env
    if not any("OTEL_EXPORTER_OTLP_ENDPOINT" in env.values for env in exporting.values()):
        report.note("no OTLP endpoint in this render: traces off (k8s/components/otel turns "
                    "them on)")
        return
    policies = by_kind(objs, "NetworkPolicy")
    for service, env in sorted(exporting.items()):
        endpoint = env.values.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        protocol = env.values.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        if not endpoint or not re.fullmatch(r"http://[A-Za-z0-9.-]+(:\d+)?/?", endpoint):
            problems.append(f"{service}: OTEL_EXPORTER_OTLP_ENDPOINT {endpoint!r} is not "
                            "http://host[:port] (the binaries export over plain http only)")
        if protocol not in ("http/protobuf", "grpc"):
            problems.append(f"{service}: OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r} (only "
                            "http/protobuf and grpc are built in)")
        sampler = env.values.get("OTEL_TRACES_SAMPLER")
        if sampler and sampler.endswith("traceidratio"):
            try:
                ratio = float(env.values.get("OTEL_TRACES_SAMPLER_ARG") or "")
            except ValueError:
                ratio = -1.0
            if not 0.0 <= ratio <= 1.0:
                problems.append(f"{service}: OTEL_TRACES_SAMPLER_ARG is not a ratio in [0, 1]")
        attributes = env.values.get("OTEL_RESOURCE_ATTRIBUTES") or ""
        for key, var in (("k8s.pod.name", "K8S_POD_NAME"),
                         ("k8s.namespace.name", "K8S_NAMESPACE_NAME")):
            if f"{key}=$({var})" not in attributes:
                problems.append(f"{service}: OTEL_RESOURCE_ATTRIBUTES lacks {key}=$({var})")
        container = next(c for s_, c in service_containers(objs) if s_ == service)
        names = [v["name"] for v in container.get("env", []) or []]
        fields = {v["name"]: ((v.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
                  for v in container.get("env", []) or []}
        for var, field in (("K8S_POD_NAME", "metadata.name"),
                           ("K8S_NAMESPACE_NAME", "metadata.namespace")):
            if fields.get(var) != field:
                problems.append(f"{service}: {var} is not the downward API's {field}")
            elif "OTEL_RESOURCE_ATTRIBUTES" in names and \
                    names.index(var) > names.index("OTEL_RESOURCE_ATTRIBUTES"):
                problems.append(f"{service}: {var} comes after OTEL_RESOURCE_ATTRIBUTES, "
                                "which cannot expand it")
        deployment = find(objs, "Deployment", service)
        labels = (deployment["spec"]["template"].get("metadata") or {}).get("labels") or {}
        namespace = deployment["metadata"].get("namespace")
        ports: set[int] = set()
        for policy in policies:
            if policy["metadata"].get("namespace") != namespace or not selects(
                    policy["spec"].get("podSelector") or {}, labels):
                continue
            for rule in policy["spec"].get("egress") or []:
                ports |= {p.get("port") for p in rule.get("ports") or []}
        if not OTLP_PORTS <= ports:
            problems.append(f"{service}: no egress to the collector on {sorted(OTLP_PORTS - ports)}")
    endpoints = {env.values.get("OTEL_EXPORTER_OTLP_ENDPOINT") for env in exporting.values()}
    if len(endpoints) > 1:
        problems.append(f"the services export to different endpoints: {sorted(map(str, endpoints))}")
    report.check(f"{name}: traces: every service exports to one OTLP endpoint with its pod and "
                 "namespace as resource attributes, and may reach the collector on 4317/4318",
                 problems)


DASHBOARD_LABEL = ("grafana_dashboard", "1")


def check_dashboard(report: Report, name: str, objs: list[dict[str, Any]]) -> None:
    """The dashboard's ConfigMap holds exactly deploy/observability/dashboard.json."""
    path = ROOT / "deploy" / "observability" / "dashboard.json"
    with open(path, encoding="utf-8") as f:
        wanted = json.load(f)
    problems: list[str] = []
    maps = [c for c in by_kind(objs, "ConfigMap")
            if labels_of(c).get(DASHBOARD_LABEL[0]) == DASHBOARD_LABEL[1]]
    if len(maps) != 1:
        problems.append(f"{len(maps)} ConfigMaps labelled {'='.join(DASHBOARD_LABEL)}, "
                        "expected one (k8s/base/monitoring/dashboard.yaml)")
    for config in maps:
        data = config.get("data") or {}
        keys = [key for key in data if key.endswith(".json")]
        if len(keys) != 1 or len(data) != 1:
            problems.append(f"{ident(config)}: keys {sorted(data)}, expected one *.json")
            continue
        try:
            found = json.loads(data[keys[0]])
        except json.JSONDecodeError as e:
            problems.append(f"{ident(config)}: {keys[0]} is not JSON ({e})")
            continue
        if found != wanted:
            problems.append(f"{ident(config)}: {keys[0]} differs from "
                            f"{path.relative_to(ROOT)} (run python3 k8s/tools/dashboard.py)")
    report.check(f"{name}: the Grafana dashboard ConfigMap ({'='.join(DASHBOARD_LABEL)}) holds "
                 f"exactly the JSON of {path.relative_to(ROOT)}", problems)


def persist_policy_of_services_sh() -> tuple[str, dict[str, Any]]:
    """The policy deploy/services.sh sets: its pattern and definition."""
    text = (ROOT / "deploy" / "services.sh").read_text(encoding="utf-8")
    bound = re.search(r"^PERSIST_QUEUE_MAX=(\d+)$", text, re.M)
    pattern = re.search(r"chat-persist-bound '([^']+)'", text)
    if not bound or not pattern:
        sys.exit("deploy/services.sh: cannot find PERSIST_QUEUE_MAX or chat-persist-bound")
    return pattern.group(1), {"max-length": int(bound.group(1)), "overflow": "reject-publish"}


def check_servers(report: Report, name: str, objs: list[dict[str, Any]]) -> None:
    pattern, definition = persist_policy_of_services_sh()
    problems: list[str] = []
    policies = []
    for policy in by_kind(objs, "Policy"):
        spec = policy["spec"]
        policies.append(ident(policy))
        if (spec.get("name"), spec.get("pattern"), spec.get("applyTo"), spec.get("definition")) != (
                "chat-persist-bound", pattern, "queues", definition):
            problems.append(f"{ident(policy)}: not deploy/services.sh's chat-persist-bound "
                            f"({pattern}, {definition})")
    for secret in by_kind(objs, "Secret"):
        raw = (secret.get("data") or {}).get("definitions.json")
        if raw:
            found = json.loads(base64.b64decode(raw))
            for policy in found.get("policies", []):
                policies.append(f"{ident(secret)} definitions.json")
                if (policy.get("name"), policy.get("pattern"), policy.get("apply-to"),
                        policy.get("definition")) != ("chat-persist-bound", pattern, "queues",
                                                      definition):
                    problems.append(f"{ident(secret)}: definitions.json policy is not "
                                    "deploy/services.sh's chat-persist-bound")
    if name != "base" and not policies:
        problems.append("no broker policy chat-persist-bound")
    # The operators' objects must hand the services the Secrets they read.
    refs = {}
    for _, container in service_containers(objs):
        refs.update(Env(objs, container).secret_refs)
    for cluster in by_kind(objs, "Cluster"):
        spec = cluster["spec"]
        if spec.get("instances") != 3:
            problems.append(f"{ident(cluster)}: {spec.get('instances')} instances, not 3")
        secret = spec.get("bootstrap", {}).get("initdb", {}).get("secret", {}).get("name")
        if secret != refs.get("CHAT_DATABASE__URL", ("",))[0]:
            problems.append(f"{ident(cluster)}: bootstrap secret {secret}, the services read "
                            f"{refs.get('CHAT_DATABASE__URL')}")
    for cluster in by_kind(objs, "RabbitmqCluster"):
        if cluster["spec"].get("replicas") != 3:
            problems.append(f"{ident(cluster)}: {cluster['spec'].get('replicas')} nodes, not 3")
    for user in by_kind(objs, "User"):
        secret = (user["spec"].get("importCredentialsSecret") or {}).get("name")
        if secret != refs.get("CHAT_AMQP__URL", ("",))[0]:
            problems.append(f"{ident(user)}: credentials from {secret}, the services read "
                            f"{refs.get('CHAT_AMQP__URL')}")
    redis = find(objs, "StatefulSet", "chat-redis")
    if redis is not None:
        env = Env(objs, pod_spec(redis)["containers"][0])
        secret = env.secret_refs.get("REDIS_PASSWORD", ("",))[0]
        if secret != refs.get("CHAT_REDIS__URL", ("",))[0]:
            problems.append(f"StatefulSet/chat-redis: password from {secret}, the services "
                            f"read {refs.get('CHAT_REDIS__URL')}")
    # Where the render holds the credentials (dev), each URL must carry the
    # password its server is given.
    pairs = [("CHAT_DATABASE__URL", "password"), ("CHAT_AMQP__URL", "password"),
             ("CHAT_REDIS__URL", "password")]
    for var, key in pairs:
        if var not in refs:
            continue
        secret, url_key = refs[var]
        url, password = secret_value(objs, secret, url_key), secret_value(objs, secret, key)
        if url is not None and password is not None and f":{password}@" not in url:
            problems.append(f"Secret/{secret}: {url_key} does not carry its {key}")
    for secret in by_kind(objs, "Secret"):
        raw = (secret.get("data") or {}).get("definitions.json")
        if raw and "CHAT_AMQP__URL" in refs:
            users = json.loads(base64.b64decode(raw)).get("users", [])
            url = secret_value(objs, *refs["CHAT_AMQP__URL"]) or ""
            if not any(f"//{u['name']}:{u.get('password')}@" in url for u in users):
                problems.append(f"{ident(secret)}: no user of definitions.json matches "
                                "the AMQP URL's credentials")
    report.check(f"{name}: broker policy chat-persist-bound as deploy/services.sh sets it "
                 f"({', '.join(policies) or 'none here'}); servers use the services' Secrets",
                 problems)


# ------------------------------------------------------ TLS to the backends
#
# The base (no servers) and the laptop overlay talk to their servers in
# plain text; every other render (the production template and each release)
# must reach all three over TLS and check their certificates.
PLAIN_RENDERS = {"base", "dev"}
# The CA file settings, each with the URL it goes with.
CA_FILES = {
    "CHAT_DATABASE__CA_FILE": "CHAT_DATABASE__URL",
    "CHAT_AMQP__CA_FILE": "CHAT_AMQP__URL",
    "CHAT_REDIS__CA_FILE": "CHAT_REDIS__URL",
}


def chat_pods(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], tuple[str, ...]]]:
    """(name, pod spec, CA settings it needs) of the services and the migration Job."""
    for service in SERVICES:
        deployment = find(objs, "Deployment", service)
        if deployment is not None:
            # The persister reaches Postgres and RabbitMQ only (and checks
            # only their certificates at start).
            needs = tuple(var for var in CA_FILES
                          if service != "chat-persister" or var != "CHAT_REDIS__CA_FILE")
            yield service, pod_spec(deployment), needs
    migrate = find(objs, "Job", "chat-migrate")
    if migrate is not None:
        # It reads the database URL only (k8s/base/migrate.yaml).
        yield "chat-migrate", pod_spec(migrate), ("CHAT_DATABASE__CA_FILE",)


def volume_files(volume: dict[str, Any]) -> set[str] | None:
    """The files of Secrets and ConfigMaps a volume holds (None: any key of one,
    which is not in the render to say); none for other kinds of volume."""
    if "projected" in volume:
        sources = [s.get("secret") or s.get("configMap")
                   for s in volume["projected"].get("sources") or []]
    else:
        sources = [volume.get("secret") or volume.get("configMap")]
    files: set[str] = set()
    for source in filter(None, sources):
        if not source.get("items"):
            return None
        files |= {item["path"] for item in source["items"]}
    return files


def mount_problem(spec: dict[str, Any], container: dict[str, Any], path: str) -> str | None:
    """Why `path` is not a file of a read-only volume mount of the container, or None."""
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        root = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(root):
            continue
        if not mount.get("readOnly"):
            return f"{path}: its mount {mount['mountPath']} is not read-only"
        volume = volumes.get(mount["name"])
        if volume is None:
            return f"{path}: the volume {mount['name']} is not in the pod"
        files = volume_files(volume)
        relative = path[len(root):]
        if files is not None and relative not in files:
            return (f"{path}: the volume {mount['name']} holds "
                    f"{sorted(files) or 'no file of a Secret or ConfigMap'}, not {relative}")
        return None
    return f"{path} is in no volume mount"


def check_tls_clients(report: Report, name: str, objs: list[dict[str, Any]]) -> None:
    """Every chat pod checks the certificate of each server it reaches."""
    if name in PLAIN_RENDERS:
        report.note("plain connections to the servers here (no CA files); production uses TLS")
        return
    problems: list[str] = []
    pods = list(chat_pods(objs))
    for pod, spec, settings in pods:
        container = spec["containers"][0]
        env = Env(objs, container)
        for var in settings:
            path = env.values.get(var)
            if var not in env.values:
                problems.append(f"{pod}: {var} not set (the server's certificate would be "
                                "checked against public roots only)")
            elif not path or not path.startswith("/"):
                problems.append(f"{pod}: {var} is not an absolute path ({path!r})")
            elif why := mount_problem(spec, container, path):
                problems.append(f"{pod}: {var}: {why}")
        for var in sorted((set(CA_FILES) - set(settings)) & set(env.values)):
            problems.append(f"{pod}: {var} set, but {pod} does not reach the server of "
                            f"{CA_FILES[var]}")
    if not pods:
        problems.append("no chat Deployment or Job")
    report.check(f"{name}: TLS: every chat pod names the CA of Postgres, RabbitMQ and Redis "
                 "(the persister: of Postgres and RabbitMQ; the migration Job: of Postgres), each a "
                 "file of a read-only volume mount",
                 problems)


def option(args: list[str], flag: str) -> str | None:
    """The value after `flag` in a command line, or None."""
    for i, arg in enumerate(args[:-1]):
        if arg == flag:
            return args[i + 1]
    return None


def certificate_problems(objs: list[dict[str, Any]], what: str, secret: str | None,
                         names: set[str]) -> list[str]:
    """The Certificate that makes `secret` exists and carries every one of `names`."""
    certificates = [c for c in by_kind(objs, "Certificate")
                    if c["spec"].get("secretName") == secret]
    if not certificates:
        return [f"{what}: no Certificate of the render makes its Secret {secret}"]
    missing = names - set(certificates[0]["spec"].get("dnsNames") or [])
    if missing:
        return [f"{what}: {ident(certificates[0])} does not name {sorted(missing)}"]
    return []


def check_tls_servers(report: Report, name: str, objs: list[dict[str, Any]]) -> None:
    """RabbitMQ and Redis serve TLS only, with certificates of the render."""
    if name in PLAIN_RENDERS:
        return
    problems: list[str] = []
    issuers = {i["metadata"]["name"] for i in by_kind(objs, "Issuer")}
    for cert in by_kind(objs, "Certificate"):
        ref = cert["spec"].get("issuerRef") or {}
        if ref.get("kind", "Issuer") == "Issuer" and ref.get("name") not in issuers:
            problems.append(f"{ident(cert)}: its Issuer {ref.get('name')} is not in the render")
    for cluster in by_kind(objs, "RabbitmqCluster"):
        tls = cluster["spec"].get("tls") or {}
        cname, namespace = cluster["metadata"]["name"], cluster["metadata"].get("namespace")
        if not tls.get("secretName"):
            problems.append(f"{ident(cluster)}: no spec.tls.secretName (no TLS listener)")
            continue
        if tls.get("disableNonTLSListeners") is not True:
            problems.append(f"{ident(cluster)}: spec.tls.disableNonTLSListeners is not true "
                            "(plain AMQP on 5672 stays open)")
        problems += certificate_problems(objs, ident(cluster), tls["secretName"], {
            f"{cname}.{namespace}.svc", f"*.{cname}-nodes.{namespace}.svc"})
    redis = find(objs, "StatefulSet", "chat-redis")
    if redis is not None:
        spec = pod_spec(redis)
        container = spec["containers"][0]
        args = (container.get("command") or []) + (container.get("args") or [])
        if option(args, "--port") != "0":
            problems.append(f"{ident(redis)}: --port {option(args, '--port')}, not 0 (plain "
                            "text stays open)")
        if not option(args, "--tls-port"):
            problems.append(f"{ident(redis)}: no --tls-port")
        cert_file = option(args, "--tls-cert-file") or ""
        directory = cert_file.rpartition("/")[0]
        mounts = {m["name"] for m in container.get("volumeMounts") or []
                  if m["mountPath"].rstrip("/") == directory}
        secrets = [v["secret"]["secretName"] for v in spec.get("volumes") or []
                   if v["name"] in mounts and "secret" in v]
        if not secrets:
            problems.append(f"{ident(redis)}: --tls-cert-file {cert_file!r} is not in a "
                            "Secret's volume")
        else:
            namespace = redis["metadata"].get("namespace")
            problems += certificate_problems(objs, ident(redis), secrets[0],
                                             {f"chat-redis.{namespace}.svc"})
    report.check(f"{name}: TLS: RabbitMQ and Redis serve TLS only, with certificates of the "
                 "render that name their Services; every Certificate's Issuer is in the render",
                 problems)


STAGE_LABEL = "chat.mapmo.vn/stage"
SERVER_COMPONENTS = {"postgres", "rabbitmq", "redis"}


def labels_of(obj: dict[str, Any]) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels", {}) or {}


def check_stages(report: Report, name: str, objs: list[dict[str, Any]]) -> None:
    """The staged apply of docs/operations.md selects what each step needs."""
    problems: list[str] = []
    servers = [o for o in objs if labels_of(o).get(STAGE_LABEL) == "servers"]
    server_names = {ident(o) for o in servers}
    for obj in objs:
        is_server = (labels_of(obj).get("app.kubernetes.io/component") in SERVER_COMPONENTS
                     or obj.get("kind") == "Namespace")
        if is_server and ident(obj) not in server_names:
            problems.append(f"{ident(obj)}: a server object without {STAGE_LABEL}=servers")
    for obj in servers + [o for o in objs if app_name(o) == "chat-migrate"]:
        if obj.get("kind") not in WORKLOADS:
            continue
        needs = [v["valueFrom"]["secretKeyRef"]["name"]
                 for c in containers(pod_spec(obj)) for v in c.get("env", []) or []
                 if "secretKeyRef" in v.get("valueFrom", {})]
        needs += [v["secret"]["secretName"] for v in pod_spec(obj).get("volumes", []) or []
                  if "secret" in v]
        for secret in needs:
            found = find(objs, "Secret", secret)
            if found is not None and ident(found) not in server_names:
                problems.append(f"{ident(obj)} needs Secret/{secret}, which the servers "
                                "stage does not apply")
    migrate = {o.get("kind") for o in objs if app_name(o) == "chat-migrate"}
    if migrate and migrate != {"ServiceAccount", "Job", "NetworkPolicy"}:
        problems.append(f"-l app.kubernetes.io/name=chat-migrate selects {sorted(migrate)}, "
                        "not the Job, its ServiceAccount and its NetworkPolicy")
    # One service alone (docs/operations.md: persisters first) is applied as
    # app.kubernetes.io/name=chat, then =<service>: together they must bring
    # the ServiceAccount and the ConfigMap its pods need.
    for service in SERVICES:
        deployment = find(objs, "Deployment", service)
        if deployment is None:
            continue
        chosen = {ident(o) for o in objs if app_name(o) in ("chat", service)}
        spec = pod_spec(deployment)
        needs = [f"ServiceAccount/{spec.get('serviceAccountName')}"]
        needs += [f"ConfigMap/{s['configMapRef']['name']}" for c in containers(spec)
                  for s in c.get("envFrom", []) or [] if "configMapRef" in s]
        for need in needs:
            if need not in chosen:
                problems.append(f"-l app.kubernetes.io/name=chat and ={service} leave out {need}")
    report.check(f"{name}: deploy stages: {STAGE_LABEL}=servers selects {len(servers)} objects, "
                 f"app.kubernetes.io/name=chat-migrate the Job with what it needs", problems)


def objects_command(args: argparse.Namespace) -> int:
    report = Report()
    known = known_settings()
    print(f"[k8s] {len(known)} settings in config/default.toml")
    for item in args.render:
        name, _, path = item.partition("=")
        objs = load_render(path)
        print(f"[k8s] {name} ({len(objs)} objects)")
        check_schemas(report, name, objs)
        check_settings(report, name, objs, known)
        check_secrets_and_bus(report, name, objs)
        check_pod_security(report, name, objs)
        check_namespaces(report, name, objs)
        check_services(report, name, objs)
        check_network(report, name, objs)
        check_monitoring(report, name, objs)
        check_dashboard(report, name, objs)
        check_telemetry(report, name, objs)
        check_autoscaler(report, name, objs)
        check_servers(report, name, objs)
        check_tls_clients(report, name, objs)
        check_tls_servers(report, name, objs)
        check_stages(report, name, objs)
    print(f"[k8s] manifest checks: {report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


def checkov_command(args: argparse.Namespace) -> int:
    """Summarises checkov's JSON report; fails on failed or unexplained skips."""
    try:
        with open(args.report, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        print(f"  FAIL checkov {args.name}: no report ({e})")
        return 1
    reports = data if isinstance(data, list) else [data]
    failed = passed = 0
    problems: list[str] = []
    skips: list[str] = []
    for one in reports:
        results = one.get("results", {})
        passed += one.get("summary", {}).get("passed", 0)
        for check in results.get("failed_checks", []):
            failed += 1
            problems.append(f"{check['check_id']} {check['resource']}: {check['check_name']}")
        for check in results.get("skipped_checks", []):
            comment = (check.get("check_result") or {}).get("suppress_comment", "")
            if not comment or comment == "No comment provided":
                problems.append(f"{check['check_id']} {check['resource']}: "
                                "skipped without a reason")
            skips.append(f"{check['check_id']} {check['resource']}: {comment}")
    if not passed and not failed:
        problems.append("checkov ran no check")
    status = "FAIL" if problems else "ok  "
    print(f"  {status} checkov {args.name}: {passed} passed, {failed} failed, "
          f"{len(skips)} skipped (each with its reason in the manifest)")
    for problem in problems:
        print(f"       - {problem}")
    for skip in skips:
        print(f"       skipped {skip}")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    objects = sub.add_parser("objects", help="check rendered manifests")
    objects.add_argument("--render", action="append", required=True, metavar="NAME=FILE")
    objects.set_defaults(run=objects_command)
    checkov = sub.add_parser("checkov", help="summarise a checkov JSON report")
    checkov.add_argument("name")
    checkov.add_argument("report")
    checkov.set_defaults(run=checkov_command)
    args = parser.parse_args()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
