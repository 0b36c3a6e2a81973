"""The bulk benchmark's figures of where the upstream time went (``benchmarks/bulk_jobs.py``), on calls made up here:
the arithmetic only, no stack and no clock."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "bulk_jobs.py"


@pytest.fixture(scope="module")
def upstream_call_figures():
    spec = importlib.util.spec_from_file_location("bulk_jobs", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.upstream_call_figures


def test_two_slots_each_making_two_calls(upstream_call_figures):
    # Given two slots: one calls at 0 s and again 10 ms after its answer, the other at 0.5 s and again 50 ms after
    calls = [(1.01, 2.01), (0.0, 1.0), (1.55, 2.55), (0.5, 1.5)]
    # When the figures are made
    figures = upstream_call_figures(calls)
    # Then every call took 1 s, the first began at 0 s (no eighth nor sixteenth), and the freed slots waited 10 and
    # 50 ms
    assert figures["upstream_call_s"] == {"mean": 1.0, "median": 1.0, "max": 1.0}
    assert figures["call_starts_s"] == {"#1": 0.0}
    assert figures["slot_wait_ms"] == {"median": 50.0, "p90": 50.0}


def test_a_ramp_of_sixteen_slots_and_the_latest_answer_freeing_the_slot(upstream_call_figures):
    # Given sixteen slots starting 0.1 s apart, each call taking 2 s (so every slot has started before the first
    # answer), and then one more call 0.02 s after the only answer before it (the first slot's, at 2.0 s)
    ramp = [(0.1 * n, 0.1 * n + 2.0) for n in range(16)]
    calls = [*ramp, (2.02, 3.02)]
    # When the figures are made
    figures = upstream_call_figures(calls)
    # Then the 1st, 8th and 16th calls began at 0, 0.7 and 1.5 s, and the one slot that called again waited 20 ms
    assert figures["call_starts_s"] == {"#1": 0.0, "#8": 0.7, "#16": 1.5}
    assert figures["slot_wait_ms"] == {"median": 20.0, "p90": 20.0}
    assert figures["upstream_call_s"] == {"mean": 1.9412, "median": 2.0, "max": 2.0}


def test_no_calls_no_figures(upstream_call_figures):
    assert upstream_call_figures([]) == {}
