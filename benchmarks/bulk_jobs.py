"""Bulk jobs through the local stack: API → SQS → worker (local event source mapping) → emulator → S3.

The emulator answers after 1 s (``--latency``) and allows 16 concurrent generations (429 with Retry-After above
that). The worker is configured like a deployment sized for that limit: ``WorkerMaxConcurrency`` invocations x
``WorkerThreads`` upstream slots each = 16 calls in flight at most. An item holds its slot only while the upstream
answers, and each invocation refills itself from the queue while its slots would wait (``WorkerRefill``,
``imagegen.refill``; ``--no-refill`` for the batches the mapping delivers only). Defaults, for 200 and 2,000 items:
16 x 1 slot, batches of 2 (``--invocations 8 --slots 2 --batch-size 10``: the same 16 slots, fewer invocations).
Besides the wall time it prints how the upstream was used: the mean generations in flight from the first call
seen to the last (sampled every 20 ms) and the time after the last call (mirror, record, completion, results
file, the client's next poll: ``completed_s`` is the last job's own ``completed_at``, before that poll); and, from
every call timed at the emulator, how long the calls took there, when the 1st, 8th and 16th began (the slots'
ramp), and how long a freed slot waited for its next call.

How the items are submitted matters at 2,000: as jobs of ``--job-items`` (POSTs one after another, as an app
submitting many small jobs does) each later job's fan-out message waits in the jobs queue behind the items
already queued, so the fan-outs come in a burst as the first job's items run out; ``--upload`` submits every item
as one job from an uploaded JSONL file, as ``flux-images submit`` does above 1,000 prompts.

``--aws-calls`` also times every AWS call the stack's process makes (botocore's HTTP send): per operation, the
calls, their mean latency and that mean in each tenth of the run. The local moto answers all of them from one
process, so this shows when it falls behind (DynamoDB calls waiting hundreds of milliseconds) and what it was
asked for.

Checked: all items succeed, none lost, none generated twice (the emulator's call counter equals the items plus
the 429s it answered, which must be 0; one S3 object per image); the most concurrent generations the emulator
saw. Target: wall time from submit to the last item ≤ 1.10 x the ideal items/16 x 1 s.

Where the run ends, three ways: ``completed_s`` (the last job's own ``completed_at``, written as its last item
settled), ``webhook_s`` (the last job's signed webhook received and verified by a receiver here, as an app learns
of a finished job without polling) and ``wall_s`` (a client polling ``GET /v1/jobs/{id}`` at 4 rps sees it).

``--built`` runs what ``sam build`` produced (``.aws-sam/build``, built first when stale), as ``make run-built``
does: every execution environment is a child process of its own with its own interpreter, as on Lambda, instead of
every invocation being a thread of the stack's one process (and of its one GIL, shared with the gateway and the
emulator). Environments are made on demand, so a warm-up job first starts as many as the worker's concurrency
(``--warm-up``, default twice the concurrency x the batch in items; 0 counts the cold starts in, which on 2 cores
take seconds that Lambda spends on separate machines: ``benchmarks/cold_start.py`` measures one). ``--aws-calls``
sees only the stack's own process, so it does not go with ``--built``.

Side by side: the vendor's sample code (urllib.request, one request after another) against the same emulator,
downloading each image as a client of the vendor must.

    PYTHONPATH=layers/shared:functions/api:functions/worker:local .venv/bin/python benchmarks/bulk_jobs.py \
        --vendor-items 0 [--built] [--items 2000 --job-items 100 | --items 2000 --upload]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
import urllib.request
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from flux_images import WebhookVerificationError, verify_webhook

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


def _timed(handler: Any, timeline: list[tuple[float, float, int]], origin: Any) -> Any:
    """The worker's handler, recording when each invocation ran (relative to the submit) and its batch size."""

    def invoke(event: dict[str, Any], context: Any) -> Any:
        begun = time.perf_counter() - origin()
        try:
            return handler(event, context)
        finally:
            timeline.append((begun, time.perf_counter() - origin(), len(event["Records"])))

    return invoke


