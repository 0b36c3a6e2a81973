"""Overhead of the service on the local stack: p50 of POST /v1/images against the emulator's own time.

The emulator answers after 1 s (as a slow upstream would). "Emulator alone" posts the same request straight to
the emulator and downloads the image it points at (what any client of the vendor must do); "through the
service" is the full path: local API Gateway → handler → Secrets Manager (cached) → upstream → mirror into S3
→ DynamoDB → presigned URL. Requests are sequential, on loopback. Target: p50 overhead ≤ 10 %.

    PYTHONPATH=layers/shared:functions/api:local .venv/bin/python benchmarks/local_overhead.py --requests 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import requests

LATENCY_S = 1.0


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024, help="width and height of the images")
    args = parser.parse_args()
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")

    from devstack.stack import LocalStack

    with LocalStack(port=0, emulator_latency_s=LATENCY_S) as stack:
        assert stack.emulator is not None
        session = requests.Session()
        headers = {"x-api-key": stack.api_key}

        def through_service(i: int) -> float:
            body = {"prompt": f"benchmark {i}", "seed": i, "width": args.size, "height": args.size}
            started = time.perf_counter()
            response = session.post(f"{stack.url}/v1/images", json=body, headers=headers, timeout=60)
            elapsed = time.perf_counter() - started
            assert response.status_code == 201, response.text
            return elapsed

        def emulator_alone(i: int) -> float:
            # Other parameters than the service's request: the emulator caches rendered images.
            body = {"prompt": f"direct {i}", "seed": i, "width": args.size, "height": args.size}
            key = {"Ocp-Apim-Subscription-Key": stack.resources.secret_value}
            started = time.perf_counter()
            answer = session.post(stack.emulator.url, json=body, headers=key, timeout=60)
            image = session.get(answer.json()["output"], timeout=60)
            elapsed = time.perf_counter() - started
            assert image.status_code == 200
            return elapsed

        through_service(10**6)  # warm: the first invocation is the cold start
        service, emulator = [], []
        for i in range(args.requests):
            emulator.append(emulator_alone(i))
            # The usage plan throttle (template default 5 rps, burst 10) is not in the way at 1 request/s.
            service.append(through_service(i))

    result = {
        "requests": args.requests,
        "image": f"{args.size}x{args.size}",
        "emulator_latency_s": LATENCY_S,
        "emulator_alone_p50_ms": round(statistics.median(emulator) * 1000, 1),
        "service_p50_ms": round(statistics.median(service) * 1000, 1),
        "service_p90_ms": round(percentile(service, 0.9) * 1000, 1),
    }
    result["overhead_p50_ms"] = round(result["service_p50_ms"] - result["emulator_alone_p50_ms"], 1)
    result["overhead_p50_pct"] = round(100 * result["overhead_p50_ms"] / result["emulator_alone_p50_ms"], 1)
    result["target_pct"] = 10
    result["meets_target"] = result["overhead_p50_pct"] <= 10
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
