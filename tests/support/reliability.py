"""The reliability and security report: what the suite tried, per category, and what came out.

Tests record the cases they try with the ``reliability`` fixture::

    reliability.record("Upstream faults", "429 without Retry-After", "503 + Retry-After after 3 attempts",
                       upstream_calls=3)

A case counts as *held* only if its test passed. At the end of the session the report is written to
``build/reliability-report.json`` (or ``$RELIABILITY_REPORT``) and summarised in the terminal;
``scripts/reliability_table.py`` turns the JSON into the README's "Reliability and security" table, so the
figures there are the suite's own.

Under pytest-xdist (``make test`` runs the suite in worker processes) each worker records its own cases and sends
them to the controller when it finishes (``workeroutput``); the controller puts them back in collection order, as
one process would have recorded them, and writes the one report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

CATEGORIES = (
    "Bad input",
    "Upstream faults",
    "Queue faults",
    "Secrets and data",
    "Template security",
    "Access",
    "Load",
)
REPORT_PATH = Path(
    os.environ.get("RELIABILITY_REPORT") or Path(__file__).resolve().parents[2] / "build" / "reliability-report.json"
)


@dataclass
class Case:
    category: str
    case: str
    outcome: str
    test: str
    figures: dict[str, Any] = field(default_factory=dict)
    held: bool | None = None  # the test's verdict, filled in when it ends


class ReliabilityReport:
    def __init__(self) -> None:
        self.cases: list[Case] = []
        self._current_test = ""

    def record(self, category: str, case: str, outcome: str, **figures: Any) -> None:
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}; known: {CATEGORIES}")
        self.cases.append(Case(category, case, outcome, self._current_test, dict(figures)))

    def settle(self, nodeid: str, passed: bool) -> None:
        for case in self.cases:
            if case.test == nodeid and case.held is None:
                case.held = passed

    def summary(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for case in self.cases:
            row = out.setdefault(case.category, {"cases": 0, "held": 0})
            row["cases"] += 1
            row["held"] += bool(case.held)
        return out

    def write(self, path: Path = REPORT_PATH) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "categories": list(CATEGORIES),
            "summary": self.summary(),
            "cases": [asdict(case) for case in self.cases],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        os.replace(tmp, path)


_REPORT = ReliabilityReport()
_ORDER: dict[str, int] = {}  # nodeid -> position in the collection (the same in every xdist worker)
_FROM_WORKERS: list[list[Any]] = []  # [position, sequence, case] sent by each xdist worker


def is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def worker_payload(report: ReliabilityReport, order: dict[str, int]) -> list[list[Any]]:
    """The cases of one worker as plain data execnet can carry: ``[position of the test, sequence, case]``."""
    return [
        [order.get(case.test, len(order)), sequence, json.loads(json.dumps(asdict(case), default=str))]
        for sequence, case in enumerate(report.cases)
    ]


def merged_cases(payloads: list[list[Any]], own: list[Case]) -> list[Case]:
    """Every worker's cases in collection order (within a test: in the order recorded), then the controller's own
    (the whole-session leak verdict, which comes last as its test does)."""
    ordered = sorted(payloads, key=lambda entry: (entry[0], entry[1]))
    return [Case(**case) for _, _, case in ordered] + own


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Iterator[ReliabilityReport]:
    _REPORT._current_test = request.node.nodeid
    yield _REPORT
    _REPORT._current_test = ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _REPORT.settle(item.nodeid, report.passed)


def pytest_collection_finish(session: pytest.Session) -> None:
    _ORDER.clear()
    _ORDER.update({item.nodeid: position for position, item in enumerate(session.items)})


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """On the xdist controller: a worker has finished and sent its cases."""
    _FROM_WORKERS.extend(getattr(node, "workeroutput", {}).get("reliability_cases", []))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if is_xdist_worker(session.config):
        session.config.workeroutput["reliability_cases"] = worker_payload(_REPORT, _ORDER)  # type: ignore[attr-defined]
        return
    if _FROM_WORKERS:
        _REPORT.cases = merged_cases(_FROM_WORKERS, _REPORT.cases)
        _FROM_WORKERS.clear()
    if _REPORT.cases:
        _REPORT.write()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    summary = _REPORT.summary()
    if not summary:
        return
    terminalreporter.section("reliability and security")
    for category in CATEGORIES:
        if category in summary:
            row = summary[category]
            terminalreporter.write_line(f"{category:<18} {row['held']:>5} of {row['cases']:>5} cases held")
    terminalreporter.write_line(f"report: {REPORT_PATH}")