class AwsCallTimer:
    """Times every AWS call made in this process (botocore's HTTP send): the operation, when it began and how long
    it took, relative to ``origin()``. Where a run loses its time: the local moto answers every call of the stack."""

    def __init__(self, origin: Any) -> None:
        self._origin = origin
        self._calls: list[tuple[str, float, float]] = []
        self._lock = threading.Lock()

    def install(self) -> None:
        from botocore.httpsession import URLLib3Session

        send = URLLib3Session.send

        def timed(session: Any, request: Any) -> Any:
            begun = time.perf_counter()
            try:
                return send(session, request)
            finally:
                ended = time.perf_counter()
                target = request.headers.get("X-Amz-Target") or b""
                name = target.decode() if isinstance(target, bytes) else str(target)
                operation = name.rpartition(".")[2] if name else f"S3 {request.method}"
                with self._lock:
                    self._calls.append((operation, begun - self._origin(), ended - begun))

        URLLib3Session.send = timed  # type: ignore[method-assign, assignment]

    def summary(self, wall_s: float) -> dict[str, Any]:
        """Per operation: calls, mean ms, and mean ms in each tenth of the run (None: no call then)."""
        by_operation: dict[str, list[tuple[float, float]]] = {}
        with self._lock:
            for operation, at, took in self._calls:
                if 0 <= at <= wall_s:  # from the first submit to the last result seen
                    by_operation.setdefault(operation, []).append((at, took))
        summary: dict[str, Any] = {}
        for operation, calls in sorted(by_operation.items(), key=lambda entry: -len(entry[1])):
            tenths: list[list[float]] = [[] for _ in range(10)]
            for at, took in calls:
                tenths[min(9, int(at / wall_s * 10))].append(took)
            summary[operation] = {
                "calls": len(calls),
                "mean_ms": round(sum(took for _, took in calls) / len(calls) * 1000, 1),
                "mean_ms_by_tenth": [round(sum(part) / len(part) * 1000) if part else None for part in tenths],
            }
        return summary


class WebhookReceiver:
    """A job's webhook receiver on loopback, as an app runs one: each delivery verified against the stack's signing
    secret (``flux_images.verify_webhook``, Standard Webhooks) and timed on arrival (``perf_counter``), by job id."""

    def __init__(self, secret: str) -> None:
        self.arrived: dict[str, float] = {}
        self.refused = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                at = time.perf_counter()
                try:
                    payload = verify_webhook(dict(self.headers.items()), body, secret)
                except WebhookVerificationError:
                    receiver.refused += 1
                    self.send_response(400)
                else:
                    receiver.arrived.setdefault(str(payload["id"]), at)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/hooks/jobs"

    def __enter__(self) -> WebhookReceiver:
        threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, job_ids: list[str], timeout_s: float) -> bool:
        """True once every job's webhook has arrived (each comes after its job's completed_at, so seconds at most)."""
        ends = time.monotonic() + timeout_s
        while not all(job_id in self.arrived for job_id in job_ids):
            if time.monotonic() > ends:
                return False
            time.sleep(0.05)
        return True


