#!/usr/bin/env python3
"""Finds the placeholders that must never reach a production cluster.

The committed production overlay (k8s/overlays/production) is a template:
it renders and is checked like any overlay, but four kinds of value in it
are placeholders that a release (k8s/release.sh) fills in. Each one applies
without an error and breaks later, quietly:

  proxies     gateway.trusted_proxies unset, or naming a documentation range
              (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32):
              every client behind the load balancer then shares one budget
              of connections per gateway, and connection 257 is refused;
  networks    a NetworkPolicy ipBlock in a documentation range (the API
              server's address): the operators' pods cannot reach the
              Kubernetes API, and Postgres and RabbitMQ never become ready;
  bucket      the example backup bucket (a destinationPath that says
              "placeholder" or "example"): WAL archiving fails and the WAL
              volume fills;
  images      an image without a registry host and an @sha256: digest: what
              runs is whatever the tag points at today, or nothing;
  monitoring  a PodMonitor or PrometheusRule without the label its
              Prometheus selects (named by the annotation
              chat.mapmo.vn/prometheus-selector, which k8s/release.sh
              writes): no scrape and no alert is ever loaded.

    placeholders.py check RENDER.yaml      exit 1 if any placeholder is left
    placeholders.py template RENDER.yaml   exit 1 unless every kind is found
                                           (a self-test: the check must see
                                           the template's placeholders)

RENDER.yaml is the output of `kubectl kustomize`. Needs PyYAML only (Debian:
python3-yaml), so that k8s/release.sh can run it without the validators'
venv.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from typing import Any, Iterator

import yaml

KINDS = ("proxies", "networks", "bucket", "images", "monitoring")

# RFC 5737 and RFC 3849: addresses reserved for documentation, never routed.
DOCUMENTATION_RANGES = [ipaddress.ip_network(n) for n in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]
TRUSTED_PROXIES = "CHAT_GATEWAY__TRUSTED_PROXIES"

# Words that only a template's backup destination contains.
BUCKET_PLACEHOLDER_WORDS = ("placeholder", "example")

# registry-host[:port]/path[:tag]@sha256:<64 hex>. A host is what Docker
# takes for one: it has a dot or a port, or is localhost; "rabbitmq:3.13"
# or "mapmo-chat/gateway" would be looked up on Docker Hub or nowhere.
PINNED_IMAGE = re.compile(
    r"(?P<host>[a-z0-9.-]+(?::[0-9]+)?)/[a-z0-9._/-]+(?::[A-Za-z0-9._-]+)?"
    r"@sha256:[0-9a-f]{64}")

SELECTOR_ANNOTATION = "chat.mapmo.vn/prometheus-selector"
MONITORING_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule", "Probe"}
WORKLOADS = {"Deployment", "StatefulSet", "Job", "CronJob", "DaemonSet", "ReplicaSet", "Pod"}


def ident(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def load(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


# ------------------------------------------------------------ proxies


def trusted_proxy_values(objs: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """(where, value) for every place the render sets gateway.trusted_proxies."""
    for obj in objs:
        if obj.get("kind") == "ConfigMap" and TRUSTED_PROXIES in (obj.get("data") or {}):
            yield ident(obj), str(obj["data"][TRUSTED_PROXIES])
        if obj.get("kind") in WORKLOADS:
            for container in pod_containers(obj):
                for var in container.get("env", []) or []:
                    if var.get("name") == TRUSTED_PROXIES and "value" in var:
                        yield f"{ident(obj)} {container['name']}", str(var["value"])


def proxies(objs: list[dict[str, Any]]) -> list[str]:
    found = []
    values = list(trusted_proxy_values(objs))
    public = any(o.get("kind") in ("HTTPRoute", "Ingress") for o in objs)
    if public and not values:
        # Behind the route's proxies an unset list is as bad as a wrong one.
        found.append(f"{TRUSTED_PROXIES} is not set, and the render routes clients "
                     "through proxies")
    for where, value in values:
        for item in (i.strip() for i in value.split(",")):
            try:
                network = ipaddress.ip_network(item, strict=False)
            except ValueError:
                found.append(f"{where}: {TRUSTED_PROXIES} item {item!r} is not an address "
                             "or network")
                continue
            doc = documentation_range(network)
            if doc:
                found.append(f"{where}: {TRUSTED_PROXIES} item {item} is in the "
                             f"documentation range {doc}")
    return found


def documentation_range(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str | None:
    """The documentation range holding all of network, if one does."""
    for doc in DOCUMENTATION_RANGES:
        if network.version == doc.version and network.subnet_of(doc):
            return str(doc)
    return None


# ------------------------------------------------------------ networks


def networks(objs: list[dict[str, Any]]) -> list[str]:
    found = []
    for policy in (o for o in objs if o.get("kind") == "NetworkPolicy"):
        spec = policy.get("spec") or {}
        for direction, peers_key in (("ingress", "from"), ("egress", "to")):
            for rule in spec.get(direction, []) or []:
                for peer in rule.get(peers_key, []) or []:
                    cidr = (peer.get("ipBlock") or {}).get("cidr")
                    if not cidr:
                        continue
                    try:
                        doc = documentation_range(ipaddress.ip_network(cidr, strict=False))
                    except ValueError:
                        found.append(f"{ident(policy)}: {direction} ipBlock {cidr!r} is not a "
                                     "network")
                        continue
                    if doc:
                        found.append(f"{ident(policy)}: {direction} ipBlock {cidr} is in the "
                                     f"documentation range {doc}")
    return found


# ------------------------------------------------------------- bucket


def destination_paths(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every destinationPath under node (CloudNativePG's backup targets)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "destinationPath" and isinstance(value, str):
                yield f"{path}.{key}".lstrip("."), value
            else:
                yield from destination_paths(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from destination_paths(item, f"{path}[{i}]")


def bucket(objs: list[dict[str, Any]]) -> list[str]:
    found = []
    for obj in objs:
        if not obj.get("apiVersion", "").split("/")[0].endswith("cnpg.io"):
            continue
        for field, value in destination_paths(obj.get("spec") or {}, "spec"):
            if any(word in value.lower() for word in BUCKET_PLACEHOLDER_WORDS):
                found.append(f"{ident(obj)}: {field} {value} is an example bucket (it says "
                             f"{' or '.join(BUCKET_PLACEHOLDER_WORDS)})")
    return found


# ------------------------------------------------------------- images


def pod_containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    if obj.get("kind") != "Pod":
        spec = spec.get("template", {}).get("spec", {})
    for key in ("initContainers", "containers"):
        yield from spec.get(key, []) or []


def image_refs(objs: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """(where, image) for every image the render runs, operators' included."""
    for obj in objs:
        if obj.get("kind") in WORKLOADS:
            for container in pod_containers(obj):
                yield f"{ident(obj)} {container['name']}", container.get("image", "")
        group = obj.get("apiVersion", "").split("/")[0]
        spec = obj.get("spec") or {}
        if (group, obj.get("kind")) == ("postgresql.cnpg.io", "Cluster") and "imageName" in spec:
            yield f"{ident(obj)} spec.imageName", spec["imageName"]
        if (group, obj.get("kind")) == ("rabbitmq.com", "RabbitmqCluster") and "image" in spec:
            yield f"{ident(obj)} spec.image", spec["image"]


