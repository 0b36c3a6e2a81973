"""The local stack and what tests need around it, shared by the integration and reliability suites.

One stack per test session (moto + the Flux emulator + the local API Gateway + the worker's event source
mapping, all on loopback and in this process: two would fight over the environment the handlers read). Handler
tests call the real ``lambda_handler`` with the JSON in ``events/``; local-stack tests go over HTTP.

The session's usage plan is raised (``TEST_THROTTLE``) so a fuzzing run is not throttled into minutes; the
template's own plan is exercised by the gateway's unit tests and the load test, which starts ``make run``'s stack
in a subprocess.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import requests
from botocore.exceptions import ClientError
from devstack.lambda_context import make_context
from devstack.stack import LocalStack
from imagegen.adapters.jobs_table import Job
from imagegen.adapters.queue import message_body
from imagegen.jobs import new_job_id
from imagegen.models import ImageRequest, JobMessage

from support.events import load_event
from support.polling import eventually
from support.secrets_under_test import API_KEY, ORIGIN, SUBSCRIPTION_KEY

TEST_THROTTLE = (200.0, 400)  # (rate, burst) of the test client's usage plan


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    local = LocalStack(
        port=0,
        api_key=API_KEY,
        flux_api_key=SUBSCRIPTION_KEY,
        extra_env={
            "CORS_ALLOWED_ORIGINS": f"{ORIGIN},https://app.example.com",
            "UPSTREAM_BACKOFF_BASE_SECONDS": "0.2",
            "UPSTREAM_BACKOFF_MAX_SECONDS": "0.5",
            "POWERTOOLS_METRICS_DISABLED": "false",
        },
        throttle=TEST_THROTTLE,
        console_port=0,  # the web console on its own origin (first in the allow-list), for tests/browser
    )
    local.start()
    yield local
    local.stop()


def settle_worker(stack: LocalStack, timeout_s: float = 20, *, drop_put_back: bool = False) -> None:
    """Wait until the worker has nothing left to do now: no invocation running and no message waiting on the jobs
    queue or in the event source mapping's batching window (received, not yet invoked: "not visible"). A test that
    queued work (a job, a fuzzed respond-async) must not pay upstream calls into the next test's counters. A
    message put back with a long delay (a retry) is waited for ``timeout_s`` at most.

    ``drop_put_back``, between tests only: messages an earlier test left put back with a delay are purged once
    nothing else is left (no invocation running, none visible) for longer than the mapping's batching window. A
    duplicate delivery that found its item running waits out the item's lease (the function's timeout plus a
    margin, ~15 min): without the purge, every later test on that worker waited ``timeout_s`` for it (seven times
    20 s in one run). SQS allows one purge a minute; a second one within it waits as before."""
    sqs = stack.aws.client("sqs")

    only_put_back_since: list[float] = []  # when the queue was first seen holding nothing but hidden messages

    def idle() -> bool:
        attributes = sqs.get_queue_attributes(
            QueueUrl=stack.seeded.jobs_queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        visible = int(attributes["ApproximateNumberOfMessages"])
        hidden = int(attributes["ApproximateNumberOfMessagesNotVisible"])
        running = any(poller.in_flight for poller in stack.pollers)
        if not (drop_put_back and hidden and not visible and not running):
            only_put_back_since.clear()
            return visible == 0 and hidden == 0 and not running
        # Hidden, nothing running: put back with a delay, or received by a poller that is filling its batch (its
        # batching window) before it invokes. Once a whole window and a margin have passed, the poller would be
        # running: what is still hidden then waits out a delay, and is dropped.
        only_put_back_since[:] = only_put_back_since or [time.monotonic()]
        window_s = max(poller.batching_window_s for poller in stack.pollers)
        if time.monotonic() - only_put_back_since[0] < window_s + 1.5:
            return False
        try:
            sqs.purge_queue(QueueUrl=stack.seeded.jobs_queue_url)
        except ClientError:  # SQS (and moto) allow one purge a minute: wait as for any other message
            return False
        return True

    with contextlib.suppress(AssertionError):  # a delayed retry may outlast the wait: the next test goes on anyway
        eventually(idle, timeout_s, "the worker to settle", interval_s=0.1)


@pytest.fixture
def emulator(stack: LocalStack) -> Iterator[Any]:
    assert stack.emulator is not None
    settle_worker(stack, drop_put_back=True)
    stack.emulator.clear_faults()
    stack.emulator.reset_counters()
    stack.emulator.set_api_key(SUBSCRIPTION_KEY)
    yield stack.emulator
    stack.emulator.clear_faults()
    stack.emulator.set_api_key(SUBSCRIPTION_KEY)


@pytest.fixture
def moderation(stack: LocalStack) -> Iterator[Callable[[str], Any]]:
    """``moderation("both")`` switches the functions' MODERATION_MODE for one test (settings, services and clients
    are rebuilt on next use, as after a SnapStart restore) and returns the ApplyGuardrail stand-in, its faults
    cleared and its counters reset. The mode the session started with comes back afterwards."""
    from imagegen.snapstart import after_restore

    standin = stack.moderation
    saved = os.environ.get("MODERATION_MODE", "off")
    settle_worker(stack)

    def switch(mode: str) -> Any:
        settle_worker(stack)
        os.environ["MODERATION_MODE"] = mode
        after_restore()
        standin.clear_faults()
        standin.reset_counters()
        return standin

    yield switch
    settle_worker(stack)
    standin.clear_faults()
    os.environ["MODERATION_MODE"] = saved
    after_restore()


@pytest.fixture
def invoke(stack: LocalStack) -> Callable[..., dict[str, Any]]:
    """Call the real API handler with an event; ``timeout_s`` is the Lambda's remaining time."""
    handler = stack.handlers["api_handler"].lambda_handler

    def call(event: dict[str, Any], timeout_s: float = 29.0) -> dict[str, Any]:
        return handler(copy.deepcopy(event), make_context("ApiFunction", timeout_s))

    return call


