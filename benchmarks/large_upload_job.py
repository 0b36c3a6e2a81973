"""The issue's end-to-end claims on the local stack, as a user runs it: ``make run``'s program (``python -m devstack``
in a child process, on free loopback ports, with the template's usage plan), driven over HTTP only.

(a) ``POST /v1/jobs`` with 1,000 items in the body, then its ``DELETE``: each answer is timed (wall clock, sent to
    received), and the cancel must settle (the job completes ``canceled``/partly, every item terminal).
(b) A ``--lines``-line upload job: ``POST /v1/uploads``, ``PUT`` the JSONL to the presigned URL, ``POST /v1/jobs``
    ``{"items_upload_id"}``; then the job is polled (every ``--poll`` s, progress printed) until it completes or
    ``--timeout`` passes, and its ``results.jsonl`` is fetched: one line per item, statuses counted.

The emulator answers after ``--latency`` s (0.05 by default: the stack's own work, not the upstream, is what is
measured; ``make run`` uses 0.5). The worker runs as the template configures it (``WorkerMaxConcurrency`` ×
``WorkerThreads``). Too slow for the test suite; ``tests/integration/test_fanout.py`` runs 300 lines in-process.

    PYTHONPATH=layers/shared:functions/api:functions/worker:local .venv/bin/python benchmarks/large_upload_job.py \
        --lines 10000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from typing import Any

import requests

TERMINAL = ("succeeded", "failed", "canceled")


def timed(method: str, url: str, **kwargs: Any) -> tuple[requests.Response, float, float, float]:
    """The answer, and when it was sent and received (epoch seconds), and the time it took (seconds)."""
    sent = time.time()
    started = time.perf_counter()
    answer = requests.request(method, url, timeout=60, **kwargs)
    took = time.perf_counter() - started
    return answer, sent, time.time(), took


def stamp(moment: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1000):03d}Z"


def wait_complete(
    base: str, headers: dict[str, str], job_id: str, timeout_s: float, poll_s: float, label: str
) -> dict[str, Any] | None:
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout_s:
        answer = requests.get(f"{base}/v1/jobs/{job_id}?limit=1", headers=headers, timeout=60)
        if answer.status_code == 200:
            job = answer.json()
            counts = job["counts"]
            line = " ".join(f"{name}={counts[name]}" for name in ("queued", "running", *TERMINAL))
            if line != last:
                print(f"  [{label} +{time.monotonic() - started:7.1f} s] {line}", flush=True)
                last = line
            if job["completed_at"]:
                return dict(job)
        elif answer.status_code != 429:  # 429: the usage plan's throttle, polled again
            print(f"  [{label}] GET answered {answer.status_code}: {answer.text[:200]}", flush=True)
        time.sleep(poll_s)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000, help="lines of the upload job")
    parser.add_argument("--body-items", type=int, default=1_000, help="items of the POST/DELETE job (0: skip)")
    parser.add_argument("--latency", type=float, default=0.05, help="emulator latency (s)")
    parser.add_argument("--timeout", type=float, default=1200, help="bound on the upload job's wait (s)")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between progress polls")
    args = parser.parse_args()

    from devstack.loadgen import stack_process

    report: dict[str, Any] = {"latency_s": args.latency}
    with stack_process(emulator_latency_s=args.latency, timeout_s=180) as stack:
        base, headers = stack.url, {"x-api-key": stack.api_key}
        print(f"stack up at {base} (emulator latency {args.latency} s)", flush=True)

        if args.body_items:
            body = {
                "items": [
                    {"prompt": f"body {i}", "seed": i, "width": 256, "height": 256} for i in range(args.body_items)
                ]
            }
            posted, sent, received, took = timed("POST", f"{base}/v1/jobs", json=body, headers=headers)
            assert posted.status_code == 202, posted.text
            job_id = posted.json()["id"]
            print(
                f"POST /v1/jobs ({args.body_items} items): {posted.status_code} sent {stamp(sent)} answered "
                f"{stamp(received)}: {took:.3f} s",
                flush=True,
            )
            deleted, d_sent, d_received, d_took = timed("DELETE", f"{base}/v1/jobs/{job_id}", headers=headers)
            assert deleted.status_code == 200, deleted.text
            print(
                f"DELETE /v1/jobs/{job_id}: {deleted.status_code} sent {stamp(d_sent)} answered "
                f"{stamp(d_received)}: {d_took:.3f} s",
                flush=True,
            )
            settled = wait_complete(base, headers, job_id, 300, 1.0, "canceled job")
            report["body_job"] = {
                "items": args.body_items,
                "post_s": round(took, 3),
                "delete_s": round(d_took, 3),
                "status": settled and settled["status"],
                "counts": settled and settled["counts"],
            }

        lines = [
            json.dumps({"prompt": f"upload {i}", "seed": i, "width": 256, "height": 256}) for i in range(args.lines)
        ]
        data = ("\n".join(lines) + "\n").encode()
        upload, _, _, _ = timed("POST", f"{base}/v1/uploads", headers=headers)
        assert upload.status_code == 201, upload.text
        put, _, _, put_took = timed("PUT", upload.json()["upload_url"], data=data)
        assert put.status_code == 200, put.text
        posted, sent, received, took = timed(
            "POST", f"{base}/v1/jobs", json={"items_upload_id": upload.json()["id"]}, headers=headers
        )
        assert posted.status_code == 202, posted.text
        job_id = posted.json()["id"]
        print(
            f"upload job {job_id}: {args.lines} lines ({len(data)} bytes) PUT in {put_took:.2f} s; POST /v1/jobs "
            f"sent {stamp(sent)} answered {stamp(received)}: {took:.3f} s",
            flush=True,
        )
        started = time.monotonic()
        job = wait_complete(base, headers, job_id, args.timeout, args.poll, "upload job")
        wall_s = time.monotonic() - started
        upload_report: dict[str, Any] = {
            "lines": args.lines,
            "post_s": round(took, 3),
            "completed": job is not None,
            "wall_s": round(wall_s, 1),
        }
        if job is not None:
            results = job.get("results")
            for _ in range(30):  # written right after completed_at
                if results:
                    break
                time.sleep(1)
                results = requests.get(f"{base}/v1/jobs/{job_id}?limit=1", headers=headers, timeout=60).json()[
                    "results"
                ]
            assert results, "the job completed without a results file"
            body_lines = requests.get(results["url"], timeout=120).text.splitlines()
            statuses = Counter(json.loads(line)["status"] for line in body_lines if line.strip())
            indexes = [json.loads(line)["index"] for line in body_lines if line.strip()]
            upload_report.update(
                status=job["status"],
                counts=job["counts"],
                results_lines=len(body_lines),
                results_statuses=dict(statuses),
                results_in_index_order=indexes == list(range(args.lines)),
                items_per_s=round(args.lines / wall_s, 1),
            )
        report["upload_job"] = upload_report
    print(json.dumps(report, indent=2))
    return 0 if report["upload_job"]["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
