"""Bulk jobs end to end on the local stack: API → SQS → the worker (through the local event source mapping) →
records, events and signed webhooks."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import requests
from standardwebhooks.webhooks import Webhook
from support.secrets_under_test import API_KEY

TERMINAL = {"succeeded", "partially_failed", "failed", "canceled"}


@pytest.fixture
def api(stack) -> Callable[..., requests.Response]:
    session = requests.Session()

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"x-api-key": API_KEY, **kwargs.pop("headers", {})}
        return session.request(method, f"{stack.url}{path}", headers=headers, timeout=30, **kwargs)

    return call


def wait_for_job(api, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = api("GET", f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL and job["counts"]["queued"] == job["counts"]["running"] == 0:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s: {job['status']} {job['counts']}")


@pytest.fixture
def events(stack) -> Callable[..., list[dict[str, Any]]]:
    """Events published to the bus (a capture rule forwards them to an SQS queue)."""
    sqs = stack.aws.client("sqs")
    url = stack.seeded.events_queue_url
    sqs.purge_queue(QueueUrl=url)

    def read(expected: int, timeout_s: float = 20) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while len(found) < expected and time.monotonic() < deadline:
            answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for message in answer.get("Messages", []):
                found.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return found

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


def test_job_202_then_every_item_succeeds_with_events(api, emulator, events):
    # Given three prompts
    body = {"items": [{"prompt": f"a fox #{i}", "width": 256, "height": 256} for i in range(3)], "metadata": {"k": 1}}

    # When they are submitted as a job
    response = api("POST", "/v1/jobs", json=body)

    # Then the job is accepted at once and queued
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["total"] == 3 and job["counts"]["queued"] == 3
    assert job["metadata"] == {"k": 1}

    # And it completes: every item succeeded, each upstream call made once, each image downloadable
    done = wait_for_job(api, job["id"])
    assert done["status"] == "succeeded"
    assert done["counts"] == {"queued": 0, "running": 0, "succeeded": 3, "failed": 0, "canceled": 0}
    assert done["completed_at"] is not None
    assert sorted(item["index"] for item in done["items"]) == [0, 1, 2]
    for item in done["items"]:
        assert item["status"] == "succeeded" and item["error"] is None
        assert item["request"]["seed"] is not None  # resolved once, so a replay draws the same image
        png = requests.get(item["image"]["image"]["url"], timeout=10).content
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert emulator.calls == 3

    # And the bus saw three "Image Generated" and one "Job Completed"
    seen = events(4)
    kinds = sorted(event["detail-type"] for event in seen)
    assert kinds == ["Image Generated"] * 3 + ["Job Completed"]
    completed = next(event for event in seen if event["detail-type"] == "Job Completed")
    assert completed["detail"]["job"]["id"] == job["id"]
    assert completed["detail"]["job"]["status"] == "succeeded"


def test_job_webhook_is_signed_and_verifies(api, emulator, stack, webhook_receiver):
    # Given a receiver (the local stack lets webhooks reach loopback over http; deployed, https and public only)
    url, received = webhook_receiver
    job_id = api(
        "POST", "/v1/jobs", json={"items": [{"prompt": "hook", "width": 256, "height": 256}], "webhook_url": url}
    )
    assert job_id.status_code == 202, job_id.text
    job = wait_for_job(api, job_id.json()["id"])
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(received) == 1
    headers, body = received[0]
    secret = stack.resources.webhook_secret_value
    verified = Webhook(base64.b64encode(secret.encode()).decode()).verify(body, headers)
    assert verified["id"] == job["id"] and verified["status"] == "succeeded"
    assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= {name.lower() for name in headers}
    assert api("GET", f"/v1/jobs/{job['id']}").json()["webhook"]["status"] == "delivered"
    # a forged body does not verify
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(base64.b64encode(secret.encode()).decode()).verify(body.replace(b"succeeded", b"failed"), headers)
