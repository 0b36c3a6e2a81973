"""Load: a bounded loopback load on the local stack (``make run``'s program in a child process, the template's
usage plan, emulator at 200 ms). The full run (50 clients, 60 s) is ``benchmarks/loopback_load.py``; CI runs the
same code smaller. Behaviour only: no latency is asserted."""

from __future__ import annotations

from devstack.aws import Resources
from devstack.loadgen import run_load, stack_process, stored_objects


def test_a_bounded_load_gets_no_error_but_deliberate_throttles(reliability):
    # Given the local stack as `make run` starts it, with the emulator at 200 ms
    with stack_process(emulator_latency_s=0.2) as stack:
        # When 20 clients post images for 8 s
        result = run_load(stack.url, stack.api_key, clients=20, seconds=8)
        objects = stored_objects(stack.moto_url, Resources().bucket)
    summary = result.summary()
    reliability.record(
        "Load",
        "20 clients x 8 s on POST /v1/images (CI size; README: 50 x 60 s)",
        f"{summary['served']} served, {summary['throttled']} throttled, {summary['errors']} errors",
        **{k: v for k, v in summary.items() if k not in ("errors_by_kind", "clients", "seconds")},
        s3_objects=objects,
    )
    # Then every answer was an image or a deliberate 429 from the usage plan, and the plan did throttle
    assert summary["errors"] == 0, summary["errors_by_kind"]
    assert summary["served"] > 0 and summary["throttled"] > 0
    assert summary["sent"] == summary["served"] + summary["throttled"]
    # And each served request stored exactly one image: nothing generated twice, nothing lost
    assert objects == summary["served"]