@pytest.fixture
def captured_logs(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Callable[[], str]:
    """Everything the test wrote: Powertools logs and metrics go to stdout, the rest through logging."""
    caplog.set_level(logging.DEBUG)

    def text() -> str:
        out, err = capsys.readouterr()
        return out + err + caplog.text

    return text


# ------------------------------------------------------------------------------- jobs over HTTP
TERMINAL = {"succeeded", "partially_failed", "failed", "canceled"}


@pytest.fixture
def api(stack) -> Callable[..., requests.Response]:
    session = requests.Session()

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"x-api-key": API_KEY, **kwargs.pop("headers", {})}
        attempts = 20  # like any client: back off when the usage plan throttles (5 rps locally too)
        for attempt in range(1, attempts + 1):
            response = session.request(method, f"{stack.url}{path}", headers=headers, timeout=30, **kwargs)
            if response.status_code != 429 or attempt == attempts:  # never a wait after the last attempt
                return response
            time.sleep(0.5)
        raise AssertionError("not reached")

    return call


def wait_for_job(api, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    """The job once it is terminal with nothing queued or running; ``api(method, path)`` answers like the fixture."""
    last: dict[str, Any] = {}

    def finished() -> dict[str, Any] | None:
        last.update(api("GET", f"/v1/jobs/{job_id}").json())
        done = last["status"] in TERMINAL and last["counts"]["queued"] == last["counts"]["running"] == 0
        return dict(last) if done else None

    return eventually(
        finished, timeout_s, lambda: f"job {job_id} to finish (last: {last.get('status')} {last.get('counts')})", 0.3
    )


def drain(sqs: Any, url: str) -> None:
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        sqs.delete_message_batch(
            QueueUrl=url, Entries=[{"Id": m["MessageId"], "ReceiptHandle": m["ReceiptHandle"]} for m in messages]
        )


@pytest.fixture
def events(stack) -> Callable[..., list[dict[str, Any]]]:
    """Events published to the bus (a capture rule forwards them to an SQS queue)."""
    sqs = stack.aws.client("sqs")
    url = stack.seeded.events_queue_url
    drain(sqs, url)  # PurgeQueue is allowed once a minute

    def read(expected: int, timeout_s: float = 20) -> list[dict[str, Any]]:
        """At least ``expected`` events (all that came by then), or a failure naming how many came."""
        found: list[dict[str, Any]] = []

        def enough() -> list[dict[str, Any]] | None:
            answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for message in answer.get("Messages", []):
                found.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            return found if len(found) >= expected else None

        kinds = lambda: sorted(event["detail-type"] for event in found)  # noqa: E731
        return eventually(enough, timeout_s, lambda: f"{expected} events on the bus, {len(found)} came: {kinds()}")

    return read


class Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers.items()), body))
        self.send_response(204)
        self.end_headers()


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/flux", Receiver.received
    server.shutdown()
    server.server_close()


