"""POST /v1/jobs latency by job size, through the local stack (local API Gateway → API handler → moto).

Sizes: 1, 100 and 1,000 items in the body, and 10,000 lines through an upload (POST /v1/uploads, PUT the file,
then POST /v1/jobs {"items_upload_id"}; only that POST is timed, and the same upload is named by every run).
The worker's event source mapping is stopped first, so only the API is measured: nothing is generated, and the
control messages just wait on the queue. Requests are sequential (one warm API environment, as the local stack
runs it); the first of each size is a warm-up and not counted. Target: p99 <= 1 s for 1,000 items.

    PYTHONPATH=layers/shared:functions/api:functions/worker:local .venv/bin/python benchmarks/submit_latency.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import requests


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=40, help="timed requests per size")
    parser.add_argument("--upload-lines", type=int, default=10_000)
    args = parser.parse_args()
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")

    from devstack.stack import LocalStack

    stack = LocalStack(port=0, throttle=(1000.0, 2000))
    results = []
    with stack:
        for poller in stack.pollers:  # measure the API alone: nothing is fanned out or generated meanwhile
            poller.stop()
        session = requests.Session()
        session.headers["x-api-key"] = stack.api_key

        def item(i: int) -> dict[str, object]:
            return {"prompt": f"latency {i}", "seed": i, "width": 512, "height": 512}

        upload = session.post(f"{stack.url}/v1/uploads", timeout=30)
        assert upload.status_code == 201, upload.text
        lines = "\n".join(json.dumps(item(i)) for i in range(args.upload_lines)).encode()
        assert requests.put(upload.json()["upload_url"], data=lines, timeout=60).status_code == 200
        cases = [(str(size), {"items": [item(i) for i in range(size)]}) for size in (1, 100, 1000)]
        cases.append((f"{args.upload_lines} (upload)", {"items_upload_id": upload.json()["id"]}))
        for label, body in cases:
            payload = json.dumps(body)
            samples = []
            for attempt in range(args.repeats + 1):
                started = time.perf_counter()
                answer = session.post(
                    f"{stack.url}/v1/jobs", data=payload, headers={"content-type": "application/json"}, timeout=60
                )
                elapsed = time.perf_counter() - started
                assert answer.status_code == 202, answer.text
                assert answer.json()["total"] == (len(body["items"]) if "items" in body else args.upload_lines)
                if attempt:  # the first is a warm-up
                    samples.append(elapsed * 1000)
            results.append(
                {
                    "items": label,
                    "body_bytes": len(payload),
                    "requests": len(samples),
                    "p50_ms": round(statistics.median(samples), 1),
                    "p99_ms": round(percentile(samples, 0.99), 1),
                    "max_ms": round(max(samples), 1),
                }
            )
    print(f"{'items':>18} {'body bytes':>11} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for row in results:
        print(
            f"{row['items']:>18} {row['body_bytes']:>11} {row['requests']:>4} "
            f"{row['p50_ms']:>8} {row['p99_ms']:>8} {row['max_ms']:>8}"
        )
    thousand = next(row for row in results if row["items"] == "1000")
    print(json.dumps({"target": "p99 <= 1000 ms at 1,000 items", "met": thousand["p99_ms"] <= 1000}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
