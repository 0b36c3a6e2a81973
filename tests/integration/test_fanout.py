"""Constant-time submit, the queue-side fan-out, uploads, results files and Image Requested events, under the local
stack (moto + emulator). The fan-out tests route the API's and the worker's messages to a queue of their own that
no poller reads, and feed the worker by hand: every message is seen, none is generated."""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from devstack.lambda_context import make_context
from imagegen.adapters import job_items
from imagegen.models import JobMessage
from support.events import load_event
from support.polling import eventually
from support.stack_fixtures import drain, settle_worker, sqs_event, wait_for_job


def job_event(body: dict[str, Any]) -> dict[str, Any]:
    event = load_event("post_job")
    event["body"] = json.dumps(body)
    return event


def upload_event() -> dict[str, Any]:
    event = load_event("post_job")
    event["body"] = None
    for key in ("resource", "path"):
        event[key] = "/v1/uploads"
    event["requestContext"]["resourcePath"] = "/v1/uploads"
    event["requestContext"]["path"] = "/prod/v1/uploads"
    return event


def items(count: int, prefix: str = "fan") -> list[dict[str, Any]]:
    return [{"prompt": f"{prefix} {i}", "seed": i, "width": 256, "height": 256} for i in range(count)]


@contextmanager
def aws_calls_of_this_thread(*clients: Any) -> Iterator[Counter[str]]:
    """AWS operations made by the calling thread (the worker's pollers share the clients on other threads)."""
    calls: Counter[str] = Counter()
    me = threading.get_ident()

    def count(model: Any, **_: Any) -> None:
        if threading.get_ident() == me:
            calls[model.name] += 1

    unique = {id(client): client for client in clients}.values()
    for client in unique:
        client.meta.events.register("before-call.*.*", count, unique_id=f"count-{id(client)}")
    try:
        yield calls
    finally:
        for client in unique:
            client.meta.events.unregister("before-call.*.*", unique_id=f"count-{id(client)}")


def body_of(response: dict[str, Any]) -> dict[str, Any]:
    return json.loads(response["body"])


# ------------------------------------------------------------------------------------------ constant-time submit
def test_submit_of_1000_items_makes_as_many_aws_calls_as_one_item_and_the_worker_fans_out(
    invoke, worker, repository, side_queue, stack, monkeypatch
):
    from imagegen import wiring

    clients = [wiring.job_objects()._client, repository._client]
    figures = {}
    job_ids = {}
    for size in (1, 1000):
        # When a job of `size` items is submitted
        sends_before = side_queue.sends
        with aws_calls_of_this_thread(*clients) as calls:
            response = invoke(job_event({"items": items(size)}))
        calls["SendMessageBatch"] = side_queue.sends - sends_before
        # Then it is accepted at once, with its total, every item counted queued
        assert response["statusCode"] == 202, response["body"]
        document = body_of(response)
        assert document["total"] == size and document["counts"]["queued"] == size
        figures[size] = dict(calls)
        job_ids[size] = document["id"]
    # and the API made the same few AWS calls for 1,000 items as for one: the items object, the job row with its
    # counter shards (one transaction: 1 shard for one item, 64 for 1,000), one message
    assert figures[1] == figures[1000] == {"PutObject": 1, "TransactWriteItems": 1, "SendMessageBatch": 1}, figures

    # Given the 1,000-item job before its fan-out: GET shows it at once, with its total, and no item rows yet
    job_id = job_ids[1000]
    shown = wiring.job_service().get(job_id)
    assert shown.total == 1000 and shown.counts.queued == 1000 and shown.items == [] and shown.status == "queued"

    # When the worker gets the control message, then the chunk messages it sent
    context = make_context("WorkerFunction", 120)
    control = [body for body in side_queue.take() if job_id in body]  # the 1-item job's is not followed further
    assert len(control) == 1 and json.loads(control[0]) == {"version": 1, "kind": "fanout", "job_id": job_id}
    assert worker.lambda_handler(sqs_event(control), context) == {"batchItemFailures": []}
    chunks = side_queue.take()
    assert len(chunks) == 10
    assert worker.lambda_handler(sqs_event(chunks), context) == {"batchItemFailures": []}

    # Then every item has its row (queued) and exactly one message, in index order with its seed
    messages = [JobMessage.model_validate_json(body) for body in side_queue.take()]
    assert sorted(message.index for message in messages) == list(range(1000))
    rows = list(repository.iter_items(job_id))
    assert [row.index for row in rows] == list(range(1000))
    assert {row.status for row in rows} == {"queued"}
    assert all(row.request.seed == row.index for row in rows)
    # And a whole-job read (the results file, a replayed fan-out) costs a query per thousand rows (DynamoDB may add
    # an empty page after a full one; moto does not); with pages of 300 it still brings every row, in order, in four
    with aws_calls_of_this_thread(repository._client) as calls:
        assert sum(1 for _ in repository.iter_items(job_id)) == 1000
    assert 1 <= calls["Query"] <= 2
    monkeypatch.setattr(job_items, "WHOLE_JOB_PAGE", 300)
    with aws_calls_of_this_thread(repository._client) as calls:
        assert [row.index for row in repository.iter_items(job_id)] == list(range(1000))
    assert calls["Query"] == 4
    # and so does the results file's read of the rows' projection, each row with its request's seed
    with aws_calls_of_this_thread(repository._client) as calls:
        results = list(repository.iter_results(job_id))
    assert [result.index for result in results] == list(range(1000)) and calls["Query"] == 4
    assert all(result.status == "queued" and result.seed == result.index for result in results)
    assert all(result.image_id is None and result.s3_uri is None and result.error is None for result in results)
    monkeypatch.undo()

    # When the first chunk comes again (at-least-once delivery) after item 0 started
    repository.claim(job_id, 0, lease_s=60)
    assert worker.lambda_handler(sqs_event(chunks[:1], receive_count=2), context) == {"batchItemFailures": []}
    # Then no row was overwritten (item 0 stays running) and only the items still queued were sent again
    again = [JobMessage.model_validate_json(body) for body in side_queue.take()]
    chunk = json.loads(chunks[0])["chunk"]
    expected = [i for i in range(chunk["index"], chunk["index"] + 100) if i != 0]
    assert sorted(message.index for message in again) == expected
    assert repository.get_item(job_id, 0).status == "running"
    assert sum(1 for _ in repository.iter_items(job_id)) == 1000


