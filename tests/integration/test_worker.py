"""The worker handler fed with SQS events (the shape in events/sqs_receive_message.json), under moto + emulator:
redelivery, crashes mid-batch, malformed messages, cancellation."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError
from devstack.lambda_context import make_context
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imagegen.entities import RESULTS_AWAITED_S
from imagegen.service import item_image_id
from support.stack_fixtures import age_completion, expire_lease, make_job, messages, s3_keys, sqs_event


def test_worker_processes_a_batch_and_a_redelivery_calls_nobody_twice(worker, repository, stack, emulator):
    # Given a job of four items and their messages
    job_id = make_job(repository, [f"p{i}" for i in range(4)])
    bodies = messages(job_id, 4)

    # When the worker gets the batch, then (at-least-once delivery) the same batch again
    first = worker.lambda_handler(sqs_event(bodies), make_context("WorkerFunction", 120))
    second = worker.lambda_handler(sqs_event(bodies, receive_count=2), make_context("WorkerFunction", 120))

    # Then every item succeeded once: four upstream calls, one S3 object per image, nothing reported failed
    assert first == {"batchItemFailures": []} and second == {"batchItemFailures": []}
    assert emulator.calls == 4
    job = repository.get_job(job_id)
    assert job.counts.succeeded == 4 and job.remaining == 0 and job.completed_at is not None
    for index in range(4):
        assert len(s3_keys(stack, job_id, index)) == 1


def test_worker_killed_mid_batch_ends_with_every_item_terminal_and_no_duplicates(
    worker, repository, stack, emulator, monkeypatch
):
    # Given a batch of four where the invocation dies (the runtime is killed) while items 2 and 3 are running
    job_id = make_job(repository, [f"p{i}" for i in range(4)])
    bodies = messages(job_id, 4)
    service = worker.item_processor()._images
    real = service.generate_record

    class Killed(BaseException):
        """Not an Exception: nothing in the handler may catch it, like a runtime kill."""

    def dies_on_items_2_and_3(request, deadline, *, image_id=None, **kwargs):
        if image_id in {item_image_id(job_id, 2), item_image_id(job_id, 3)}:
            raise Killed()
        return real(request, deadline, image_id=image_id, **kwargs)

    monkeypatch.setattr(service, "generate_record", dies_on_items_2_and_3)
    with pytest.raises(Killed):
        worker.lambda_handler(sqs_event(bodies), make_context("WorkerFunction", 120))
    assert {repository.get_item(job_id, i).status for i in (2, 3)} == {"running"}

    # When the messages come back after their visibility timeout (the whole batch: the invocation failed), by
    # which time the dead delivery's lease on items 2 and 3 has expired (the visibility timeout is longer)
    monkeypatch.setattr(service, "generate_record", real)
    for index in (2, 3):
        expire_lease(repository, job_id, index)
    answer = worker.lambda_handler(sqs_event(bodies, receive_count=2), make_context("WorkerFunction", 120))

    # Then every item is succeeded, the two finished ones were not generated again, one object per image
    assert answer == {"batchItemFailures": []}
    assert [repository.get_item(job_id, i).status for i in range(4)] == ["succeeded"] * 4
    assert emulator.calls == 4
    assert all(len(s3_keys(stack, job_id, i)) == 1 for i in range(4))
    assert repository.get_job(job_id).counts.succeeded == 4


def test_worker_a_duplicate_delivery_waits_for_the_live_one_instead_of_paying_twice(
    worker, repository, stack, emulator, monkeypatch
):
    # Given a delivery that has claimed its item and is still generating (its lease is live)
    job_id = make_job(repository, ["slow"])
    bodies = messages(job_id, 1)
    service = worker.item_processor()._images
    real = service.generate_record
    duplicate: dict[str, Any] = {}

    def generate_while_a_duplicate_arrives(request, deadline, **kwargs):
        # When the same message is delivered again meanwhile (standard SQS is at-least-once)
        duplicate["answer"] = worker.lambda_handler(sqs_event(bodies, receive_count=2), make_context("W", 120))
        return real(request, deadline, **kwargs)

    monkeypatch.setattr(service, "generate_record", generate_while_a_duplicate_arrives)
    monkeypatch.setattr(worker.job_queue(), "delay", lambda receipt, seconds: duplicate.setdefault("delay", seconds))
    first = worker.lambda_handler(sqs_event(bodies), make_context("WorkerFunction", 120))

    # Then the duplicate is put back with a delay covering the lease, and the upstream was called once
    assert first == {"batchItemFailures": []}
    assert len(duplicate["answer"]["batchItemFailures"]) == 1
    assert duplicate["delay"] > 100
    assert emulator.calls == 1
    assert repository.get_item(job_id, 0).status == "succeeded"


@pytest.mark.parametrize("timeout_s", [60, 120, 900])
def test_worker_lease_follows_the_function_timeout(worker, repository, emulator, monkeypatch, timeout_s):
    # Given a worker whose function Timeout is raised or lowered in the template (the context reports it)
    job_id = make_job(repository, ["leased"])
    service = worker.item_processor()._images
    real = service.generate_record
    seen: dict[str, float] = {}

    def generate_and_read_the_lease(request, deadline, **kwargs):
        seen["lease_left_s"] = repository.get_item(job_id, 0).lease_until - time.time()
        return real(request, deadline, **kwargs)

    monkeypatch.setattr(service, "generate_record", generate_and_read_the_lease)
    # When the item is claimed
    answer = worker.lambda_handler(sqs_event(messages(job_id, 1)), make_context("WorkerFunction", timeout_s))
    # Then its lease outlives the invocation (a live delivery always holds its item), by a bounded margin
    assert answer == {"batchItemFailures": []}
    assert timeout_s < seen["lease_left_s"] <= timeout_s + 60


def test_worker_acknowledges_a_permanent_failure_and_records_it(worker, repository, emulator):
    job_id = make_job(repository, ["refused"])
    emulator.inject("bad_request", message="Invalid prompt parameter")
    answer = worker.lambda_handler(sqs_event(messages(job_id, 1)), make_context("WorkerFunction", 120))
    assert answer == {"batchItemFailures": []}
    item = repository.get_item(job_id, 0)
    assert item.status == "failed"
    assert item.error.code == "upstream_rejected" and "Invalid prompt parameter" in item.error.message
    job = repository.get_job(job_id)
    assert job.status == "failed" and job.completed_at is not None


def test_worker_gives_up_on_the_last_receive_instead_of_leaving_the_item_running(worker, repository, emulator):
    # Given an upstream that is down, and the message on its last receive before the DLQ (maxReceiveCount 5)
    job_id = make_job(repository, ["down"])
    emulator.inject("server_error", count=None)
    answer = worker.lambda_handler(sqs_event(messages(job_id, 1), receive_count=5), make_context("WorkerFunction", 120))
    # Then the item is failed for good (no item stays running forever) and the message acknowledged
    assert answer == {"batchItemFailures": []}
    item = repository.get_item(job_id, 0)
    assert item.status == "failed" and item.error.code == "upstream_unavailable"
    assert "gave up after 5 attempts" in item.error.message


def test_worker_never_sends_a_canceled_job_upstream(worker, repository, emulator):
    job_id = make_job(repository, ["a", "b"])
    repository.cancel(job_id)
    answer = worker.lambda_handler(sqs_event(messages(job_id, 2)), make_context("WorkerFunction", 120))
    assert answer == {"batchItemFailures": []}
    assert emulator.calls == 0
    job = repository.get_job(job_id)
    assert job.counts.canceled == 2 and job.status == "canceled"


def test_worker_records_an_invalid_message_that_names_its_item(worker, repository, emulator):
    # Given a message for a real item whose request breaks the schema (unknown field)
    job_id = make_job(repository, ["x"])
    body = json.dumps({"request": {"prompt": "x", "stepz": 3}, "job_id": job_id, "index": 0})
    good_job = make_job(repository, ["y"])
    # When it arrives in a batch with a good message
    answer = worker.lambda_handler(sqs_event([body, *messages(good_job, 1)]), make_context("WorkerFunction", 120))
    # Then it is acknowledged, recorded as failed, and the good one still succeeds
    assert answer == {"batchItemFailures": []}
    item = repository.get_item(job_id, 0)
    assert item.status == "failed" and item.error.code == "invalid_message"
    assert "stepz" in item.error.message
    assert repository.get_item(good_job, 0).status == "succeeded"


def test_worker_moves_unreadable_messages_to_the_dlq(worker, stack, emulator):
    sqs = stack.aws.client("sqs")
    dlq = stack.seeded.jobs_dlq_url
    while leftover := sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10).get("Messages", []):
        for message in leftover:
            sqs.delete_message(QueueUrl=dlq, ReceiptHandle=message["ReceiptHandle"])
    answer = worker.lambda_handler(sqs_event(["not json at all"]), make_context("WorkerFunction", 120))
    assert answer == {"batchItemFailures": []}
    moved = sqs.receive_message(QueueUrl=dlq, MessageAttributeNames=["All"], WaitTimeSeconds=1).get("Messages", [])
    assert [message["Body"] for message in moved] == ["not json at all"]
    assert "job message schema" in moved[0]["MessageAttributes"]["reason"]["StringValue"]
    assert emulator.calls == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=200).map(lambda raw: raw.decode("utf-8", errors="replace")))
def test_worker_arbitrary_bodies_never_crash_nor_block_their_batch(worker, repository, emulator, garbage):
    # Given a batch with an arbitrary body next to a good message
    job_id = make_job(repository, ["good"])
    event = sqs_event([garbage, *messages(job_id, 1)])
    # When the worker runs it
    answer = worker.lambda_handler(event, make_context("WorkerFunction", 120))
    # Then nothing is left to retry for the garbage (recorded or dead-lettered) and the good item succeeded
    assert answer == {"batchItemFailures": []}
    assert repository.get_item(job_id, 0).status == "succeeded"


def test_worker_an_item_deferred_by_a_retry_waits_queued_with_its_retry_at_then_is_claimed_again(
    worker, repository, emulator, api, monkeypatch
):
    # Given an upstream rate limited for an hour, and a job of two items whose first item is being retried
    job_id = make_job(repository, ["deferred", "other"])
    delays: list[int] = []
    monkeypatch.setattr(worker.job_queue(), "delay", lambda receipt, seconds: delays.append(seconds))
    emulator.inject("rate_limit", count=1, retry_after=3600)
    bodies = messages(job_id, 2)
    # When its message is delivered and the upstream answers 429 with Retry-After: 3600
    answer = worker.lambda_handler(sqs_event(bodies[:1]), make_context("WorkerFunction", 120))
    # Then the message comes back in an hour, and meanwhile the item is queued (not running) with its retry_at,
    # its lease released, counted as waiting; the job (nothing started, nothing running) reads queued
    assert len(answer["batchItemFailures"]) == 1 and delays and delays[0] >= 3600
    item = repository.get_item(job_id, 0)
    assert item.status == "queued" and item.lease_until == 0 and item.retry_at is not None
    document = api("GET", f"/v1/jobs/{job_id}").json()
    assert document["status"] == "queued"
    assert document["counts"] == {"queued": 2, "running": 0, "succeeded": 0, "failed": 0, "canceled": 0, "waiting": 1}
    shown = document["items"][0]
    assert shown["status"] == "queued" and shown["retry_at"] is not None
    waited = datetime.fromisoformat(shown["retry_at"].replace("Z", "+00:00")) - datetime.now(UTC)
    assert 3500 < waited.total_seconds() <= 3600
    assert document["items"][1]["retry_at"] is None
    # When its message comes back (the upstream has recovered), with the other item's first delivery
    answer = worker.lambda_handler(sqs_event(bodies, receive_count=2), make_context("WorkerFunction", 120))
    # Then it is claimed from queued again and succeeds; nothing is waiting, the job completed
    assert answer == {"batchItemFailures": []}
    item = repository.get_item(job_id, 0)
    assert item.status == "succeeded" and item.retry_at is None and item.attempts == 2
    job = repository.get_job(job_id)
    assert job.counts.waiting == 0 and job.counts.succeeded == 2 and job.status == "succeeded"
    assert emulator.calls == 3


def test_worker_canceling_a_job_with_a_waiting_item_keeps_the_counts_exact(worker, repository, emulator, monkeypatch):
    # Given a job whose only item waits out a retry
    job_id = make_job(repository, ["deferred"])
    monkeypatch.setattr(worker.job_queue(), "delay", lambda receipt, seconds: None)
    emulator.inject("unavailable", count=1, retry_after=600)
    worker.lambda_handler(sqs_event(messages(job_id, 1)), make_context("WorkerFunction", 120))
    assert repository.get_job(job_id).counts.waiting == 1
    # When the job is canceled and its queued items settled (what the worker does with the cancel message)
    assert repository.cancel(job_id)
    assert repository.cancel_queued_page(job_id, None) is None
    # Then the waiting item is canceled with the counters (waiting back to 0), and the job can complete
    job = repository.get_job(job_id)
    assert (job.counts.queued, job.counts.waiting, job.counts.canceled, job.remaining) == (0, 0, 1, 0)
    assert repository.get_item(job_id, 0).status == "canceled"


def results_write_fails_once(worker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's next write of a results file fails (S3 down past botocore's retries); the writes after succeed."""
    objects = worker.item_processor()._results._objects
    real = objects.put_results

    def fails_once(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(objects, "put_results", real)
        raise ClientError({"Error": {"Code": "InternalError", "Message": "S3 is down"}}, "PutObject")

    monkeypatch.setattr(objects, "put_results", fails_once)


def test_worker_a_completion_its_delivery_did_not_announce_is_announced_by_the_redelivery(
    worker, repository, emulator, api, events, monkeypatch
):
    # Given a one-item job whose completion cannot write its results file once (S3 failing after botocore's retries)
    job_id = make_job(repository, ["announced late"])
    bodies = messages(job_id, 1)
    results_write_fails_once(worker, monkeypatch)

    # When its message is delivered: the item is generated and settled, completing the job, but nothing announced
    first = worker.lambda_handler(sqs_event(bodies), make_context("WorkerFunction", 120))
    assert len(first["batchItemFailures"]) == 1  # the queue delivers it again
    job = repository.get_job(job_id)
    assert job.completed_at is not None and not job.results_recorded

    # Then a reader does not see a finished job without its results file
    document = api("GET", f"/v1/jobs/{job_id}").json()
    assert (document["status"], document["completed_at"], document["results"]) == ("running", None, None)
    assert document["counts"]["succeeded"] == 1

    # When a duplicate comes at once (a first receive), and the message comes back soon after (a redelivery)
    duplicate = worker.lambda_handler(sqs_event(bodies), make_context("WorkerFunction", 120))
    soon = worker.lambda_handler(sqs_event(bodies, receive_count=2), make_context("WorkerFunction", 120))
    # Then neither announces while the completer may still be running: the duplicate is done with, the redelivery
    # (perhaps the completer's own message) is put back until the completer has surely ended
    assert duplicate == {"batchItemFailures": []}
    assert len(soon["batchItemFailures"]) == 1
    assert not repository.get_job(job_id).results_recorded

    # When no delivery announced it for longer than a reader waits for the file (RESULTS_AWAITED_S)
    age_completion(repository, job_id, RESULTS_AWAITED_S + 1)
    # Then the job reads finished, without a results file: a lost announcement never leaves it looking alive
    document = api("GET", f"/v1/jobs/{job_id}").json()
    assert (document["status"], document["results"]) == ("succeeded", None) and document["completed_at"]

    # When the message comes back (after Lambda's longest timeout), and once more (at-least-once)
    third = worker.lambda_handler(sqs_event(bodies, receive_count=3), make_context("WorkerFunction", 120))
    fourth = worker.lambda_handler(sqs_event(bodies, receive_count=4), make_context("WorkerFunction", 120))

    # Then the third delivery announced it (results file, Job Completed) without another paid call; the fourth did not
    assert third == fourth == {"batchItemFailures": []}
    assert emulator.calls == 1
    document = api("GET", f"/v1/jobs/{job_id}").json()
    assert document["status"] == "succeeded" and document["completed_at"] is not None
    assert document["results"]["items"] == 1
    published = events(2)
    assert sorted(event["detail-type"] for event in published) == ["Image Generated", "Job Completed"]
    [completed] = [event for event in published if event["detail-type"] == "Job Completed"]
    assert completed["detail"]["job"]["id"] == job_id and completed["detail"]["job"]["results"]["items"] == 1
    with pytest.raises(AssertionError, match="1 events on the bus, 0 came"):
        events(1, timeout_s=2)  # no second Job Completed


def test_worker_a_cancel_order_redelivered_announces_the_completion_its_first_delivery_did_not(
    worker, repository, emulator, api, events, monkeypatch
):
    from imagegen.adapters.queue import message_body
    from imagegen.models import CancelOrder, ControlMessage

    # Given a canceled job of two queued items, whose completion cannot write its results file once
    job_id = make_job(repository, ["never", "started"])
    assert repository.cancel(job_id)
    order = message_body(ControlMessage(cancel=CancelOrder(job_id=job_id)))
    results_write_fails_once(worker, monkeypatch)

    # When the cancel order is delivered: its items are canceled and the job completed, but nothing announced
    first = worker.lambda_handler(sqs_event([order]), make_context("WorkerFunction", 120))
    assert len(first["batchItemFailures"]) == 1
    assert not repository.get_job(job_id).results_recorded
    assert api("GET", f"/v1/jobs/{job_id}").json()["completed_at"] is None

    # When the queue delivers the order again soon: it is put back while its first delivery may still be running
    soon = worker.lambda_handler(sqs_event([order], receive_count=2), make_context("WorkerFunction", 120))
    assert len(soon["batchItemFailures"]) == 1
    # When it comes back after that (Lambda's longest timeout)
    age_completion(repository, job_id, 901)
    later = worker.lambda_handler(sqs_event([order], receive_count=3), make_context("WorkerFunction", 120))

    # Then that delivery announces the completion once: the results file and one Job Completed; nothing was paid
    assert later == {"batchItemFailures": []}
    document = api("GET", f"/v1/jobs/{job_id}").json()
    assert document["status"] == "canceled" and document["completed_at"] is not None
    assert document["results"]["items"] == 2 and document["counts"]["canceled"] == 2
    [completed] = events(1)
    assert completed["detail-type"] == "Job Completed" and completed["detail"]["job"]["id"] == job_id
    assert emulator.calls == 0


def test_worker_a_batch_redelivered_after_a_failed_announcement_announces_it_once(
    worker, repository, emulator, api, events, monkeypatch
):
    # Given a three-item job delivered in one batch whose completion cannot write its results file once
    job_id = make_job(repository, ["one", "two", "three"])
    bodies = messages(job_id, 3)
    results_write_fails_once(worker, monkeypatch)
    first = worker.lambda_handler(sqs_event(bodies), make_context("WorkerFunction", 120))
    assert len(first["batchItemFailures"]) == 1  # the item whose settle completed the job
    assert repository.get_job(job_id).completed_at is not None

    # When the whole batch comes back long after (e.g. the invocation had timed out), every message at once
    age_completion(repository, job_id, 901)
    again = worker.lambda_handler(sqs_event(bodies, receive_count=2), make_context("WorkerFunction", 120))

    # Then exactly one of them announced: one results file, one Job Completed; three paid calls in all
    assert again == {"batchItemFailures": []}
    assert api("GET", f"/v1/jobs/{job_id}").json()["results"]["items"] == 3
    published = events(4)
    assert sorted(event["detail-type"] for event in published) == ["Image Generated"] * 3 + ["Job Completed"]
    with pytest.raises(AssertionError, match="1 events on the bus, 0 came"):
        events(1, timeout_s=2)
    assert emulator.calls == 3


def test_between_tests_a_message_left_put_back_is_dropped_not_waited_for(stack):
    from support.stack_fixtures import settle_worker

    # Given a message an earlier test left hidden on the session's queue for a long time (as a duplicate delivery
    # that found its item running is put back for the item's lease), and no invocation running
    sqs = stack.aws.client("sqs")
    url = stack.seeded.jobs_queue_url
    stack.pollers[0].stop()
    try:
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"left": "by an earlier test"}))
        received = sqs.receive_message(QueueUrl=url, VisibilityTimeout=900, WaitTimeSeconds=1).get("Messages", [])
        assert len(received) == 1

        # When a test only settles the worker (as the moderation fixture does mid-test), the message stays
        settle_worker(stack, timeout_s=0.5)
        hidden = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
        assert hidden["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"

        # Then between tests (the emulator fixture) it is purged: no later test waits out its 15 minutes
        settle_worker(stack, drop_put_back=True)
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
        assert attributes["ApproximateNumberOfMessages"] == "0"
    finally:
        stack.pollers[0].start()
