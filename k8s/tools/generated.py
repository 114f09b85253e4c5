"""The command line of the tools that generate a manifest from a file of
deploy/observability (prometheusrule.py, dashboard.py): write it, or with
--check exit 1 when the committed copy differs from what would be written."""

import argparse
import sys
from pathlib import Path
from typing import Callable


def main(description: str, root: Path, source: Path, output: Path,
         render: Callable[[str], str], command: str) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the file differs from what would be written",
    )
    args = parser.parse_args()
    wanted = render(source.read_text(encoding="utf-8"))
    if args.check:
        current = output.read_text(encoding="utf-8") if output.exists() else ""
        if current != wanted:
            print(
                f"{output.relative_to(root)} is out of date with "
                f"{source.relative_to(root)}: run {command}",
                file=sys.stderr,
            )
            return 1
        print(f"{output.relative_to(root)} is up to date with {source.relative_to(root)}")
        return 0
    output.write_text(wanted, encoding="utf-8")
    print(f"wrote {output.relative_to(root)}")
    return 0
