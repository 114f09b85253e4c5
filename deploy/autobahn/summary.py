"""Summarises Autobahn fuzzingclient reports (deploy/autobahn.sh).

    python summary.py REPORT_DIR...

Each REPORT_DIR holds the index.json of one agent (wstest's outdir). Prints,
per agent, a table of the cases per section and behaviour, then every case
whose behaviour or closing behaviour is not OK, with Autobahn's words for
it. Exits 1 when a case failed: a behaviour other than OK, NON-STRICT,
INFORMATIONAL or UNIMPLEMENTED (FAILED, NO_CLOSE), or a closing behaviour
that the HTML report also shows as a failure (FAILED, UNCLEAN). Runs on
Python 2.7 (inside the wstest image) and 3.
"""
from __future__ import print_function

import json
import os
import re
import sys

SECTIONS = {
    "1": "Framing",
    "2": "Pings/Pongs",
    "3": "Reserved bits",
    "4": "Opcodes",
    "5": "Fragmentation",
    "6": "UTF-8 handling",
    "7": "Close handling",
    "9": "Limits/performance",
    "10": "Auto-fragmentation",
    "12": "Compression",
    "13": "Compression",
}
COLUMNS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
ALLOWED = set(COLUMNS[:4])
CLOSE_FAILED = set(["FAILED", "UNCLEAN"])


def short(text, width=150):
    text = re.sub(r"<[^>]+>", "", text or "")
    text = re.sub(r"\s+", " ", text.split("MESSAGE PARTS")[0]).strip()
    return text if len(text) <= width else text[: width - 3] + "..."


def events(evs):
    """[["message", payload, binary], ["ping", ...]] -> "message(13 B), ping" """
    out = []
    for ev in evs or []:
        if ev and ev[0] == "message" and len(ev) > 1:
            kind = "binary" if len(ev) > 2 and ev[2] else "text"
            payload = ev[1] or ""
            # the report keeps only the start of a long payload
            size = "" if payload.endswith(" ...") else " (%d B)" % len(payload)
            out.append("%s message%s" % (kind, size))
        else:
            out.append(str(ev[0]) if ev else "?")
    return "[" + ", ".join(out) + "]"


def case_key(case_id):
    return tuple(int(part) for part in case_id.split("."))


def summarise(report_dir):
    with open(os.path.join(report_dir, "index.json")) as f:
        index = json.load(f)
    failed = []
    for agent in sorted(index):
        cases = index[agent]
        per_section = {}
        notes = []
        for case_id in sorted(cases, key=case_key):
            result = cases[case_id]
            behaviour = result["behavior"]
            close = result["behaviorClose"]
            section = case_id.split(".")[0]
            counts = per_section.setdefault(section, dict((c, 0) for c in COLUMNS + ["other", "cases"]))
            counts["cases"] += 1
            counts[behaviour if behaviour in COLUMNS else "other"] += 1
            if behaviour != "OK" or close != "OK":
                with open(os.path.join(report_dir, result["reportfile"])) as f:
                    detail = json.load(f)
                notes.append((case_id, behaviour, close, result.get("remoteCloseCode"), detail))
            if behaviour not in ALLOWED or close in CLOSE_FAILED:
                failed.append((agent, case_id))
        print("%s: %d cases (%s)" % (agent, len(cases), report_dir))
        header = ["section", "cases"] + COLUMNS
        if any(c["other"] for c in per_section.values()):
            header.append("other")
        print("  " + "  ".join("%-22s" % h if i == 0 else "%13s" % h for i, h in enumerate(header)))
        totals = dict((h, 0) for h in header[1:])
        for section in sorted(per_section, key=int):
            counts = per_section[section]
            name = "%s %s" % (section, SECTIONS.get(section, ""))
            row = ["%-22s" % name] + ["%13d" % counts[h] for h in header[1:]]
            print("  " + "  ".join(row))
            for h in header[1:]:
                totals[h] += counts[h]
        print("  " + "  ".join(["%-22s" % "all"] + ["%13d" % totals[h] for h in header[1:]]))
        if notes:
            print("  not OK:")
        for case_id, behaviour, close, code, detail in notes:
            print("    %-8s %s, closing %s, close code from the server: %s" % (case_id, behaviour, close, code))
            print("             case: %s" % short(detail.get("description")))
            if behaviour != "OK":
                expected = detail.get("expected") or {}
                print("             received %s; expected %s" % (
                    events(detail.get("received")),
                    "; ".join("%s: %s" % (k, events(v)) for k, v in sorted(expected.items()))))
            if close != "OK":
                print("             %s" % detail.get("resultClose", ""))
            if not detail.get("wasClean") and detail.get("wasNotCleanReason"):
                print("             not clean: %s" % detail.get("wasNotCleanReason"))
        print()
    return failed


def main():
    failed = []
    for report_dir in sys.argv[1:]:
        failed.extend(summarise(report_dir))
    if failed:
        print("FAILED: %s" % ", ".join("%s %s" % f for f in failed))
        return 1
    print("no case failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