def the_delivery(received: list[tuple[dict[str, str], bytes]], timeout_s: float = 10) -> tuple[dict[str, str], bytes]:
    """The one webhook delivery a receiver gets (headers, body), waited for up to ``timeout_s``: a test that
    expects one fails on none or more than one."""
    eventually(lambda: received, timeout_s, "the job's webhook at the receiver", interval_s=0.1)
    assert len(received) == 1, f"{len(received)} webhook deliveries, expected 1"
    return received[0]


# ------------------------------------------------------------------------------- the worker, fed directly
@pytest.fixture
def worker(stack):
    module = stack.handlers.get("worker_handler")
    if module is None:
        import importlib

        module = importlib.import_module("worker_handler")
    return module


@pytest.fixture
def repository():
    from imagegen.wiring import job_repository

    return job_repository()


def make_job(repository, prompts: list[str]) -> str:
    """A job recorded as the API records one, but not enqueued: the test delivers its messages itself."""
    job_id = new_job_id()
    job = Job(id=job_id, total=len(prompts), created_at=datetime.now(UTC), counts=None, remaining=len(prompts))  # type: ignore[arg-type]
    requests = [ImageRequest(prompt=prompt, seed=index, width=256, height=256) for index, prompt in enumerate(prompts)]
    repository.create(job, requests)
    return job_id


def sqs_event(bodies: list[str], receive_count: int = 1) -> dict[str, Any]:
    template = load_event("sqs_receive_message")["Records"][0]
    records = []
    for body in bodies:
        record = copy.deepcopy(template)
        record["messageId"] = str(uuid.uuid5(uuid.NAMESPACE_URL, body))
        record["receiptHandle"] = f"test-receipt-{uuid.uuid4().hex}"
        record["body"] = body
        record["md5OfBody"] = hashlib.md5(body.encode()).hexdigest()
        record["attributes"]["ApproximateReceiveCount"] = str(receive_count)
        records.append(record)
    return {"Records": records}


def item_messages(job_id: str, prompts: list[str]) -> list[str]:
    """The queue bodies of a job's items, one per prompt (256x256, seed = index), as the API enqueues them."""
    return [
        message_body(
            JobMessage(
                request=ImageRequest(prompt=prompt, seed=index, width=256, height=256), job_id=job_id, index=index
            )
        )
        for index, prompt in enumerate(prompts)
    ]


def messages(job_id: str, count: int) -> list[str]:
    return item_messages(job_id, [f"p{index}" for index in range(count)])


def post_image(invoke, prompt: str = "a quiet harbour") -> tuple[int, dict[str, Any], dict[str, str]]:
    """``POST /v1/images`` through the API handler (256x256): status, body, and headers by lower-case name."""
    event = load_event("post_image")
    event["body"] = json.dumps({"prompt": prompt, "width": 256, "height": 256})
    response = invoke(event)
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    for name, values in (response.get("multiValueHeaders") or {}).items():
        headers.setdefault(name.lower(), ",".join(values))
    return response["statusCode"], json.loads(response["body"]), headers


def image_object_count(stack) -> int:
    """Every image object in the bucket (``images/``)."""
    s3 = stack.aws.client("s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=stack.resources.bucket, Prefix="images/")
    return sum(page.get("KeyCount", 0) for page in pages)


def s3_keys(stack, job_id: str, index: int) -> list[str]:
    """Every object stored for one item (its key derives from job id + index: a replay overwrites)."""
    s3 = stack.aws.client("s3")
    prefix = f"images/jobs/{job_id}/{index:04d}"
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.resources.bucket, Prefix=prefix):
        found += [obj["Key"] for obj in page.get("Contents", [])]
    return found


def age_completion(repository, job_id: str, seconds: float) -> None:
    """Move the job's completed_at ``seconds`` into the past, as if it had completed that long ago."""
    job = repository.get_job(job_id)
    assert job is not None and job.completed_at is not None
    repository._client.update_item(
        TableName=repository._table,
        Key={"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "JOB"}},
        UpdateExpression="SET completed_at = :then",
        ExpressionAttributeValues={":then": {"S": (job.completed_at - timedelta(seconds=seconds)).isoformat()}},
    )


def expire_lease(repository, job_id: str, index: int) -> None:
    repository._client.update_item(
        TableName=repository._table,
        Key={"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": f"ITEM#{index:04d}"}},
        UpdateExpression="SET lease_until = :past",
        ExpressionAttributeValues={":past": {"N": "1"}},
    )
