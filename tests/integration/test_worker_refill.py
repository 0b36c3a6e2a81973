"""The worker's refill on a whole local stack, as the bulk benchmark runs it (its own process: a stack with its own
worker parameters): with WorkerRefill, invocations take messages from the queue themselves, so fewer invocations
handle the same job, and still every item is generated once, within the fleet's upstream slots. Counts, never
timings: the benchmark's wall-clock figures are not asserted here."""

from __future__ import annotations

from typing import Any

import pytest
from support.bulk_benchmark import run_bulk_benchmark

ITEMS = 24


def bulk_run(*extra: str) -> dict[str, Any]:
    return run_bulk_benchmark(ITEMS, *extra)


@pytest.mark.parametrize("refill", [True, False], ids=["refill", "no-refill"])
def test_every_item_generated_once_within_the_slots_and_refill_takes_messages(refill):
    # Given a 24-item job, two invocations of one slot each, batches of one message
    # When it runs with or without the refill
    result = bulk_run("--aws-calls") if refill else bulk_run("--no-refill")
    # Then every item succeeded, with one upstream call and one stored object each, never past the two slots
    assert result["succeeded"] == ITEMS and result["failed"] == 0
    assert result["upstream_calls"] == ITEMS and result["upstream_429"] == 0
    assert result["s3_objects"] == ITEMS and result["none_generated_twice"]
    assert result["upstream_max_in_flight"] <= 2
    # and the job's signed webhook reached the benchmark's receiver, verified, after the job's completion
    assert result["webhooks_verified"] and result["webhook_s"] >= result["completed_s"]
    # and the benchmark timed every call at the emulator: none answered sooner than its 0.1 s latency
    assert result["upstream_call_s"]["median"] >= 0.1 and "#16" in result["call_starts_s"]
    # ... and with the refill, invocations took messages themselves: fewer invocations than messages delivered
    # one by one (the job's fan-out message is one more); without it, one invocation per message
    if refill:
        assert result["invocations"] < ITEMS
        # and --aws-calls counted the stack's AWS calls: at least a claim and a settle per item, an image each
        calls = result["aws_calls"]
        assert calls["TransactWriteItems"]["calls"] >= 2 * ITEMS
        assert calls["S3 PUT"]["calls"] >= ITEMS
        assert all(len(operation["mean_ms_by_tenth"]) == 10 for operation in calls.values())
    else:
        assert result["invocations"] >= ITEMS + 1