def image_problem(image: str) -> str | None:
    match = PINNED_IMAGE.fullmatch(image)
    if match is None:
        return "not <registry host>/<name>@sha256:<digest>"
    host = match.group("host")
    if "." not in host and ":" not in host and host != "localhost":
        return f"{host!r} is not a registry host"
    return None


def images(objs: list[dict[str, Any]]) -> list[str]:
    found = []
    for where, image in image_refs(objs):
        why = image_problem(image)
        if why:
            found.append(f"{where}: image {image}: {why}")
    return found


# --------------------------------------------------------- monitoring


def monitoring(objs: list[dict[str, Any]]) -> list[str]:
    found = []
    for obj in objs:
        if obj.get("kind") not in MONITORING_KINDS:
            continue
        meta = obj.get("metadata", {})
        selector = (meta.get("annotations") or {}).get(SELECTOR_ANNOTATION)
        labels = meta.get("labels") or {}
        if not selector:
            found.append(f"{ident(obj)}: no {SELECTOR_ANNOTATION} annotation (which label "
                         "does your Prometheus select?)")
            continue
        key, sep, value = selector.partition("=")
        if not sep or not key or not value:
            found.append(f"{ident(obj)}: {SELECTOR_ANNOTATION}={selector!r} is not key=value")
        elif labels.get(key) != value:
            found.append(f"{ident(obj)}: {SELECTOR_ANNOTATION} names {selector}, but the "
                         f"object's label {key} is {labels.get(key)!r}")
    return found


CHECKS = {"proxies": proxies, "networks": networks, "bucket": bucket, "images": images,
          "monitoring": monitoring}


def find_all(objs: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {kind: CHECKS[kind](objs) for kind in KINDS}


def check_command(path: str, name: str) -> int:
    found = find_all(load(path))
    total = sum(len(v) for v in found.values())
    for kind in KINDS:
        status = "FAIL" if found[kind] else "ok  "
        print(f"  {status} {name}: no {kind} placeholder")
        for problem in found[kind]:
            print(f"       - {problem}")
    if total:
        print(f"       {name}: {total} placeholders left; fill them in with k8s/release.sh "
              "(docs/operations.md, \"Releases\")")
    return 1 if total else 0


def template_command(path: str, name: str) -> int:
    """The template must show every kind: else the check could pass unseen."""
    found = find_all(load(path))
    missing = [kind for kind in KINDS if not found[kind]]
    for kind in KINDS:
        status = "FAIL" if kind in missing else "ok  "
        print(f"  {status} {name} (template): the check finds its {kind} placeholders "
              f"({len(found[kind])})")
    if missing:
        print(f"       - no {', '.join(missing)} placeholder found in the template: either "
              "the check no longer sees it, or the template was filled in (keep releases "
              "out of k8s/overlays/production: k8s/release.sh)")
    return 1 if missing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("check", "template"))
    parser.add_argument("render", help="the output of kubectl kustomize")
    parser.add_argument("--name", default=None, help="what to call it in the output")
    args = parser.parse_args()
    name = args.name or args.render
    if args.command == "check":
        return check_command(args.render, name)
    return template_command(args.render, name)


if __name__ == "__main__":
    sys.exit(main())
