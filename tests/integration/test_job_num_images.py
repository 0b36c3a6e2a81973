"""``num_images`` on job items (issue 11), on the local stack (moto + emulator): a request of N images becomes N
items of one image each, through every way a job is made (``POST /v1/jobs`` items, uploaded lines, queue messages of
direct producers, ``Image Requested`` events), each item carrying ``request_index`` and ``image_index``.

The end-to-end tests go through the API and the worker's pollers; the cancel and redelivery tests route the
service's messages to a queue no poller reads and feed the worker by hand (as ``test_fanout.py`` does), so what they
count does not depend on timing."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import pytest
import requests
from devstack.lambda_context import make_context
from imagegen.models import JobMessage
from support.events import load_event
from support.polling import eventually
from support.stack_fixtures import sqs_event, wait_for_job

SIZE = {"width": 256, "height": 256}
RESULT_KEYS = ["index", "status", "image_id", "s3_uri", "sha256", "bytes", "width", "height", "seed", "error"]
ITEM_KEYS = {"index", "status", "request", "error", "image", "retry_at"}


def results_of(api, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's results file (written just after completion), read through its presigned URL."""
    results = job["results"] or eventually(
        lambda: api("GET", f"/v1/jobs/{job['id']}?limit=1").json()["results"], 10, "the job's results file", 0.2
    )
    return [json.loads(line) for line in requests.get(results["url"], timeout=10).text.splitlines()]


