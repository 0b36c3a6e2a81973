"""Bulk jobs end to end on the local stack: API → SQS → the worker (through the local event source mapping) →
records, events and signed webhooks."""

from __future__ import annotations

import base64
import json
import time

import pytest
import requests
from standardwebhooks.webhooks import Webhook
from support.polling import eventually
from support.stack_fixtures import drain, the_delivery, wait_for_job


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
    assert done["counts"] == {"queued": 0, "running": 0, "succeeded": 3, "failed": 0, "canceled": 0, "waiting": 0}
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
    headers, body = the_delivery(received)
    secret = stack.resources.webhook_secret_value
    verified = Webhook(base64.b64encode(secret.encode()).decode()).verify(body, headers)
    assert verified["id"] == job["id"] and verified["status"] == "succeeded"
    assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= {name.lower() for name in headers}
    # the worker records the delivery once the receiver has answered: a moment after the receiver has it
    eventually(
        lambda: api("GET", f"/v1/jobs/{job['id']}").json()["webhook"]["status"] == "delivered",
        10,
        "the job's webhook recorded as delivered",
        interval_s=0.1,
    )
    # a forged body does not verify
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(base64.b64encode(secret.encode()).decode()).verify(body.replace(b"succeeded", b"failed"), headers)


def test_job_validation_names_the_failing_fields(api, emulator):
    cases = [
        ({"items": []}, "items"),
        ({"items": [{"prompt": "x"}] * 1001}, "items"),
        ({"items": [{"prompt": "ok"}, {"prompt": "x", "width": 500}]}, "items.1.width"),
        ({"items": [{"prompt": "x"}], "webhook_url": "ftp://example.com/hook"}, "webhook_url"),
        ({"items": [{"prompt": "x"}], "metadata": {"blob": "x" * 3000}}, "metadata"),
        ({"items": [{"prompt": "x"}], "callback": "typo"}, "callback"),
    ]
    for body, field in cases:
        response = api("POST", "/v1/jobs", json=body)
        assert response.status_code == 422, (field, response.text)
        assert field in {detail["field"] for detail in response.json()["error"]["details"]}, (field, response.text)
    assert emulator.calls == 0


def test_job_partial_failure_is_recorded_per_item_with_events(api, emulator, events):
    # Given an upstream that refuses the first request it sees
    emulator.inject("bad_request", message="Invalid prompt parameter")
    body = {"items": [{"prompt": f"item {i}", "seed": i, "width": 256, "height": 256} for i in range(3)]}
    job = wait_for_job(api, api("POST", "/v1/jobs", json=body).json()["id"])
    assert job["status"] == "partially_failed"
    assert job["counts"]["succeeded"] == 2 and job["counts"]["failed"] == 1
    failed = [item for item in job["items"] if item["status"] == "failed"]
    assert failed[0]["error"]["code"] == "upstream_rejected"
    assert failed[0]["image"] is None
    kinds = sorted(event["detail-type"] for event in events(4))
    assert kinds == ["Image Failed", "Image Generated", "Image Generated", "Job Completed"]


def test_job_cancel_stops_items_that_have_not_started(api, emulator, events):
    # Given a slow upstream and a job larger than the worker can start at once
    emulator.set_latency(3.0)
    try:
        body = {"items": [{"prompt": f"slow {i}", "width": 256, "height": 256} for i in range(30)]}
        job_id = api("POST", "/v1/jobs", json=body).json()["id"]
        # When it is canceled right away
        canceled = api("DELETE", f"/v1/jobs/{job_id}")
        assert canceled.status_code == 200
        # (answered at once, canceled: its queued items are settled by the worker from a cancel message)
        assert canceled.json()["status"] == "canceled"
        # Then the items not started end canceled and were never sent upstream; started ones finish
        job = wait_for_job(api, job_id, timeout_s=60)
    finally:
        emulator.set_latency(0.0)
    assert job["status"] == "canceled"
    counts = job["counts"]
    assert counts["canceled"] > 0
    assert counts["succeeded"] + counts["failed"] + counts["canceled"] == 30
    assert emulator.calls == counts["succeeded"] + counts["failed"]
    # and canceling a finished job changes nothing
    again = api("DELETE", f"/v1/jobs/{job_id}").json()
    assert again["counts"] == counts
    # and the completion was announced once, by the worker
    seen = events(counts["succeeded"] + counts["failed"] + 1)
    completed = [e for e in seen if e["detail-type"] == "Job Completed" and e["detail"]["job"]["id"] == job_id]
    assert len(completed) == 1 and completed[0]["detail"]["job"]["status"] == "canceled"