def test_a_chunk_sends_its_first_items_messages_before_writing_the_rest_s_rows(
    invoke, worker, repository, side_queue, monkeypatch
):
    from imagegen import fanout

    # Given a job of one chunk (100 items), submitted
    response = invoke(job_event({"items": items(100)}))
    assert response["statusCode"] == 202, response["body"]
    job_id = body_of(response)["id"]
    (chunk,) = [body for body in side_queue.take() if job_id in body]
    # When the worker runs the chunk, each write of item rows noting the messages already sent
    writes: list[tuple[list[int], int]] = []
    put_queued_items = type(repository).put_queued_items

    def noted(self: Any, job: Any, requests: Any, *args: Any, **kwargs: Any) -> list[int]:
        writes.append(([index for index, _ in requests], len(side_queue.bodies)))
        return put_queued_items(self, job, requests, *args, **kwargs)

    monkeypatch.setattr(type(repository), "put_queued_items", noted)
    assert worker.lambda_handler(sqs_event([chunk]), make_context("WorkerFunction", 120)) == {"batchItemFailures": []}
    # Then the first items' rows were written, their messages sent, and only then the rest's rows: workers start
    # while the chunk is still being written, each message after its own item's row
    first = fanout.FIRST_SENT
    assert writes == [(list(range(first)), 0), (list(range(first, 100)), first)]
    sent = [JobMessage.model_validate_json(body).index for body in side_queue.take()]
    assert sent[:first] == list(range(first)) and sorted(sent) == list(range(100))


def test_submit_answers_503_and_leaves_nothing_alive_when_the_queue_refuses(invoke, repository, monkeypatch):
    from imagegen import jobs, wiring

    job_id = f"job_{uuid.uuid4().hex}"
    monkeypatch.setattr(jobs, "new_job_id", lambda: job_id)

    class Refusing:
        def send(self, messages: Any) -> list[int]:
            return list(range(len(messages)))

    monkeypatch.setattr(wiring.job_service(), "_queue", Refusing())
    response = invoke(job_event({"items": items(3)}))
    assert response["statusCode"] == 503, response["body"]
    assert body_of(response)["error"]["code"] == "enqueue_failed"
    job = repository.get_job(job_id)
    assert job.completed_at is not None and job.remaining == 0 and job.status == "failed"
    assert job.counts.queued == 0 and job.counts.failed == 3


