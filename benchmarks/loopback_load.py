"""Load: N concurrent clients for T seconds on POST /v1/images of the local stack (`make run`'s program, in a child
process, with the template's usage plan: 5 requests/s, burst 10), emulator at 200 ms. Loopback only, bounded.

    PYTHONPATH=layers/shared:functions/api:local .venv/bin/python benchmarks/loopback_load.py --clients 50 --seconds 60

Prints requests sent, served (201), throttled (429, deliberate: the usage plan), errors by kind, latency
percentiles of the served requests, and the S3 objects stored (one per served image). Exits 1 on any error that is
not a deliberate throttle. The local gateway runs one invocation of the API function at a time (one warm execution
environment), so the served rate is bounded by that and by the usage plan, not by the machine.
"""

from __future__ import annotations

import argparse
import json
import sys

from devstack.aws import Resources
from devstack.loadgen import run_load, stack_process, stored_objects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--latency", type=float, default=0.2, help="emulator latency in seconds")
    args = parser.parse_args(argv)
    if not (1 <= args.clients <= 200 and 1 <= args.seconds <= 600):
        parser.error("keep it bounded: 1-200 clients, 1-600 s")
    with stack_process(emulator_latency_s=args.latency) as stack:
        result = run_load(stack.url, stack.api_key, clients=args.clients, seconds=args.seconds)
        summary = result.summary()
        summary["s3_objects"] = stored_objects(stack.moto_url, Resources().bucket)
        summary["emulator_latency_s"] = args.latency
    print(json.dumps(summary, indent=2))
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