def upstream_call_figures(calls: list[tuple[float, float]]) -> dict[str, Any]:
    """Where a run's upstream time went, from every generation's (arrived, answered), in s after the submit: how long
    a call took at the emulator (its latency is the ideal's), when the 1st, 8th and 16th calls began (the slots'
    ramp: with 200 items, eight slots make 13 calls and the rest 12, so the eighth start bounds the run), and how
    long a freed slot waited for its next call (each call's start against the latest answer before it not yet
    followed by a call)."""
    if not calls:
        return {}
    calls = sorted(calls)
    took = sorted(answered - arrived for arrived, answered in calls)
    ends = sorted(answered for _, answered in calls)
    freed: list[float] = []  # answers not yet followed by a call, latest last
    waits: list[float] = []
    next_end = 0
    for arrived, _ in calls:
        while next_end < len(ends) and ends[next_end] <= arrived:
            freed.append(ends[next_end])
            next_end += 1
        if freed:
            waits.append(arrived - freed.pop())
    waits.sort()
    starts = [arrived for arrived, _ in calls]
    return {
        "upstream_call_s": {
            "mean": round(sum(took) / len(took), 4),
            "median": round(took[len(took) // 2], 4),
            "max": round(took[-1], 4),
        },
        "call_starts_s": {f"#{n}": round(starts[n - 1], 2) for n in (1, 8, 16) if n <= len(starts)},
        "slot_wait_ms": (
            {"median": round(waits[len(waits) // 2] * 1000, 1), "p90": round(waits[int(len(waits) * 0.9)] * 1000, 1)}
            if waits
            else None
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--invocations", type=int, default=16, help="WorkerMaxConcurrency (at least 2, as on AWS)")
    parser.add_argument("--slots", type=int, default=1, help="WorkerThreads: upstream slots per invocation")
    parser.add_argument("--batch-size", type=int, default=2, help="WorkerBatchSize")
    parser.add_argument("--batching-window", type=int, default=0, help="WorkerMaxBatchingWindowSeconds")
    parser.add_argument("--vendor-items", type=int, default=200, help="items for the vendor's serial loop (0: skip)")
    parser.add_argument(
        "--job-items",
        type=int,
        default=250,
        help="items per job (the API takes up to 1,000, but a 1,000-item POST outlasts the local API's 29 s "
        "budget on a loaded 2-core machine: moto writes the items and the messages)",
    )
    parser.add_argument(
        "--upload",
        action="store_true",
        help="all items as one job from an uploaded JSONL file (POST /v1/uploads, PUT, POST /v1/jobs), as the CLI "
        "submits more than 1,000 prompts; --job-items is then not used",
    )
    parser.add_argument("--target", type=float, default=1.10, help="the ratio to the ideal to stay under")
    parser.add_argument("--latency", type=float, default=LATENCY_S, help="the emulator's seconds per generation")
    parser.add_argument(
        "--no-refill", action="store_true", help="WorkerRefill false: only the batches the mapping delivers"
    )
    parser.add_argument(
        "--built",
        action="store_true",
        help="run the built artefact (.aws-sam/build, built when stale), each execution environment a process",
    )
    parser.add_argument(
        "--warm-up",
        type=int,
        default=None,
        help="items of a job run first, not measured, to start the execution environments (default: with --built, "
        "2 x invocations x batch size; else 0)",
    )
    parser.add_argument(
        "--aws-calls",
        action="store_true",
        help="time every AWS call the stack's process makes: count and mean latency per operation, by tenth of the run",
    )
    args = parser.parse_args()
    # The built artefact ships bytecode (docs/build.md): cache the project's too, even under PYTHONDONTWRITEBYTECODE,
    # so a run measures the stack and not the compiling of its modules inside the first requests.
    sys.dont_write_bytecode = False
    if args.built and args.aws_calls:
        parser.error("--aws-calls times the stack's own process; with --built the functions run in others")
    warm_up = args.warm_up if args.warm_up is not None else 2 * args.invocations * args.batch_size if args.built else 0
    if args.invocations * args.slots > CONCURRENCY_LIMIT:
        parser.error(f"{args.invocations} x {args.slots} slots exceed the emulator's limit of {CONCURRENCY_LIMIT}")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")

    from devstack.artefact import ensure_built
    from devstack.stack import LocalStack

    if args.built:
        ensure_built(stdout=sys.stderr)  # standard output is the JSON result
    stack = LocalStack(
        port=0,
        built=args.built,
        emulator_latency_s=args.latency,
        emulator_concurrency_limit=CONCURRENCY_LIMIT,
        worker_parameters={
            "WorkerMaxConcurrency": str(args.invocations),
            "WorkerBatchSize": str(args.batch_size),
            "WorkerMaxBatchingWindowSeconds": str(args.batching_window),
        },
        # The local stack gives both functions one environment: the worker's template variables are set here
        extra_env={"WORKER_THREADS": str(args.slots), "WORKER_REFILL": "false" if args.no_refill else "true"},
    )
    started = 0.0
    with stack, WebhookReceiver(stack.resources.webhook_secret_value) as receiver:
        assert stack.emulator is not None
        headers = {"x-api-key": stack.api_key}
        s3 = stack.aws.client("s3")

        def images_in_bucket() -> int:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=stack.resources.bucket, Prefix="images/")
            return sum(len(page.get("Contents", [])) for page in pages)

        def submit(body: dict[str, Any]) -> str:
            while True:  # as a client must: the usage plan's throttle (5 rps, burst 10) answers 429 past its burst
                submitted = requests.post(f"{stack.url}/v1/jobs", json=body, headers=headers, timeout=120)
                if submitted.status_code != 429:
                    break
                time.sleep(float(submitted.headers.get("Retry-After") or 1))
            assert submitted.status_code == 202, submitted.text
            return str(submitted.json()["id"])

        if warm_up:  # not measured: the execution environments start, then the counters start from zero
            warm = [{"prompt": f"warm-up {i}", "seed": i, "width": 512, "height": 512} for i in range(warm_up)]
            warm_url = f"{stack.url}/v1/jobs/{submit({'items': warm})}?limit=1"
            ends = time.monotonic() + 300
            while not requests.get(warm_url, headers=headers, timeout=60).json()["completed_at"]:
                assert time.monotonic() < ends, "the warm-up job did not complete within 300 s"
                time.sleep(0.25)
            time.sleep(1.0)  # the last invocations return and their messages are deleted
            stack.emulator.reset_counters()
        images_before = images_in_bucket()
        invocations_before = stack.pollers[0].stats()["invocations"]
        timeline: list[tuple[float, float, int]] = []  # each invocation: start, end (s after submit), records
        for poller in stack.pollers:
            poller.handler = _timed(poller.handler, timeline, lambda: started)
        aws_calls = AwsCallTimer(lambda: started)
        if args.aws_calls:
            aws_calls.install()
        prompts = [{"prompt": f"bulk {i}", "seed": i, "width": 512, "height": 512} for i in range(args.items)]
        # more items than --job-items: more jobs, submitted one after another
        bodies: list[dict[str, Any]] = [
            {"items": prompts[start : start + args.job_items], "webhook_url": receiver.url}
            for start in range(0, len(prompts), args.job_items)
        ]
        samples: list[tuple[float, int]] = []  # (s after submit, generations in flight), every 20 ms
        upstream_calls: list[tuple[float, float]] = []  # each generation: arrived, answered (perf_counter)
        stack.emulator.on_generation = lambda arrived, answered: upstream_calls.append((arrived, answered))
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.02):
                samples.append((time.perf_counter() - started, stack.emulator.in_flight))

        sampler = threading.Thread(target=sample, daemon=True)
        started = time.perf_counter()
        started_at = time.time()  # the same moment on the wall clock the jobs' completed_at is written with
        sampler.start()
        pending = []
        if args.upload:  # one job from a JSONL file, as `flux-images submit` sends more than 1,000 prompts
            upload = requests.post(f"{stack.url}/v1/uploads", headers=headers, timeout=60)
            assert upload.status_code == 201, upload.text
            lines = "".join(json.dumps(prompt) + "\n" for prompt in prompts).encode()
            put = requests.put(upload.json()["upload_url"], data=lines, timeout=60)
            assert put.status_code == 200, put.text
            bodies = [{"items_upload_id": upload.json()["id"], "webhook_url": receiver.url}]
        pending.extend(submit(body) for body in bodies)
        submit_s = time.perf_counter() - started
        jobs = []
        while pending:  # a client polling at 4 rps (one job at a time): under the usage plan's 5 rps
            answer = requests.get(f"{stack.url}/v1/jobs/{pending[0]}?limit=1", headers=headers, timeout=60)
            if answer.status_code == 200 and answer.json()["completed_at"]:
                jobs.append(answer.json())
                pending.pop(0)
                continue
            pending.append(pending.pop(0))
            time.sleep(0.25)
        wall_s = time.perf_counter() - started
        job_ids = [job["id"] for job in jobs]
        webhooks_arrived = receiver.wait_for(job_ids, timeout_s=30)
        webhook_s = max(receiver.arrived.get(job_id, math.inf) for job_id in job_ids) - started
        sampling.set()
        sampler.join()
        busy = [(at, n) for at, n in samples if n]
        calls_from_s, calls_to_s = (busy[0][0], busy[-1][0]) if busy else (0.0, 0.0)
        during = [n for at, n in samples if calls_from_s <= at <= calls_to_s]

        by_status = stack.emulator.calls_by_status
        objects = images_in_bucket() - images_before
        ideal_s = args.items / CONCURRENCY_LIMIT * args.latency
        mapping = stack.pollers[0].stats()
        first_s = min(start for start, _, _ in timeline)
        completed_s = max(datetime.fromisoformat(job["completed_at"]).timestamp() for job in jobs) - started_at
        result = {
            "items": args.items,
            "functions": "the built artefact, an execution environment per process" if args.built else "in-process",
            "warm_up_items": warm_up,
            "worker": f"{args.invocations} invocations x {args.slots} upstream slots, batches of {args.batch_size}"
            + (", no refill" if args.no_refill else ", refill"),
            "submitted_as": "one upload job" if args.upload else f"jobs of up to {args.job_items} items",
            "invocations": mapping["invocations"] - invocations_before,
            "jobs": len(jobs),
            "submit_s": round(submit_s, 2),
            "succeeded": sum(job["counts"]["succeeded"] for job in jobs),
            "failed": sum(job["counts"]["failed"] for job in jobs),
            "first_invocation_s": round(first_s, 2),
            "batches": [f"{size} items {start:.2f}-{end:.2f} s" for start, end, size in sorted(timeline)],
            # How the upstream's 16 slots were used: from the first generation seen to the last one, the mean
            # number in flight (sampled every 20 ms), then what followed the last call (mirror, record,
            # completion, results.jsonl and the client's next poll).
            "calls_from_s": round(calls_from_s, 2),
            "calls_to_s": round(calls_to_s, 2),
            "mean_in_flight_during_calls": round(sum(during) / len(during), 2) if during else 0,
            # the same, by tenths of that span: where the slots waited
            "mean_in_flight_by_tenth": [
                round(sum(part) / len(part), 1) if part else 0
                for part in (during[len(during) * k // 10 : len(during) * (k + 1) // 10] for k in range(10))
            ],
            "after_last_call_s": round(wall_s - calls_to_s, 2),
            "upstream_calls": stack.emulator.calls,
            "upstream_429": by_status.get(429, 0),
            "upstream_max_in_flight": stack.emulator.max_in_flight,
            "s3_objects": objects,
            "none_generated_twice": stack.emulator.calls == args.items + by_status.get(429, 0)
            and objects == args.items,
            "wall_s": round(wall_s, 2),
            "ideal_s": ideal_s,
            "ratio_to_ideal": round(wall_s / ideal_s, 3),
            # The service's own end: the last job's completed_at (written when its last item settled), without the
            # client's poll interval (at 4 rps, 0-0.25 s later). The target stays on wall_s, what the client saw.
            "completed_s": round(completed_s, 2),
            "completed_ratio": round(completed_s / ideal_s, 3),
            # A webhook receiver's end: the last job's signed delivery verified here (none missing, none forged).
            "webhooks_verified": webhooks_arrived and receiver.refused == 0,
            "webhook_s": round(webhook_s, 2) if webhooks_arrived else None,
            "webhook_ratio": round(webhook_s / ideal_s, 3) if webhooks_arrived else None,
            # No schedule beats this: the first message reached the worker then, and some slot makes
            # ceil(items / 16) calls one after another (13 for 200 items, where the ideal counts 12.5).
            "floor_s": round(first_s + math.ceil(args.items / CONCURRENCY_LIMIT) * args.latency, 2),
            "target_ratio": args.target,
        }
        result.update(upstream_call_figures([(a - started, b - started) for a, b in upstream_calls]))
        correct = result["succeeded"] == args.items and result["none_generated_twice"] and result["upstream_429"] == 0
        # The target, as each end sees the run: the service (completed_at), a webhook receiver, the polling client
        result["meets_target"] = {
            "completed": correct and result["completed_ratio"] <= args.target,
            "webhook": correct and webhooks_arrived and receiver.refused == 0 and webhook_s / ideal_s <= args.target,
            "polled": correct and result["ratio_to_ideal"] <= args.target,
        }
        if args.aws_calls:
            result["aws_calls"] = aws_calls.summary(wall_s)
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