class TakenButTimedOut:
    """A jobs queue that takes every message and reports it not sent, as JobQueue reports a batch whose every
    attempt raised (the answers lost, the messages on the queue)."""

    def __init__(self) -> None:
        self.taken: list[str] = []

    def send(self, messages: Any) -> list[int]:
        from imagegen.adapters.queue import message_body

        self.taken.extend(message_body(message) for message in messages)
        return list(range(len(messages)))


def test_a_job_abandoned_after_a_send_that_timed_out_yet_arrived_fans_out_nothing(
    invoke, worker, repository, side_queue, emulator, monkeypatch
):
    """SendMessageBatch can time out on every attempt after SQS took the message: the API abandons the job (503, no
    id), and the message still comes. Its items must never get rows, messages or upstream calls."""
    from imagegen import jobs, wiring

    for size in (3, 150):  # one chunk (the API sends it), two (the API sends the control message: the split)
        job_id = f"job_{uuid.uuid4().hex}"
        monkeypatch.setattr(jobs, "new_job_id", lambda job_id=job_id: job_id)
        queue = TakenButTimedOut()
        monkeypatch.setattr(wiring.job_service(), "_queue", queue)
        response = invoke(job_event({"items": items(size)}))
        assert response["statusCode"] == 503, response["body"]
        monkeypatch.undo()
        calls = emulator.calls

        # When the message that did reach the queue is delivered, and delivered again
        context = make_context("WorkerFunction", 120)
        for receive_count in (1, 2):
            assert worker.lambda_handler(sqs_event(queue.taken, receive_count=receive_count), context) == {
                "batchItemFailures": []
            }
        # Then nothing was fanned out: no chunk, no item message, no item row, no upstream call
        assert side_queue.take() == []
        assert list(repository.iter_items(job_id)) == []
        assert emulator.calls == calls
        job = repository.get_job(job_id)
        assert job.status == "failed" and job.counts.failed == size and job.counts.succeeded == 0


# ------------------------------------------------------------------------------------------ uploads and results
def put_upload(api, lines: list[str]) -> str:
    created = api("POST", "/v1/uploads")
    assert created.status_code == 201, created.text
    upload = created.json()
    assert upload["id"].startswith("upl_") and upload["max_lines"] == 100_000 and upload["max_bytes"] > 0
    put = requests.put(upload["upload_url"], data="\n".join(lines).encode(), timeout=10)
    assert put.status_code == 200, put.text
    return str(upload["id"])


def test_upload_job_with_a_bad_line_3_fails_that_item_only_and_writes_the_results_file(api, emulator, events):
    # Given an uploaded file of five requests (and blank lines) whose third line is invalid, and an upstream that
    # refuses one generation for good (a 400: whichever good item draws it fails, with its request)
    good = [json.dumps({"prompt": f"upload {i}", "seed": i, "width": 256, "height": 256}) for i in range(5)]
    lines = [good[0], good[1], json.dumps({"prompt": "bad", "width": 500}), good[3], "", good[4], "  "]
    upload_id = put_upload(api, lines)
    emulator.inject("bad_request", count=1)
    # When a job names it
    submitted = api("POST", "/v1/jobs", json={"items_upload_id": upload_id, "metadata": {"batch": "b-1"}})
    # Then its total is the non-blank lines, and it ends with item 2 failed (line 3), one good item refused upstream,
    # the rest succeeded
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["total"] == 5 and submitted.json()["results"] is None
    job = wait_for_job(api, submitted.json()["id"])
    assert job["status"] == "partially_failed"
    statuses = [item["status"] for item in job["items"]]
    assert statuses[2] == "failed" and sorted(statuses) == ["failed", "failed", "succeeded", "succeeded", "succeeded"]
    failed = job["items"][2]
    assert failed["error"]["code"] == "invalid_request" and "line 3" in failed["error"]["message"]
    assert "width" in failed["error"]["message"] and failed["request"] is None
    (refused,) = [item for item in job["items"] if item["status"] == "failed" and item["index"] != 2]
    assert refused["request"]["seed"] is not None and refused["error"]["code"] != "invalid_request"
    assert emulator.calls == 4

    # And the results file (written right after completed_at, before "Job Completed") lists every item in index
    # order, as the job shows them
    results = eventually(
        lambda: api("GET", f"/v1/jobs/{submitted.json()['id']}").json()["results"], 10, "the job's results file", 0.2
    )
    assert results["items"] == 5 and results["s3_uri"].endswith(f"jobs/{job['id']}/results.jsonl")
    rows = [json.loads(line) for line in requests.get(results["url"], timeout=10).text.splitlines()]
    assert [row["index"] for row in rows] == [0, 1, 2, 3, 4]
    for row, item in zip(rows, job["items"], strict=True):
        assert row["status"] == item["status"]
        if item["status"] == "succeeded":
            image = item["image"]
            assert row["image_id"] == image["id"] and row["sha256"] == image["image"]["sha256"]
            assert row["s3_uri"] == image["image"]["s3_uri"] and row["bytes"] == image["image"]["bytes"]
            assert (row["width"], row["height"]) == (256, 256) and row["seed"] == item["request"]["seed"]
            assert row["error"] is None
        else:  # the bad line has no request, so no seed; the refused item has its request's
            assert row["image_id"] is None and row["s3_uri"] is None and row["bytes"] is None
            assert row["seed"] == (item["request"]["seed"] if item["request"] else None)
            assert row["error"] == item["error"] and row["error"] is not None
    # and "Job Completed" carried it
    seen = events(5)  # 3 generated, 1 refused ("Image Failed"), "Job Completed"
    completed = [event for event in seen if event["detail-type"] == "Job Completed"]
    assert completed[0]["detail"]["job"]["results"]["items"] == 5