def all_items(api, job_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = api("GET", f"/v1/jobs/{job_id}" + (f"?cursor={cursor}" if cursor else "")).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


# ------------------------------------------------------------------------------------------ POST /v1/jobs items
def test_job_item_of_3_images_gives_3_items_with_consecutive_seeds_tied_to_its_index(api, emulator, events):
    # Given a job of two requests: three images from seed 40, then one image from seed 7
    body = {
        "items": [
            {"prompt": "three foxes", "seed": 40, "num_images": 3, **SIZE},
            {"prompt": "one whale", "seed": 7, **SIZE},
        ]
    }

    # When it is submitted
    response = api("POST", "/v1/jobs", json=body)

    # Then its total counts images, not requests
    assert response.status_code == 202, response.text
    assert response.json()["total"] == 4 and response.json()["counts"]["queued"] == 4
    job = wait_for_job(api, response.json()["id"])
    assert job["status"] == "succeeded" and job["counts"]["succeeded"] == 4

    # And each item is one image tied to its request, seeds 40, 41, 42 then 7, each paid once
    items = job["items"]
    assert [(item["index"], item["request_index"], item["image_index"]) for item in items] == [
        (0, 0, 0),
        (1, 0, 1),
        (2, 0, 2),
        (3, 1, 0),
    ]
    assert [item["image"]["parameters"]["seed"] for item in items] == [40, 41, 42, 7]
    assert [item["request"]["seed"] for item in items] == [40, 41, 42, 7]
    assert {item["request"]["num_images"] for item in items} == {1}
    assert [item["image"]["parameters"]["prompt"] for item in items] == ["three foxes"] * 3 + ["one whale"]
    assert emulator.calls == 4

    # And every image has its own id, fetchable with GET /v1/images/{id}
    ids = [item["image"]["id"] for item in items]
    assert len(set(ids)) == 4
    for image_id, seed in zip(ids, [40, 41, 42, 7], strict=True):
        fetched = api("GET", f"/v1/images/{image_id}")
        assert fetched.status_code == 200 and fetched.json()["parameters"]["seed"] == seed

    # And the results file has one line per image, tied to its request
    rows = results_of(api, job)
    assert [(row["index"], row["request_index"], row["image_index"], row["seed"]) for row in rows] == [
        (0, 0, 0, 40),
        (1, 0, 1, 41),
        (2, 0, 2, 42),
        (3, 1, 0, 7),
    ]
    assert [row["image_id"] for row in rows] == ids

    # And each "Image Generated" says which request and image it is
    generated = [event["detail"] for event in events(5) if event["detail-type"] == "Image Generated"]
    assert sorted((d["index"], d["request_index"], d["image_index"]) for d in generated) == [
        (0, 0, 0),
        (1, 0, 1),
        (2, 0, 2),
        (3, 1, 0),
    ]


def test_a_job_of_single_images_is_exactly_as_before(api, emulator, events):
    # Given a job whose requests ask for one image each (num_images 1 written out, or left out)
    body = {
        "items": [{"prompt": "plain", "seed": 3, **SIZE}, {"prompt": "explicit", "seed": 4, "num_images": 1, **SIZE}]
    }
    job = wait_for_job(api, api("POST", "/v1/jobs", json=body).json()["id"])
    assert job["status"] == "succeeded" and job["total"] == 2
    # Then no item, results line or event carries request_index/image_index: the documents are today's
    assert all(set(item) == ITEM_KEYS for item in job["items"])
    assert [list(row) for row in results_of(api, job)] == [RESULT_KEYS, RESULT_KEYS]
    details = [event["detail"] for event in events(3) if event["detail-type"] == "Image Generated"]
    assert len(details) == 2
    assert all(set(detail) == {"job_id", "index", "correlation_id", "image"} for detail in details)
    assert emulator.calls == 2


def test_paid_calls_are_one_per_image_and_a_refused_image_fails_alone(api, emulator, events):
    # Given an upstream that refuses (400, not retried) exactly one call, and a request of four images
    emulator.inject("bad_request", count=1)
    body = {"items": [{"prompt": "four owls", "seed": 100, "num_images": 4, **SIZE}]}
    job = wait_for_job(api, api("POST", "/v1/jobs", json=body).json()["id"])
    # Then the job is partially failed: three images, one failed item with its request and image index
    assert job["status"] == "partially_failed"
    assert job["counts"]["succeeded"] == 3 and job["counts"]["failed"] == 1
    failed = [item for item in job["items"] if item["status"] == "failed"]
    assert failed[0]["error"]["code"] == "upstream_rejected" and failed[0]["request_index"] == 0
    assert failed[0]["request"]["seed"] == 100 + failed[0]["image_index"]
    # and exactly one paid call per image: the refused one was not retried, the others not repeated
    assert emulator.calls == 4
    failures = [event["detail"] for event in events(5) if event["detail-type"] == "Image Failed"]
    assert [(d["index"], d["request_index"], d["image_index"]) for d in failures] == [
        (failed[0]["index"], 0, failed[0]["image_index"])
    ]


def test_prefer_respond_async_with_num_images_queues_that_many_items(api, emulator):
    response = api(
        "POST",
        "/v1/images",
        json={"prompt": "later, twice", "seed": 11, "num_images": 2, **SIZE},
        headers={"Prefer": "respond-async"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["total"] == 2
    job = wait_for_job(api, response.json()["id"])
    assert job["status"] == "succeeded"
    assert [item["image"]["parameters"]["seed"] for item in job["items"]] == [11, 12]
    assert emulator.calls == 2


@pytest.mark.parametrize(
    ("item", "fields"),
    [
        ({"num_images": 5}, {"items.0.num_images"}),
        ({"num_images": 2, "response_format": "b64_json"}, {"items.0.num_images", "items.0.response_format"}),
        ({"num_images": 5, "response_format": "b64_json"}, {"items.0.num_images"}),
        ({"num_images": "2"}, {"items.0.num_images"}),
    ],
)
def test_invalid_num_images_in_a_job_is_a_422_naming_each_field(api, emulator, item, fields):
    response = api("POST", "/v1/jobs", json={"items": [{"prompt": "x", **item}]})
    assert response.status_code == 422, response.text
    assert {detail["field"] for detail in response.json()["error"]["details"]} == fields
    assert emulator.calls == 0


# ------------------------------------------------------------------------------------------ uploads
def put_upload(api, lines: list[str]) -> str:
    created = api("POST", "/v1/uploads")
    assert created.status_code == 201, created.text
    put = requests.put(created.json()["upload_url"], data="\n".join(lines).encode(), timeout=10)
    assert put.status_code == 200, put.text
    return str(created.json()["id"])


def test_upload_line_with_num_images_2_makes_two_items_and_a_bad_one_fails_each(api, emulator):
    # Given an uploaded file: two images from seed 5, a line of two images that is invalid (width), one image
    lines = [
        json.dumps({"prompt": "two hares", "seed": 5, "num_images": 2, **SIZE}),
        "",
        json.dumps({"prompt": "bad", "num_images": 2, "width": 500}),
        json.dumps({"prompt": "one hare", "seed": 9, **SIZE}),
    ]
    # When a job names it
    submitted = api("POST", "/v1/jobs", json={"items_upload_id": put_upload(api, lines)})
    # Then its total is counted at submit: 2 + 2 + 1 images
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["total"] == 5
    job = wait_for_job(api, submitted.json()["id"])
    assert job["status"] == "partially_failed"
    items = job["items"]
    assert [(item["request_index"], item["image_index"], item["status"]) for item in items] == [
        (0, 0, "succeeded"),
        (0, 1, "succeeded"),
        (1, 0, "failed"),
        (1, 1, "failed"),
        (2, 0, "succeeded"),
    ]
    assert [items[i]["image"]["parameters"]["seed"] for i in (0, 1, 4)] == [5, 6, 9]
    for bad in items[2:4]:  # the invalid line fails as both its items, naming the line (3: blank lines count)
        assert bad["error"]["code"] == "invalid_request" and bad["request"] is None
        assert "line 3" in bad["error"]["message"] and "width" in bad["error"]["message"]
    assert emulator.calls == 3
    rows = results_of(api, job)
    assert [(row["index"], row["request_index"], row["image_index"], row["status"]) for row in rows] == [
        (0, 0, 0, "succeeded"),
        (1, 0, 1, "succeeded"),
        (2, 1, 0, "failed"),
        (3, 1, 1, "failed"),
        (4, 2, 0, "succeeded"),
    ]


def test_an_upload_of_more_images_than_a_job_holds_is_refused_naming_items_upload_id(api, emulator, monkeypatch):
    from imagegen import jobs

    monkeypatch.setattr(jobs, "MAX_UPLOAD_LINES", 5)
    lines = [json.dumps({"prompt": f"p{i}", "num_images": 2}) for i in range(3)]  # 3 lines, 6 images
    refused = api("POST", "/v1/jobs", json={"items_upload_id": put_upload(api, lines)})
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["details"][0]["field"] == "items_upload_id"
    assert "3 lines making 6 images" in error["message"]
    assert emulator.calls == 0


# ------------------------------------------------------------------------------------------ cancel
def test_cancel_midway_through_several_images_cancels_the_rest_and_pays_only_for_the_started(
    api, invoke, worker, repository, side_queue, emulator, events
):
    # Given a job of ten requests of four images (40 items), fanned out by hand
    body = {"items": [{"prompt": f"cancel {i}", "seed": 10 * i, "num_images": 4, **SIZE} for i in range(10)]}
    event = load_event("post_job")
    event["body"] = json.dumps(body)
    response = invoke(event)
    assert response["statusCode"] == 202, response["body"]
    job_id = json.loads(response["body"])["id"]
    assert json.loads(response["body"])["total"] == 40
    context = make_context("WorkerFunction", 120)
    (chunk,) = side_queue.take()  # at most 100 items: the one chunk is sent directly
    assert json.loads(chunk)["chunk"]["items"] == 40 and json.loads(chunk)["chunk"]["request_index"] == 0
    assert worker.lambda_handler(sqs_event([chunk]), context) == {"batchItemFailures": []}
    item_messages = side_queue.take()
    parsed = [JobMessage.model_validate_json(body) for body in item_messages]
    assert [(m.index, m.request_index, m.image_index) for m in parsed] == [
        (4 * r + i, r, i) for r in range(10) for i in range(4)
    ]
    assert [m.request.seed for m in parsed] == [10 * r + i for r in range(10) for i in range(4)]

    # When six images are generated, then the job is canceled, then the cancel and the other messages come
    assert worker.lambda_handler(sqs_event(item_messages[:6]), context) == {"batchItemFailures": []}
    canceled = api("DELETE", f"/v1/jobs/{job_id}")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert worker.lambda_handler(sqs_event(side_queue.take()), context) == {"batchItemFailures": []}  # cancel
    assert worker.lambda_handler(sqs_event(item_messages[6:]), context) == {"batchItemFailures": []}

    # Then six items succeeded (six paid calls), the other 34 were canceled and never sent upstream
    job = api("GET", f"/v1/jobs/{job_id}?limit=1").json()
    assert job["status"] == "canceled" and job["completed_at"] is not None
    assert (job["counts"]["succeeded"], job["counts"]["canceled"], job["total"]) == (6, 34, 40)
    assert emulator.calls == 6
    items = all_items(api, job_id)
    assert [item["status"] for item in items] == ["succeeded"] * 6 + ["canceled"] * 34
    assert [(item["request_index"], item["image_index"]) for item in items] == [
        (r, i) for r in range(10) for i in range(4)
    ]
    rows = results_of(api, job)
    assert len(rows) == 40 and Counter(row["status"] for row in rows) == {"succeeded": 6, "canceled": 34}
    assert all(row["request_index"] == row["index"] // 4 for row in rows)


# ------------------------------------------------------------------------------------------ direct producers
def test_a_direct_message_of_two_images_becomes_a_job_of_two_items_once(worker, repository, side_queue, emulator):
    from imagegen.jobs import direct_job_id

    # Given a producer's message asking for two images, delivered twice (at-least-once)
    body = json.dumps(
        {"request": {"prompt": "from a pipeline", "seed": 21, "num_images": 2, **SIZE}, "correlation_id": "o-7"}
    )
    context = make_context("WorkerFunction", 120)
    delivery = sqs_event([body])
    assert worker.lambda_handler(delivery, context) == {"batchItemFailures": []}
    first = side_queue.take()
    delivery["Records"][0]["attributes"]["ApproximateReceiveCount"] = "2"
    assert worker.lambda_handler(delivery, context) == {"batchItemFailures": []}
    again = side_queue.take()

    # Then one job (its id from the message id) of two items, each with its own message (sent again on the
    # redelivery: the claims refuse the duplicates)
    job_id = direct_job_id(delivery["Records"][0]["messageId"])
    job = repository.get_job(job_id)
    assert job is not None and job.total == 2 and job.direct
    messages = [JobMessage.model_validate_json(body) for body in first]
    assert [(m.job_id, m.index, m.request_index, m.image_index, m.request.seed) for m in messages] == [
        (job_id, 0, 0, 0, 21),
        (job_id, 1, 0, 1, 22),
    ]
    assert {m.correlation_id for m in messages} == {"o-7"}

    # When every message is delivered, then the repeated ones
    assert worker.lambda_handler(sqs_event(first), context) == {"batchItemFailures": []}
    assert worker.lambda_handler(sqs_event(again, receive_count=2), context) == {"batchItemFailures": []}
    # Then two images, each paid once, and the job complete
    job = repository.get_job(job_id)
    assert job.counts.succeeded == 2 and job.completed_at is not None
    assert emulator.calls == 2


# ------------------------------------------------------------------------------------------ Image Requested
def test_an_image_requested_event_with_num_images_makes_an_item_per_image(worker, repository, stack, emulator, events):
    from imagegen.fanout import event_job_id

    envelope = load_event("image_requested")
    envelope["id"] = str(uuid.uuid4())
    envelope["detail"] = {
        "requests": [{"prompt": "two gulls", "seed": 60, "num_images": 2, **SIZE}, {"prompt": "one gull", **SIZE}],
        "correlation_id": "article-9",
    }
    context = make_context("WorkerFunction", 120)
    assert worker.lambda_handler(sqs_event([json.dumps(envelope)]), context) == {"batchItemFailures": []}
    seen = events(4)
    generated = [event["detail"] for event in seen if event["detail-type"] == "Image Generated"]
    assert sorted((d["request_index"], d["image_index"]) for d in generated) == [(0, 0), (0, 1), (1, 0)]
    assert {d["correlation_id"] for d in generated} == {"article-9"}
    seeds = {(d["request_index"], d["image_index"]): d["image"]["parameters"]["seed"] for d in generated}
    assert (seeds[(0, 0)], seeds[(0, 1)]) == (60, 61)
    job = repository.get_job(event_job_id(envelope["id"]))
    assert job.total == 3
    assert emulator.calls == 3


# ------------------------------------------------------------------------------------------ chunks of a large job
def test_a_large_job_is_cut_into_chunks_by_items_and_giving_up_on_one_spares_the_next(
    invoke, worker, repository, side_queue, emulator
):
    from imagegen import wiring
    from imagegen.models import FanoutMessage

    # Given 24 requests of 4 images, one of 3, one of 4 and one of 1: 104 items, more than one chunk
    counts = [4] * 24 + [3, 4, 1]
    body = {"items": [{"prompt": f"big {i}", "seed": 1000 * i, "num_images": n, **SIZE} for i, n in enumerate(counts)]}
    event = load_event("post_job")
    event["body"] = json.dumps(body)
    response = invoke(event)
    assert response["statusCode"] == 202 and json.loads(response["body"])["total"] == 104
    job_id = json.loads(response["body"])["id"]
    context = make_context("WorkerFunction", 120)

    # When the worker splits it
    (control,) = side_queue.take()
    assert worker.lambda_handler(sqs_event([control]), context) == {"batchItemFailures": []}
    chunks = [FanoutMessage.model_validate_json(body) for body in side_queue.take()]
    # Then no chunk passes 100 items nor splits a request: 25 requests (99 items), then 2 requests (5 items)
    assert [(c.chunk.index, c.chunk.request_index, c.chunk.items) for c in chunks] == [(0, 0, 99), (99, 25, 5)]

    # When the second chunk runs, and the first fails on every receive (given up on its last)
    assert worker.lambda_handler(sqs_event([chunks[1].model_dump_json()]), context) == {"batchItemFailures": []}
    sent = [JobMessage.model_validate_json(body) for body in side_queue.take()]
    assert [(m.index, m.request_index, m.image_index, m.request.seed) for m in sent] == [
        (99, 25, 0, 25_000),
        (100, 25, 1, 25_001),
        (101, 25, 2, 25_002),
        (102, 25, 3, 25_003),
        (103, 26, 0, 26_000),
    ]
    assert wiring.fan_out().give_up(chunks[0], 5) == 99
    # Then the first chunk's 99 items failed (fanout_failed) and the second chunk's are left queued to run
    assert {repository.get_item(job_id, index).error.code for index in range(99)} == {"fanout_failed"}
    assert {repository.get_item(job_id, index).status for index in range(99, 104)} == {"queued"}
    assert worker.lambda_handler(sqs_event([m.model_dump_json(exclude_none=True) for m in sent]), context) == {
        "batchItemFailures": []
    }
    job = repository.get_job(job_id)
    assert (job.counts.failed, job.counts.succeeded, job.completed_at is not None) == (99, 5, True)
    assert emulator.calls == 5
