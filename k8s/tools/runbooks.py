#!/usr/bin/env python3
"""Checks that every alert's runbook_url leads to a heading that exists.

Every alert in deploy/observability/rules.yml carries the annotation

    runbook_url: https://github.com/mapmo/chat/blob/main/docs/operations.md#<anchor>

(absolute, because Alertmanager, Grafana and the pager show it as a link
outside the repository; RUNBOOK_BASE below is the one place that names
where the repository lives). The anchor must be one that GitHub makes for
a heading of docs/operations.md. The links inside docs/operations.md
(`](#anchor)`) are checked against the same anchors.

    runbooks.py          exit 1 on an alert without a runbook, a runbook_url
                         elsewhere, or an anchor no heading makes

GitHub's anchors (github-slugger): the heading's text as rendered (inline
code marks, emphasis and link targets dropped), lower-cased, every
character that is not a letter, a digit, a space, "-" or "_" removed, each
space made "-"; a repeated anchor gets "-1", "-2", ... Lines inside fenced
code blocks are not headings. Needs PyYAML.
"""

from __future__ import annotations

import pathlib
import re
import sys
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "observability" / "rules.yml"
RUNBOOKS = ROOT / "docs" / "operations.md"
RUNBOOK_BASE = "https://github.com/mapmo/chat/blob/main/docs/operations.md#"


def rendered(heading: str) -> str:
    """The text GitHub shows for a heading's markdown."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links, images: their text
    text = text.replace("`", "")
    return re.sub(r"(\*\*|\*|(?<!\w)_|_(?!\w))", "", text)  # emphasis, not snake_case


def slug(text: str) -> str:
    text = rendered(text).strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(markdown: str) -> list[str]:
    """Every anchor the headings of a markdown file get on GitHub, in order."""
    found: list[str] = []
    seen: dict[str, int] = {}
    fence = None
    for line in markdown.splitlines():
        marker = re.match(r"\s*(```+|~~~+)", line)
        if marker:
            if fence is None:
                fence = marker.group(1)[0] * 3
            elif marker.group(1).startswith(fence):
                fence = None
            continue
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fence is None and heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.append(base if count == 0 else f"{base}-{count}")
    return found


def alerts(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules.get("groups", []) for rule in group.get("rules", [])
            if "alert" in rule]


def check_alerts(rules: dict[str, Any], known: set[str]) -> list[str]:
    problems = []
    for rule in alerts(rules):
        url = (rule.get("annotations") or {}).get("runbook_url")
        name = rule["alert"]
        if not url:
            problems.append(f"{name}: no runbook_url annotation")
        elif not url.startswith(RUNBOOK_BASE):
            problems.append(f"{name}: runbook_url {url} is not under {RUNBOOK_BASE}")
        elif url[len(RUNBOOK_BASE):] not in known:
            problems.append(f"{name}: runbook_url anchor #{url[len(RUNBOOK_BASE):]} is no "
                            f"heading of {RUNBOOKS.relative_to(ROOT)}")
    return problems


def check_links(markdown: str, known: set[str]) -> list[str]:
    """The page's own links to its headings."""
    problems = []
    for anchor in sorted(set(re.findall(r"\]\(#([^)\s]+)\)", markdown))):
        if anchor not in known:
            problems.append(f"{RUNBOOKS.relative_to(ROOT)} links to #{anchor}, which no "
                            "heading makes")
    return problems


def main() -> int:
    with open(RULES, encoding="utf-8") as f:
        rules = yaml.safe_load(f)
    markdown = RUNBOOKS.read_text(encoding="utf-8")
    known = set(anchors(markdown))
    problems = check_alerts(rules, known) + check_links(markdown, known)
    count = len(alerts(rules))
    status = "FAIL" if problems else "ok  "
    print(f"  {status} runbooks: {count} alerts of {RULES.relative_to(ROOT)}, each with a "
          f"runbook_url to a heading of {RUNBOOKS.relative_to(ROOT)}; its own links resolve")
    for problem in problems:
        print(f"       - {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