def test_upload_job_of_3_chunks_completes_with_its_results_file(api, emulator, monkeypatch):
    # Given chunks of 10 items and an uploaded file of 30 requests (3 chunks of the fan-out): the CI-sized run of
    # benchmarks/large_upload_job.py (10,000 lines through make run's program)
    from imagegen import jobs, wiring

    fan_out = wiring.fan_out()
    monkeypatch.setattr(jobs, "CHUNK_ITEMS", 10)
    monkeypatch.setattr(fan_out, "_chunk_items", 10)
    chunks: list[tuple[int, int]] = []
    run_chunk = fan_out.run_chunk

    def recorded_run_chunk(job_id: str, chunk: Any) -> None:
        chunks.append((chunk.offset, chunk.end))
        run_chunk(job_id, chunk)

    monkeypatch.setattr(fan_out, "run_chunk", recorded_run_chunk)
    lines = [json.dumps({"prompt": f"upload {i}", "seed": i, "width": 256, "height": 256}) for i in range(30)]
    upload_id = put_upload(api, lines)
    # When a job names it and the worker fans it out and generates it
    submitted = api("POST", "/v1/jobs", json={"items_upload_id": upload_id})
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["total"] == 30
    job = wait_for_job(api, submitted.json()["id"], timeout_s=120)
    # Then every item succeeded, generated once, and the results file has one line per item, in index order
    assert job["status"] == "succeeded" and job["counts"]["succeeded"] == 30, job["counts"]
    assert emulator.calls == 30
    results = eventually(
        lambda: api("GET", f"/v1/jobs/{job['id']}?limit=1").json()["results"], 10, "the job's results file", 0.2
    )
    assert results["items"] == 30
    rows = [json.loads(line) for line in requests.get(results["url"], timeout=10).text.splitlines()]
    assert [row["index"] for row in rows] == list(range(30))
    assert Counter(row["status"] for row in rows) == {"succeeded": 30}
    # and the fan-out ran it as 3 chunks (byte ranges of the file, one after another)
    ranges = sorted(set(chunks))
    assert len(ranges) == 3 and ranges[0][0] == 0, ranges
    assert all(this[1] == following[0] for this, following in itertools.pairwise(ranges)), ranges


def test_upload_refusals_name_items_upload_id(api, emulator, monkeypatch):
    from imagegen import jobs

    missing = api("POST", "/v1/jobs", json={"items_upload_id": f"upl_{'0' * 32}"})
    assert missing.status_code == 422 and missing.json()["error"]["details"][0]["field"] == "items_upload_id"
    both = api("POST", "/v1/jobs", json={"items": items(1), "items_upload_id": f"upl_{'0' * 32}"})
    assert both.status_code == 422, both.text
    neither = api("POST", "/v1/jobs", json={"metadata": {"a": 1}})
    assert neither.status_code == 422, neither.text
    empty = api("POST", "/v1/jobs", json={"items_upload_id": put_upload(api, ["", " "])})
    assert empty.status_code == 422 and "no items" in empty.json()["error"]["message"]
    monkeypatch.setattr(jobs, "MAX_UPLOAD_BYTES", 10)
    too_large = api("POST", "/v1/jobs", json={"items_upload_id": put_upload(api, [json.dumps(items(1)[0])])})
    assert too_large.status_code == 413 and too_large.json()["error"]["details"][0]["field"] == "items_upload_id"
    assert emulator.calls == 0


