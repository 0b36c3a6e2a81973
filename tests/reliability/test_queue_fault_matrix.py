"""Queue faults: duplicate concurrent delivery, a crash or a timeout mid-batch, poison messages, a permanent
failure in a batch of ten, and the DLQ path.

Each case drives the real worker handler the way the SQS event source mapping does (``Redelivery``): a record
reported failed comes back with its receive count raised, and after ``maxReceiveCount`` (5) receives it moves to
the dead-letter queue. Visibility timeouts are not waited for: the driver redelivers at once, and expires the
leases a dead invocation left behind (their lease is shorter than the queue's visibility timeout).

Every case ends with the same three invariants (``assert_invariants``):
1. every submitted item is in exactly one terminal state and the job's counts add up to its total;
2. upstream generation calls <= items + the retries the case provoked;
3. exactly one S3 object per succeeded item, none for an item that failed before its image was fetched.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from devstack.lambda_context import make_context
from imagegen.service import item_image_id
from support.stack_fixtures import expire_lease, make_job, messages, s3_keys, sqs_event

TERMINAL = {"succeeded", "failed", "canceled"}
MAX_RECEIVES = 5  # the template's maxReceiveCount


class Killed(BaseException):
    """The runtime killing the invocation (timeout, out of memory): nothing in the handler can catch it."""


@dataclass
class Redelivery:
    """The event source mapping, without the waiting: failed records come back, the 5th failure goes to the DLQ."""

    worker: Any
    repository: Any
    job_id: str | None = None
    invocations: int = 0
    dead_lettered: list[str] = field(default_factory=list)
    delays: list[int] = field(default_factory=list)

    def invoke(self, bodies_and_counts: list[tuple[str, int]], timeout_s: float = 120) -> set[str]:
        """One invocation; returns the message ids reported failed."""
        records = []
        for body, count in bodies_and_counts:
            records += sqs_event([body], receive_count=count)["Records"]
        self.invocations += 1
        answer = self.worker.lambda_handler({"Records": records}, make_context("WorkerFunction", timeout_s))
        return {failure["itemIdentifier"] for failure in answer["batchItemFailures"]}

    def until_settled(self, bodies: list[str], *, first_timeout_s: float = 120) -> None:
        """Deliver ``bodies`` until every one is acknowledged or dead-lettered. An invocation that dies
        (``Killed``) fails its whole batch: every record comes back with its receive count raised."""
        pending = dict.fromkeys(bodies, 1)
        ids = {sqs_event([body])["Records"][0]["messageId"]: body for body in bodies}
        timeout_s = first_timeout_s
        for _ in range(4 * MAX_RECEIVES):
            if not pending:
                return
            batch = list(pending.items())
            try:
                failed = {ids[message_id] for message_id in self.invoke(batch, timeout_s)}
            except Killed:
                failed = set(pending)
                self._expire_leases()  # the dead invocation's leases run out before the messages reappear
            timeout_s = 120
            for body in list(pending):
                if body not in failed:
                    del pending[body]
                elif pending[body] >= MAX_RECEIVES:
                    self.dead_lettered.append(body)  # SQS redrive: maxReceiveCount reached
                    del pending[body]
                else:
                    pending[body] += 1
        raise AssertionError(f"still pending after {4 * MAX_RECEIVES} invocations: {len(pending)}")

    def _expire_leases(self) -> None:
        if self.job_id is None:
            return
        job = self.repository.get_job(self.job_id)
        for index in range(job.total):
            if self.repository.get_item(self.job_id, index).status == "running":
                expire_lease(self.repository, self.job_id, index)


@pytest.fixture
def redelivery(worker, repository, monkeypatch) -> Redelivery:
    driver = Redelivery(worker, repository)
    # The records' receipt handles are made up: record the visibility change instead of sending it to SQS.
    monkeypatch.setattr(worker.job_queue(), "delay", lambda receipt, seconds: driver.delays.append(seconds))
    return driver


def assert_invariants(stack, repository, emulator, job_id: str, retries: int) -> dict[str, int]:
    job = repository.get_job(job_id)
    items = [repository.get_item(job_id, index) for index in range(job.total)]
    statuses = [item.status for item in items]
    # 1. exactly one terminal state each, and the job agrees
    assert all(status in TERMINAL for status in statuses), statuses
    counts = job.counts
    assert counts.queued == counts.running == 0
    assert counts.succeeded + counts.failed + counts.canceled == job.total
    assert counts.succeeded == statuses.count("succeeded") and counts.failed == statuses.count("failed")
    assert job.remaining == 0 and job.completed_at is not None
    # 2. nobody paid twice beyond the provoked retries
    assert emulator.calls <= job.total + retries, f"{emulator.calls} upstream calls for {job.total} items"
    # 3. one object per succeeded item
    objects = {index: len(s3_keys(stack, job_id, index)) for index in range(job.total)}
    for index, item in enumerate(items):
        assert objects[index] == (1 if item.status == "succeeded" else 0), (index, item.status, objects[index])
    return {
        "items": job.total,
        "succeeded": counts.succeeded,
        "failed": counts.failed,
        "upstream_calls": emulator.calls,
        "s3_objects": sum(objects.values()),
    }


def patch_generation(monkeypatch, worker, job_id: str, behave: Callable[[int, Callable[[], Any]], Any]) -> None:
    """Wrap the worker's generation: ``behave(index, generate)`` decides what happens to each item."""
    service = worker.item_processor()._images
    real = service.generate_record
    index_of = {item_image_id(job_id, index): index for index in range(100)}

    def generate_record(request, deadline, *, image_id=None, **kwargs):
        index = index_of.get(image_id)
        call = lambda: real(request, deadline, image_id=image_id, **kwargs)  # noqa: E731
        return call() if index is None else behave(index, call)

    monkeypatch.setattr(service, "generate_record", generate_record)


