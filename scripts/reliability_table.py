"""Render the reliability and security report the test suite writes (build/reliability-report.json) as Markdown.

    .venv/bin/python scripts/reliability_table.py            # the summary table (README "Reliability and security")
    .venv/bin/python scripts/reliability_table.py --cases    # every case with its outcome (docs/reliability.md)

The figures come from the suite's own run (``make test`` writes the JSON), never from hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "build" / "reliability-report.json"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _figures(figures: dict[str, Any]) -> str:
    return ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in figures.items())


def summary(cases: list[dict[str, Any]], categories: list[str]) -> str:
    by_category: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for case in cases:
        by_category[case["category"]].append(case)
    lines = ["| category | cases | held | measured |", "|---|---:|---:|---|"]
    for category in categories:
        rows = by_category.get(category, [])
        if not rows:
            lines.append(f"| {category} | 0 | 0 | not run |")
            continue
        held = sum(1 for row in rows if row["held"])
        headline = next((row for row in rows if row["figures"].get("headline")), None)
        if headline is not None:  # a case that sums up its category (e.g. the fuzzer's total)
            measured = _figures({k: v for k, v in headline["figures"].items() if k != "headline"})
        elif len(rows) == 1:  # one case's figures stand as they are
            measured = _figures(rows[0]["figures"])
        else:  # counts add up across cases
            totals: dict[str, float] = defaultdict(float)
            for row in rows:
                for name, value in row["figures"].items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        totals[name] += value
            measured = _figures({name: _number(value) for name, value in totals.items()})
        measured = measured or "; ".join(sorted({row["outcome"] for row in rows}))
        lines.append(f"| {category} | {len(rows)} | {held} | {_cell(measured)} |")
    return "\n".join(lines)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def details(cases: list[dict[str, Any]], categories: list[str]) -> str:
    out = []
    for category in categories:
        rows = [case for case in cases if case["category"] == category]
        if not rows:
            continue
        out += [f"## {category}", "", "| case | outcome | held | figures |", "|---|---|---|---|"]
        for row in rows:
            verdict = "yes" if row["held"] else "**no**"
            out.append(
                f"| {_cell(row['case'])} | {_cell(row['outcome'])} | {verdict} | {_cell(_figures(row['figures']))} |"
            )
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--cases", action="store_true", help="every case, by category")
    args = parser.parse_args(argv)
    if not args.report.exists():
        print(f"{args.report} does not exist: run the test suite first (make test)", file=sys.stderr)
        return 2
    report = json.loads(args.report.read_text())
    cases, categories = report["cases"], report["categories"]  # the suite's categories, in its order
    sys.stdout.write((details(cases, categories) if args.cases else summary(cases, categories)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