# ------------------------------------------------------------------------------------------ Image Requested
def image_requested(event_id: str | None = None, **detail: Any) -> dict[str, Any]:
    event = load_event("image_requested")
    event["id"] = event_id or str(uuid.uuid4())
    event["detail"].update(detail)
    return event


def test_an_image_requested_envelope_becomes_one_job_whose_events_carry_the_correlation_id(
    worker, repository, stack, emulator, events
):
    from imagegen.fanout import event_job_id

    # Given an EventBridge envelope as the rule delivers it to the jobs queue
    envelope = image_requested(correlation_id=f"article-{uuid.uuid4().hex[:8]}")
    body = json.dumps(envelope)
    # When the worker gets it, and again once its job has completed (a redelivered event). Redelivered while the
    # items run, its duplicates would find them running and wait out their lease on the session's queue; that
    # case has its own test on a queue of its own (test_queue_faults: the same message delivered twice at once)
    context = make_context("WorkerFunction", 120)
    assert worker.lambda_handler(sqs_event([body]), context) == {"batchItemFailures": []}
    seen = events(3)
    assert worker.lambda_handler(sqs_event([body], receive_count=2), context) == {"batchItemFailures": []}
    settle_worker(stack)
    # Then one job (its id from the event id) generates both requests once, and every outcome event carries the
    # correlation id
    job_id = event_job_id(envelope["id"])
    assert sorted(event["detail-type"] for event in seen) == ["Image Generated", "Image Generated", "Job Completed"]
    assert {event["detail"]["correlation_id"] for event in seen} == {envelope["detail"]["correlation_id"]}
    completed = next(event for event in seen if event["detail-type"] == "Job Completed")["detail"]["job"]
    assert completed["id"] == job_id and completed["status"] == "succeeded" and completed["results"]["items"] == 2
    assert emulator.calls == 2
    assert repository.get_job(job_id).total == 2


def test_a_malformed_image_requested_event_goes_to_the_dlq_with_the_reason(worker, stack, emulator):
    sqs = stack.aws.client("sqs")
    drain(sqs, stack.seeded.jobs_dlq_url)
    envelope = image_requested(requests=[{"prompt": "x", "width": 500}])
    body = json.dumps(envelope)
    assert worker.lambda_handler(sqs_event([body]), make_context("WorkerFunction", 120)) == {"batchItemFailures": []}
    moved = sqs.receive_message(
        QueueUrl=stack.seeded.jobs_dlq_url, MessageAttributeNames=["All"], WaitTimeSeconds=1
    ).get("Messages", [])
    assert [message["Body"] for message in moved] == [body]
    sqs.delete_message(
        QueueUrl=stack.seeded.jobs_dlq_url, ReceiptHandle=moved[0]["ReceiptHandle"]
    )  # not the next test's
    reason = moved[0]["MessageAttributes"]["reason"]["StringValue"]
    assert "Image Requested" in reason and "width" in reason
    assert emulator.calls == 0


def test_the_local_bus_routes_image_requested_to_the_jobs_queue(stack, emulator, repository, events):
    from imagegen.fanout import event_job_id

    correlation = f"bus-{uuid.uuid4().hex[:8]}"
    detail = {"request": {"prompt": "through the bus", "width": 256, "height": 256}, "correlation_id": correlation}
    answer = stack.aws.client("events").put_events(
        Entries=[
            {
                "Source": "com.example.content-workflow",
                "DetailType": "Image Requested",
                "Detail": json.dumps(detail),
                "EventBusName": stack.resources.event_bus,
            }
        ]
    )
    assert answer["FailedEntryCount"] == 0
    seen = events(2)
    assert sorted(event["detail-type"] for event in seen) == ["Image Generated", "Job Completed"]
    generated = [event for event in seen if event["detail-type"] == "Image Generated"]
    assert [event["detail"]["correlation_id"] for event in generated] == [correlation]
    job_id = generated[0]["detail"]["job_id"]
    assert job_id == event_job_id(answer["Entries"][0]["EventId"])
    eventually(lambda: repository.get_job(job_id).completed_at, 10, f"job {job_id} to be completed", 0.2)