# ------------------------------------------------------------------------------------------------ the matrix
def test_the_same_message_delivered_twice_concurrently_is_generated_once(
    stack, worker, repository, emulator, redelivery, reliability
):
    # Given one item whose generation takes a while, and its message delivered twice at the same moment
    job_id = make_job(repository, ["twice"])
    redelivery.job_id = job_id
    body = messages(job_id, 1)[0]
    emulator.set_latency(1.0)
    start = threading.Barrier(2)
    answers: list[set[str]] = []

    def deliver() -> None:
        start.wait()
        answers.append(redelivery.invoke([(body, 1)]))

    try:
        threads = [threading.Thread(target=deliver) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        emulator.set_latency(0.0)
    # Then one delivery generated it and the other was put back (a live lease), not paid twice
    assert sorted(len(answer) for answer in answers) == [0, 1]
    assert redelivery.delays and min(redelivery.delays) > 100  # comes back after the live delivery's lease
    # And when the put-back copy comes back, it is acknowledged without another call
    redelivery.until_settled([body])
    assert redelivery.invocations == 3 and redelivery.dead_lettered == []
    figures = assert_invariants(stack, repository, emulator, job_id, retries=0)
    assert emulator.calls == 1
    reliability.record("Queue faults", "same message twice, concurrently", "1 upstream call, 1 object", **figures)


def test_a_worker_killed_mid_batch_after_paying_leaves_no_duplicates(
    stack, worker, repository, emulator, redelivery, monkeypatch, reliability
):
    # Given a batch of ten where the invocation is killed after items 3 and 7 were generated and mirrored, but
    # before their results were recorded (the worst moment: the upstream is paid, S3 written, the item running)
    job_id = make_job(repository, [f"crash {i}" for i in range(10)])
    redelivery.job_id = job_id
    killed: set[int] = set()

    def die_after_paying(index: int, generate: Callable[[], Any]) -> Any:
        record = generate()
        if index in (3, 7) and index not in killed:
            killed.add(index)
            raise Killed()
        return record

    patch_generation(monkeypatch, worker, job_id, die_after_paying)
    # When SQS redelivers the whole batch (the invocation failed) after the visibility timeout
    redelivery.until_settled(messages(job_id, 10))
    # Then every item succeeded once; only the two killed items were generated again; one object each (the
    # replay overwrote its own key)
    figures = assert_invariants(stack, repository, emulator, job_id, retries=2)
    assert figures["succeeded"] == 10 and emulator.calls <= 12
    assert redelivery.invocations == 2 and redelivery.dead_lettered == []  # the redelivery acknowledged all ten
    reliability.record("Queue faults", "invocation killed mid-batch (after paying)", "10/10 succeeded", **figures)


def test_an_invocation_running_out_of_time_puts_unstarted_items_back(
    stack, worker, repository, emulator, redelivery, reliability
):
    # Given a batch of ten, eight worker threads, 1.5 s generations, and an invocation with 21 s left: the
    # first eight items start (>= 15 s left after the 5 s reserve), the last two would not finish in time
    job_id = make_job(repository, [f"late {i}" for i in range(10)])
    redelivery.job_id = job_id
    emulator.set_latency(1.5)
    try:
        # When it runs, and SQS redelivers what it put back
        redelivery.until_settled(messages(job_id, 10), first_timeout_s=21)
    finally:
        emulator.set_latency(0.0)
    # Then nothing was lost or generated twice
    figures = assert_invariants(stack, repository, emulator, job_id, retries=0)
    assert figures["succeeded"] == 10 and emulator.calls == 10
    assert redelivery.invocations >= 2  # some items were put back, not started late
    assert redelivery.dead_lettered == []
    reliability.record(
        "Queue faults", "invocation running out of time mid-batch", "unstarted items put back; 10/10", **figures
    )


def test_poison_messages_do_not_block_their_batch(
    stack, worker, repository, emulator, redelivery, monkeypatch, reliability
):
    # Given a batch of ten: seven good items, an item that crashes the worker's code every time, a message that
    # is not JSON, and a message that names its item but breaks the schema
    job_id = make_job(repository, [f"poison {i}" for i in range(9)])
    redelivery.job_id = job_id
    bodies = messages(job_id, 9)

    def item_8_always_crashes(index: int, generate: Callable[[], Any]) -> Any:
        if index == 8:
            raise RuntimeError("a bug that hits this item every time")
        return generate()

    patch_generation(monkeypatch, worker, job_id, item_8_always_crashes)
    schema_breaker = json.dumps({"request": {"prompt": "x", "stepz": 4}, "job_id": job_id, "index": 7})
    batch = [*bodies[:7], bodies[8], "not json at all", schema_breaker]
    # When it is delivered until SQS gives up on what keeps failing
    redelivery.until_settled(batch)
    # Then the good items succeeded on the first delivery, the crashing one is failed (after 5 receives), the
    # schema breaker is recorded on its item, the unreadable one is in the DLQ, and none blocked the others
    item_7, item_8 = repository.get_item(job_id, 7), repository.get_item(job_id, 8)
    assert item_7.status == "failed" and item_7.error.code == "invalid_message"
    assert item_8.status == "failed" and item_8.error.code == "internal_error"
    assert [repository.get_item(job_id, i).status for i in range(7)] == ["succeeded"] * 7
    assert redelivery.dead_lettered == []  # the worker moved the unreadable one itself, with the reason
    figures = assert_invariants(stack, repository, emulator, job_id, retries=0)
    assert emulator.calls == 7
    reliability.record(
        "Queue faults", "poison messages in a batch of ten", "7 succeeded, 2 failed, 1 to the DLQ", **figures
    )


def test_one_permanently_failing_item_in_a_batch_of_ten(stack, worker, repository, emulator, redelivery, reliability):
    # Given a batch of ten where the upstream refuses one item's parameters (a 400: retrying cannot help)
    job_id = make_job(repository, [f"ten {i}" for i in range(10)])
    redelivery.job_id = job_id
    emulator.inject("bad_request", count=1, message="Invalid prompt parameter")
    # When it is delivered
    redelivery.until_settled(messages(job_id, 10))
    # Then nine succeeded, one failed with the upstream's reason, in one invocation and ten calls
    job = repository.get_job(job_id)
    assert job.status == "partially_failed"
    failed = [repository.get_item(job_id, i) for i in range(10) if repository.get_item(job_id, i).status == "failed"]
    assert len(failed) == 1 and failed[0].error.code == "upstream_rejected"
    assert redelivery.invocations == 1
    figures = assert_invariants(stack, repository, emulator, job_id, retries=0)
    assert emulator.calls == 10
    reliability.record(
        "Queue faults", "one permanent failure in a batch of ten", "9 succeeded, 1 failed, no retry", **figures
    )


def test_a_retryable_failure_on_every_receive_ends_failed_not_lost(
    stack, worker, repository, emulator, redelivery, reliability
):
    # Given an upstream that keeps answering 503 for one item's whole life on the queue
    job_id = make_job(repository, ["never"])
    redelivery.job_id = job_id
    emulator.inject("unavailable", count=None)
    # When its message is delivered until the last receive
    redelivery.until_settled(messages(job_id, 1))
    # Then on the 5th receive the item is failed for good and the message acknowledged (the job completes),
    # rather than left running while SQS moves the message to the DLQ
    item = repository.get_item(job_id, 0)
    assert item.status == "failed" and "gave up after 5 attempts" in item.error.message
    assert redelivery.invocations == MAX_RECEIVES and redelivery.dead_lettered == []
    retries = emulator.calls - 1
    figures = assert_invariants(stack, repository, emulator, job_id, retries=retries)
    assert emulator.calls <= MAX_RECEIVES * 4  # 4 attempts per receive (UPSTREAM_MAX_ATTEMPTS)
    reliability.record("Queue faults", "retryable failure on every receive", "failed on the 5th receive", **figures)


def test_the_dlq_path_a_message_that_kills_every_invocation_is_redriven_and_completes(
    stack, worker, repository, emulator, redelivery, monkeypatch, reliability
):
    # Given an item whose invocation is killed on every receive (e.g. out of memory): the worker cannot record
    # anything, so after 5 receives SQS moves the message to the DLQ (DLQ depth alarm) with the item running
    job_id = make_job(repository, ["killer"])
    redelivery.job_id = job_id

    def always_killed(index: int, generate: Callable[[], Any]) -> Any:
        raise Killed()

    patch_generation(monkeypatch, worker, job_id, always_killed)
    body = messages(job_id, 1)[0]
    redelivery.until_settled([body])
    assert redelivery.dead_lettered == [body]
    assert repository.get_item(job_id, 0).status == "running"
    # When the operator fixes the cause and redrives the DLQ (a moved message starts again at receive 1)
    monkeypatch.undo()
    monkeypatch.setattr(worker.job_queue(), "delay", lambda receipt, seconds: None)
    redelivery._expire_leases()
    redelivery.dead_lettered.clear()
    redelivery.until_settled([body])
    # Then the item completes once and the job with it
    figures = assert_invariants(stack, repository, emulator, job_id, retries=0)
    assert figures["succeeded"] == 1 and emulator.calls == 1
    reliability.record(
        "Queue faults",
        "DLQ path: killed on every receive, then redriven",
        "in the DLQ, then 1/1 after redrive",
        **figures,
    )


def test_the_dlq_receives_unreadable_messages_through_the_real_queue(stack, emulator, events, reliability):
    # Given a producer that puts an unreadable message and a good direct message on the real queue
    sqs = stack.aws.client("sqs")
    dlq = stack.seeded.jobs_dlq_url
    while leftover := sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10).get("Messages", []):
        for message in leftover:
            sqs.delete_message(QueueUrl=dlq, ReceiptHandle=message["ReceiptHandle"])
    sqs.send_message(QueueUrl=stack.seeded.jobs_queue_url, MessageBody="{broken")
    good = {"request": {"prompt": "through the queue", "width": 256, "height": 256}, "correlation_id": "dlq-ok"}
    sqs.send_message(QueueUrl=stack.seeded.jobs_queue_url, MessageBody=json.dumps(good))
    # When the event source mapping delivers them
    generated = [event for event in events(2, timeout_s=30) if event["detail-type"] == "Image Generated"]
    moved = sqs.receive_message(QueueUrl=dlq, MessageAttributeNames=["All"], WaitTimeSeconds=5).get("Messages", [])
    # Then the unreadable one is in the DLQ with its reason, and the good one was generated once
    assert [message["Body"] for message in moved] == ["{broken"]
    assert moved[0]["MessageAttributes"]["reason"]["StringValue"]
    assert [event["detail"]["correlation_id"] for event in generated] == ["dlq-ok"]
    assert emulator.calls == 1
    reliability.record(
        "Queue faults",
        "unreadable message through the real queue",
        "in the DLQ with its reason; batch-mate done",
        upstream_calls=emulator.calls,
        dead_lettered=len(moved),
    )
