"""200 items through the local stack: API → SQS → worker (local event source mapping) → emulator → S3.

The emulator answers after 1 s and allows 16 concurrent generations (429 with Retry-After above that). The
worker is configured like a deployment sized for that limit: ``WorkerMaxConcurrency`` invocations × items per
batch run concurrently (``WORKER_THREADS``). Checked: all 200 succeed, none lost, none generated twice (the
emulator's call counter equals 200 plus the 429s it answered; one S3 object per image). Target: wall time from
submit to the last item ≤ 1.25 × the ideal 200/16 × 1 s.

Side by side: the vendor's sample code (urllib.request, one request after another) against the same emulator,
downloading each image as a client of the vendor must.

    PYTHONPATH=layers/shared:functions/api:functions/worker:local .venv/bin/python benchmarks/bulk_jobs.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request

import requests

LATENCY_S = 1.0
CONCURRENCY_LIMIT = 16


def vendor_sample_loop(url: str, key: str, items: int) -> float:
    """The vendor's published Python sample (urllib.request, serial), plus the image download it implies."""
    started = time.perf_counter()
    for index in range(items):
        data = json.dumps({"prompt": f"vendor {index}", "num_steps": 4, "seed": index, "height": 512, "width": 512})
        hdr = {"Content-Type": "application/json", "Cache-Control": "no-cache", "Ocp-Apim-Subscription-Key": key}
        req = urllib.request.Request(url, headers=hdr, data=bytes(data.encode("utf-8")))
        req.get_method = lambda: "POST"
        with urllib.request.urlopen(req) as response:
            output = json.loads(response.read())["output"]
        with urllib.request.urlopen(output) as image:
            image.read()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--invocations", type=int, default=16, help="WorkerMaxConcurrency (= the upstream limit)")
    parser.add_argument("--batch-size", type=int, default=1, help="WorkerBatchSize (and WORKER_THREADS)")
    parser.add_argument("--vendor-items", type=int, default=200, help="items for the vendor's serial loop (0: skip)")
    args = parser.parse_args()
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")

    from devstack.stack import LocalStack

    stack = LocalStack(
        port=0,
        emulator_latency_s=LATENCY_S,
        emulator_concurrency_limit=CONCURRENCY_LIMIT,
        worker_parameters={
            "WorkerMaxConcurrency": str(args.invocations),
            "WorkerBatchSize": str(args.batch_size),
            "WorkerMaxBatchingWindowSeconds": "0",
        },
        extra_env={"WORKER_THREADS": str(args.batch_size)},
    )
    with stack:
        assert stack.emulator is not None
        headers = {"x-api-key": stack.api_key}
        body = {"items": [{"prompt": f"bulk {i}", "seed": i, "width": 512, "height": 512} for i in range(args.items)]}
        started = time.perf_counter()
        submitted = requests.post(f"{stack.url}/v1/jobs", json=body, headers=headers, timeout=60)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        while True:  # a client polling at 4 rps: under the usage plan's 5 rps
            answer = requests.get(f"{stack.url}/v1/jobs/{job_id}?limit=1", headers=headers, timeout=60)
            if answer.status_code == 200 and answer.json()["completed_at"]:
                job = answer.json()
                break
            time.sleep(0.25)
        wall_s = time.perf_counter() - started

        by_status = stack.emulator.calls_by_status
        s3 = stack.aws.client("s3")
        objects = sum(
            len(page.get("Contents", []))
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.resources.bucket, Prefix="images/")
        )
        ideal_s = args.items / CONCURRENCY_LIMIT * LATENCY_S
        result = {
            "items": args.items,
            "worker": f"{args.invocations} invocations x {args.batch_size} concurrent items",
            "succeeded": job["counts"]["succeeded"],
            "failed": job["counts"]["failed"],
            "upstream_calls": stack.emulator.calls,
            "upstream_429": by_status.get(429, 0),
            "s3_objects": objects,
            "none_generated_twice": stack.emulator.calls == args.items + by_status.get(429, 0)
            and objects == args.items,
            "wall_s": round(wall_s, 2),
            "ideal_s": ideal_s,
            "ratio_to_ideal": round(wall_s / ideal_s, 3),
            "target_ratio": 1.25,
        }
        result["meets_target"] = (
            result["succeeded"] == args.items and result["none_generated_twice"] and result["ratio_to_ideal"] <= 1.25
        )
        if args.vendor_items:
            stack.emulator.reset_counters()
            vendor_s = vendor_sample_loop(stack.emulator.url, stack.resources.secret_value, args.vendor_items)
            result["vendor_sample_serial_items"] = args.vendor_items
            result["vendor_sample_serial_s"] = round(vendor_s, 2)
            result["vendor_sample_serial_per_200_s"] = round(vendor_s / args.vendor_items * 200, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