def test_job_idempotency_key_returns_the_original_answer(api, emulator):
    body = {"items": [{"prompt": "once", "width": 256, "height": 256}]}
    key = f"test-{time.monotonic_ns()}"
    first = api("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
    second = api("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["Location"] == first.headers["Location"]
    # and only the replay says it is one
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    wait_for_job(api, first.json()["id"])
    assert emulator.calls == 1
    # the same key with another body is refused, and says why
    other = api("POST", "/v1/jobs", json={"items": [{"prompt": "other"}]}, headers={"Idempotency-Key": key})
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"


def test_sync_image_idempotency_key_generates_once(api, emulator):
    body = {"prompt": "paid once", "width": 256, "height": 256}
    key = f"img-{time.monotonic_ns()}"
    first = api("POST", "/v1/images", json=body, headers={"Idempotency-Key": key})
    second = api("POST", "/v1/images", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    assert emulator.calls == 1
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    # a third replay is marked once, not once per replay
    third = api("POST", "/v1/images", json=body, headers={"Idempotency-Key": key})
    assert third.headers["Idempotent-Replayed"] == "true"


def test_prefer_respond_async_queues_one_image(api, emulator):
    response = api(
        "POST", "/v1/images", json={"prompt": "later", "width": 256, "height": 256}, headers={"Prefer": "respond-async"}
    )
    assert response.status_code == 202, response.text
    assert response.headers["Preference-Applied"] == "respond-async"
    assert response.headers["Location"].startswith("/v1/jobs/job_")
    job = wait_for_job(api, response.json()["id"])
    assert job["total"] == 1 and job["status"] == "succeeded"
    assert job["items"][0]["image"]["parameters"]["prompt"] == "later"


def test_job_pages_its_items_with_a_cursor(api, emulator):
    body = {"items": [{"prompt": f"page {i}", "width": 256, "height": 256} for i in range(5)]}
    job_id = api("POST", "/v1/jobs", json=body).json()["id"]
    wait_for_job(api, job_id)
    first = api("GET", f"/v1/jobs/{job_id}?limit=2").json()
    second = api("GET", f"/v1/jobs/{job_id}?limit=2&cursor={first['next_cursor']}").json()
    third = api("GET", f"/v1/jobs/{job_id}?limit=2&cursor={second['next_cursor']}").json()
    indexes = [item["index"] for page in (first, second, third) for item in page["items"]]
    assert indexes == [0, 1, 2, 3, 4]
    assert third["next_cursor"] is None
    bad = api("GET", f"/v1/jobs/{job_id}?cursor=not-a-cursor")
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "cursor"
    assert api("GET", f"/v1/jobs/job_{'0' * 32}").status_code == 404


def test_direct_producer_message_is_processed_and_reported_through_events(stack, emulator, events):
    # Given a system that puts work on the queue itself, per docs/job-message.schema.json
    sqs = stack.aws.client("sqs")
    body = json.dumps({"request": {"prompt": "from a pipeline", "width": 256, "height": 256}, "correlation_id": "o-42"})
    sqs.send_message(QueueUrl=stack.seeded.jobs_queue_url, MessageBody=body)
    # Then the result arrives as an event carrying the correlation id, and a one-item job records it
    generated = [event for event in events(2) if event["detail-type"] == "Image Generated"]
    assert len(generated) == 1
    detail = generated[0]["detail"]
    assert detail["correlation_id"] == "o-42"
    assert detail["image"]["parameters"]["prompt"] == "from a pipeline"
    assert detail["job_id"].startswith("job_")


def test_malformed_queue_message_goes_to_the_dlq_without_stalling_others(stack, emulator, events):
    sqs = stack.aws.client("sqs")
    dlq = stack.seeded.jobs_dlq_url
    drain(sqs, dlq)
    sqs.send_message(QueueUrl=stack.seeded.jobs_queue_url, MessageBody="{not json")
    good = json.dumps({"request": {"prompt": "still fine", "width": 256, "height": 256}, "correlation_id": "ok-1"})
    sqs.send_message(QueueUrl=stack.seeded.jobs_queue_url, MessageBody=good)
    generated = [event for event in events(2) if event["detail-type"] == "Image Generated"]
    assert [event["detail"]["correlation_id"] for event in generated] == ["ok-1"]
    seen: list[dict] = []

    def ours() -> list[dict]:
        # Another test's message may still come back on the shared DLQ: only this test's body counts.
        answer = sqs.receive_message(QueueUrl=dlq, MessageAttributeNames=["All"], WaitTimeSeconds=1)
        for message in answer.get("Messages", []):
            sqs.delete_message(QueueUrl=dlq, ReceiptHandle=message["ReceiptHandle"])
            seen.append(message)
        return [message for message in seen if message["Body"] == "{not json"]

    moved = eventually(ours, 10, "the malformed message on the DLQ")
    assert [message["Body"] for message in moved] == ["{not json"]
