"""Queue faults through the real queue: duplicate concurrent delivery, an invocation killed or out of time
mid-batch, poison messages, one permanent failure in a batch of ten, and the dead-letter queue.

Every fault goes through SQS itself (moto) and the local event source mapping (``devstack.sqs_poller``) in front
of the real ``worker_handler.lambda_handler``: real receive counts, ``ChangeMessageVisibility``, partial batch
responses, a whole batch coming back when its invocation dies, and the queue's ``RedrivePolicy`` moving a message
to the DLQ after ``maxReceiveCount`` (5) receives.

Only time is compressed, so the file stays fast (``QueuePath``):

- each test has its own queue (visibility timeout 30 s, at least the function timeout, as AWS requires) and DLQ
  (maxReceiveCount 5, as in the template);
- the visibility delays the worker sets (backoff, Retry-After, a live lease) are recorded, and capped at 1 s;
- an invocation "killed" by the runtime (``Killed``, a BaseException nothing in the handler catches) has its batch
  made visible again at once, and leaves its item's lease expired: in AWS the batch comes back after the 780 s
  visibility timeout, long after the item's lease (the invocation's time left plus a margin).

Every case ends with the same three invariants (``assert_invariants``):
1. every submitted item is in exactly one terminal state, the job's counts add up to its total, the job is
   complete, and no message is left on the queue that could still call the upstream;
2. upstream generation calls <= items + the retries the case provoked;
3. exactly one S3 object per succeeded item, none for a failed one (its image was never fetched).
"""

from __future__ import annotations

import io
import json
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from devstack.sqs_poller import EventSourceMapping
from imagegen.adapters.netguard import UrlGuard
from imagegen.adapters.queue import JobQueue
from imagegen.retry import QUEUE_RETRY
from imagegen.service import item_image_id
from support.polling import eventually
from support.stack_fixtures import expire_lease, make_job, messages, s3_keys

TERMINAL = {"succeeded", "failed", "canceled"}
MAX_RECEIVES = 5  # the template's JobMaxReceiveCount
UPSTREAM_ATTEMPTS = 4  # UPSTREAM_MAX_ATTEMPTS: the Flux client's own tries within one receive
DELAY_CAP_S = 1
SETTLE_TIMEOUT_S = 45  # a bound for waiting, never an assertion on speed


class Killed(BaseException):
    """The runtime killing the invocation (timeout, out of memory): nothing in the handler can catch it."""


class CompressedQueue(JobQueue):
    """The worker's queue adapter on the test's queues: records each visibility delay and applies at most 1 s."""

    def __init__(self, client: Any, url: str, dlq_url: str) -> None:
        super().__init__(client, url, dlq_url)
        self.requested_delays: list[int] = []

    def delay(self, receipt_handle: str, seconds: int) -> None:
        self.requested_delays.append(seconds)
        super().delay(receipt_handle, min(seconds, DELAY_CAP_S))


@dataclass
class QueuePath:
    """A jobs queue with its DLQ, and the worker behind a local event source mapping."""

    stack: Any
    worker: Any
    sqs: Any
    url: str
    dlq_url: str
    queue: CompressedQueue
    mappings: list[EventSourceMapping] = field(default_factory=list)
    log: io.StringIO = field(default_factory=io.StringIO)

    def send(self, bodies: list[str]) -> None:
        for start in range(0, len(bodies), 10):
            entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies[start : start + 10])]
            answer = self.sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
            assert not answer.get("Failed"), answer

    def start(self, *, function_timeout_s: float = 30, batch_size: int = 10) -> EventSourceMapping:
        """The worker's event source mapping (as the template's: ReportBatchItemFailures, 2 at once)."""
        mapping = EventSourceMapping(
            self.url,
            self._invoke,
            sqs_client_factory=lambda: self.stack.aws.client("sqs"),
            batch_size=batch_size,
            batching_window_s=0.3,
            maximum_concurrency=2,
            function_timeout_s=function_timeout_s,
            log_stream=self.log,
        ).start()
        self.mappings.append(mapping)
        return mapping

    def _invoke(self, event: dict[str, Any], context: Any) -> Any:
        try:
            return self.worker.lambda_handler(event, context)
        except BaseException:
            # The invocation died: its whole batch comes back when the visibility timeout ends. In AWS that is
            # 780 s, long after the lease of the items it was running (the 120 s timeout plus a margin); here, at once.
            for record in event["Records"]:
                self.sqs.change_message_visibility(
                    QueueUrl=self.url, ReceiptHandle=record["receiptHandle"], VisibilityTimeout=0
                )
            raise

    def stop(self) -> None:
        for mapping in self.mappings:
            mapping.stop(timeout_s=15)
        self.mappings.clear()

    def depth(self, url: str | None = None) -> int:
        """Messages on the queue: visible, in flight or delayed."""
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        names.append("ApproximateNumberOfMessagesDelayed")
        attributes = self.sqs.get_queue_attributes(QueueUrl=url or self.url, AttributeNames=names)["Attributes"]
        return sum(int(attributes.get(name, 0)) for name in names)

    def dead_letters(self) -> list[dict[str, Any]]:
        """Everything in the DLQ (received, then made visible again at once)."""
        found: dict[str, dict[str, Any]] = {}
        while page := self.sqs.receive_message(
            QueueUrl=self.dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], AttributeNames=["All"]
        ).get("Messages", []):
            for message in page:
                found[message["MessageId"]] = message
        for message in found.values():
            self.sqs.change_message_visibility(
                QueueUrl=self.dlq_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        return list(found.values())

    def redrive(self) -> int:
        """What an operator does once the cause is fixed: move the DLQ's messages back (receive count 1 again)."""
        moved = 0
        while page := self.sqs.receive_message(QueueUrl=self.dlq_url, MaxNumberOfMessages=10).get("Messages", []):
            for message in page:
                self.sqs.send_message(QueueUrl=self.url, MessageBody=message["Body"])
                self.sqs.delete_message(QueueUrl=self.dlq_url, ReceiptHandle=message["ReceiptHandle"])
                moved += 1
        return moved

    def stats(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for mapping in self.mappings:
            total.update(mapping.stats())
        return dict(total)

    def idle(self) -> bool:
        """Nothing on the queue, no invocation running, and every delivered record deleted or put back."""
        stats = Counter(self.stats())
        accounted = stats["records_delivered"] == stats["records_failed"] + stats["records_deleted"]
        return accounted and self.depth() == 0 and all(mapping.in_flight == 0 for mapping in self.mappings)

    def wait_for(self, condition: Callable[[], bool], what: str, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        eventually(condition, timeout_s, lambda: f"{what}; mapping {self.stats()}\n{self.log.getvalue()[-3000:]}", 0.2)

    def wait_settled(self, repository: Any, job_id: str) -> None:
        """The job is complete and nothing is left on the queue (no redelivery could still call the upstream)."""

        def settled() -> bool:
            job = repository.get_job(job_id)
            return job is not None and job.completed_at is not None and self.idle()

        self.wait_for(settled, f"job {job_id} to settle (complete, nothing left on the queue)")


@pytest.fixture
def queue_path(stack, worker, emulator, monkeypatch) -> Iterator[QueuePath]:
    sqs = stack.aws.client("sqs")
    name = f"queue-faults-{uuid.uuid4().hex[:12]}"
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVES})
    url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "30", "RedrivePolicy": redrive})["QueueUrl"]
    queue = CompressedQueue(sqs, url, dlq_url)
    monkeypatch.setattr(worker, "job_queue", lambda: queue)
    monkeypatch.setattr(worker.item_processor(), "_queue", queue)  # the processor dead-letters itself
    path = QueuePath(stack, worker, sqs, url, dlq_url, queue)
    try:
        yield path
    finally:
        path.stop()
        emulator.set_latency(0.0)
        for queue_url in (url, dlq_url):
            sqs.delete_queue(QueueUrl=queue_url)


def calls_per_item(emulator) -> Counter[int]:
    """Generation requests per item: ``make_job`` and ``messages`` both give item i the seed i."""
    seeds = [(request.json() or {}).get("seed") for request in emulator.received]
    return Counter(seed for seed in seeds if isinstance(seed, int))


def assert_invariants(stack, repository, emulator, job_id: str, *, retries: int) -> dict[str, int]:
    """The three invariants every case ends with; returns the case's figures for the report."""
    job = repository.get_job(job_id)
    items = [repository.get_item(job_id, index) for index in range(job.total)]
    statuses = [item.status for item in items]
    # 1. exactly one terminal state per item, and the job agrees (and is complete)
    assert all(status in TERMINAL for status in statuses), statuses
    counts = job.counts
    assert counts.queued == counts.running == 0, counts
    assert counts.succeeded + counts.failed + counts.canceled == job.total, counts
    assert (counts.succeeded, counts.failed, counts.canceled) == tuple(
        statuses.count(status) for status in ("succeeded", "failed", "canceled")
    )
    assert job.remaining == 0 and job.completed_at is not None
    # 2. nobody paid twice beyond the retries the case provoked
    assert emulator.calls <= job.total + retries, f"{emulator.calls} upstream calls for {job.total} items + {retries}"
    assert emulator.calls_by_status.get(200, 0) <= counts.succeeded + retries, emulator.calls_by_status
    # 3. one object per succeeded item, none for a failed one
    objects = {index: len(s3_keys(stack, job_id, index)) for index in range(job.total)}
    for index, item in enumerate(items):
        assert objects[index] == (1 if item.status == "succeeded" else 0), (index, item.status, objects[index])
    return {
        "items": job.total,
        "upstream_calls": emulator.calls,
        "s3_objects": sum(objects.values()),
        "terminal": sum(status in TERMINAL for status in statuses),
        "succeeded": counts.succeeded,
        "failed": counts.failed,
    }


def patch_generation(monkeypatch, worker, job_id: str, behave: Callable[[int, Callable[[], Any]], Any]) -> None:
    """Wrap the worker's generation: ``behave(index, generate)`` decides what happens to each item of the job."""
    service = worker.item_processor()._images
    real = service.generate_record
    index_of = {item_image_id(job_id, index): index for index in range(100)}

    def generate_record(request, deadline, *, image_id=None, **kwargs):
        index = index_of.get(image_id)
        call = lambda: real(request, deadline, image_id=image_id, **kwargs)  # noqa: E731
        return call() if index is None else behave(index, call)

    monkeypatch.setattr(service, "generate_record", generate_record)


def killed(repository, job_id: str, index: int) -> Killed:
    """The runtime kills the invocation; by the time its messages come back, the item's lease has run out."""
    expire_lease(repository, job_id, index)
    return Killed()


# ------------------------------------------------------------------------------------------------ the matrix
@pytest.mark.parametrize(
    ("batch_size", "how"),
    [(10, "in one batch, two threads"), (1, "in two invocations at once")],
    ids=["same-batch", "two-invocations"],
)
def test_the_same_message_delivered_twice_concurrently_is_generated_once(
    stack, repository, emulator, queue_path, reliability, batch_size, how
):
    # Given one item whose message is on the queue twice (at-least-once delivery), and a generation that takes a
    # second, so both deliveries are at the item at the same time
    job_id = make_job(repository, ["twice"])
    body = messages(job_id, 1)[0]
    emulator.set_latency(1.0)
    queue_path.start(batch_size=batch_size)
    # When the event source mapping delivers both
    queue_path.send([body, body])
    queue_path.wait_settled(repository, job_id)
    # Then one delivery generated the image; the other found the live lease and was put back for its length (the
    # lease outlives the first delivery's invocation, 30 s here; this queue caps the wait), then acknowledged
    # without a call
    figures = assert_invariants(stack, repository, emulator, job_id, retries=0)
    assert emulator.calls == 1 and figures["succeeded"] == 1
    assert max(queue_path.queue.requested_delays, default=0) > 30, queue_path.queue.requested_delays
    if batch_size == 1:
        assert queue_path.stats()["max_concurrent_invocations"] == 2
    assert queue_path.dead_letters() == []
    reliability.record(
        "Queue faults",
        f"same message twice concurrently, {how} (real queue)",
        "1 upstream call, 1 object; the duplicate waited out the lease",
        **figures,
        receives=queue_path.stats()["records_delivered"],
    )


@pytest.mark.parametrize("moment", ["before the upstream call", "after paying, before recording"])
def test_an_invocation_killed_mid_batch_is_redelivered_without_paying_twice_for_finished_items(
    stack, repository, emulator, queue_path, monkeypatch, reliability, moment
):
    # Given a batch of ten where the runtime kills the invocation while items 3 and 7 are running (once)
    job_id = make_job(repository, [f"crash {i}" for i in range(10)])
    after_paying = moment.startswith("after")
    dead: set[int] = set()

    def killed_on_3_and_7(index: int, generate: Callable[[], Any]) -> Any:
        if index not in (3, 7) or index in dead:
            return generate()
        dead.add(index)
        if after_paying:
            generate()  # the upstream is paid and the image mirrored, but the item is still running
        raise killed(repository, job_id, index)

    patch_generation(monkeypatch, queue_path.worker, job_id, killed_on_3_and_7)
    # When the batch is delivered, its invocation dies, and the whole batch comes back (visibility timeout). The ten
    # are on the queue before the pollers start: a poll while the send is under way could split them (one run
    # delivered nine, then one, and the assertion on the dead batch below failed)
    queue_path.send(messages(job_id, 10))
    queue_path.start()
    queue_path.wait_settled(repository, job_id)
    # Then all ten succeeded; the finished items were not generated again, only the two killed ones (when the
    # kill came after the call); one object each (the replay overwrote its own key)
    stats = queue_path.stats()
    assert stats["errors"] >= 1 and stats["records_failed"] >= 10  # the invocation did die with its batch
    paid_twice = 2 if after_paying else 0
    figures = assert_invariants(stack, repository, emulator, job_id, retries=paid_twice)
    assert figures["succeeded"] == 10 and emulator.calls == 10 + paid_twice
    per_item = calls_per_item(emulator)
    assert all(per_item[index] == 1 for index in range(10) if index not in (3, 7)), per_item
    assert per_item[3] == per_item[7] == 1 + after_paying, per_item
    assert queue_path.dead_letters() == []
    reliability.record(
        "Queue faults",
        f"invocation killed mid-batch {moment} (real queue)",
        f"10/10 succeeded; finished items called once, {paid_twice} paid twice",
        **figures,
        receives=stats["records_delivered"],
    )


def test_an_invocation_running_out_of_time_mid_batch_puts_unstarted_items_back(
    stack, repository, emulator, queue_path, monkeypatch, reliability
):
    # Given a batch of ten, one upstream slot (WORKER_THREADS=1: four items in flight, generating one at a time),
    # generations of 1.5 s, and a function timeout of 21 s: the first four start (16 s left after the 5 s reserve,
    # >= 15 s); a thread is free again only after its item's generation, by when less than 15 s are left
    from imagegen.settings import get_settings

    settings = get_settings().model_copy(update={"worker_threads": 1})
    monkeypatch.setattr(queue_path.worker, "get_settings", lambda: settings)
    job_id = make_job(repository, [f"late {i}" for i in range(10)])
    emulator.set_latency(1.5)
    # When the mapping invokes the worker with that timeout, on all ten at once: they are on the queue before the
    # pollers start (a poll while the send is under way could split them into smaller batches)
    queue_path.send(messages(job_id, 10))
    queue_path.start(function_timeout_s=21)
    queue_path.wait_settled(repository, job_id)
    # Then the worker did not start what it could not finish: it put those back at once (delay 0), and their
    # redelivery completed them; nothing was lost or generated twice
    assert 0 in queue_path.queue.requested_delays
    stats = queue_path.stats()
    assert stats["invocations"] >= 2 and stats["records_failed"] >= 1
    assert stats["errors"] == stats["timeouts"] == 0  # put back by the worker, not killed by the runtime
    figures = assert_invariants(stack, repository, emulator, job_id, retries=0)
    assert figures["succeeded"] == 10 and emulator.calls == 10
    assert queue_path.dead_letters() == []
    reliability.record(
        "Queue faults",
        "invocation running out of time mid-batch (real queue)",
        f"{stats['records_failed']} unstarted item(s) put back, then 10/10; 10 calls",
        **figures,
        receives=stats["records_delivered"],
    )


def test_poison_messages_neither_block_their_batch_nor_stay_on_the_queue(
    stack, repository, emulator, queue_path, monkeypatch, reliability
):
    # Given a batch of ten: seven good items, an item whose generation crashes the worker's code every time, a
    # body that names its item but breaks the schema, a body that is not JSON, and one naming an item that does
    # not exist
    job_id = make_job(repository, [f"poison {i}" for i in range(9)])
    bodies = messages(job_id, 9)

    def item_8_always_crashes(index: int, generate: Callable[[], Any]) -> Any:
        if index == 8:
            raise RuntimeError("a bug that hits this item every time")
        return generate()

    patch_generation(monkeypatch, queue_path.worker, job_id, item_8_always_crashes)
    schema_breaker = json.dumps({"request": {"prompt": "x", "stepz": 4}, "job_id": job_id, "index": 7})
    no_such_item = json.dumps({"request": {"prompt": "x"}, "job_id": job_id, "index": 42})
    queue_path.start()
    # When the mapping delivers them until nothing is left
    queue_path.send([*bodies[:7], bodies[8], schema_breaker, "not json at all", no_such_item])
    queue_path.wait_settled(repository, job_id)
    # Then the good items succeeded on their first receive; the crashing item was retried and failed on its
    # last receive (internal_error), its message acknowledged; the schema breaker is recorded on its item; the
    # two that name no item are in the DLQ with the reason
    item_7, item_8 = repository.get_item(job_id, 7), repository.get_item(job_id, 8)
    assert item_7.status == "failed" and item_7.error.code == "invalid_message" and "stepz" in item_7.error.message
    assert item_8.status == "failed" and item_8.error.code == "internal_error"
    assert item_8.attempts == MAX_RECEIVES
    assert [repository.get_item(job_id, i).status for i in range(7)] == ["succeeded"] * 7
    dead = queue_path.dead_letters()
    assert sorted(message["Body"] for message in dead) == sorted(["not json at all", no_such_item])
    assert all(message["MessageAttributes"]["reason"]["StringValue"] for message in dead)
    figures = assert_invariants(stack, repository, emulator, job_id, retries=0)
    assert emulator.calls == 7
    stats = queue_path.stats()
    assert stats["records_delivered"] == 11 + (MAX_RECEIVES - 1)  # only the crashing item came back
    reliability.record(
        "Queue faults",
        "poison messages in a batch of eleven (real queue)",
        "7 succeeded on the 1st receive; crasher failed on the 5th; schema breaker recorded; 2 in the DLQ",
        **figures,
        dead_lettered=len(dead),
        receives=stats["records_delivered"],
    )


def test_one_permanently_failing_item_in_a_batch_of_ten(stack, repository, emulator, queue_path, reliability):
    # Given a batch of ten where the upstream refuses one item (a 400: retrying cannot help)
    job_id = make_job(repository, [f"ten {i}" for i in range(10)])
    emulator.inject("bad_request", count=1, message="Invalid prompt parameter")
    queue_path.start()
    # When it is delivered
    queue_path.send(messages(job_id, 10))
    queue_path.wait_settled(repository, job_id)
    # Then nine succeeded and one failed with the upstream's reason, each message received once, ten calls
    job = repository.get_job(job_id)
    assert job.status == "partially_failed"
    failed = [item for item in (repository.get_item(job_id, i) for i in range(10)) if item.status == "failed"]
    assert len(failed) == 1 and failed[0].error.code == "upstream_rejected"
    assert "Invalid prompt parameter" in failed[0].error.message
    stats = queue_path.stats()
    assert stats["records_delivered"] == 10 and stats["records_failed"] == 0
    figures = assert_invariants(stack, repository, emulator, job_id, retries=0)
    assert emulator.calls == 10 and figures["succeeded"] == 9
    assert queue_path.dead_letters() == []
    reliability.record(
        "Queue faults",
        "one permanent failure in a batch of ten (real queue)",
        "9 succeeded, 1 failed (upstream_rejected), partially_failed; no retry",
        **figures,
        receives=stats["records_delivered"],
    )


def test_dlq_path_a_retryable_failure_on_every_receive_is_failed_on_the_last_receive(
    stack, repository, emulator, queue_path, reliability
):
    # Given an upstream that answers 503 to everything, for the whole life of the message on the queue
    job_id = make_job(repository, ["never"])
    emulator.inject("unavailable", count=None)
    queue_path.start()
    # When the mapping delivers it (each retry comes back after the upstream's Retry-After) up to maxReceiveCount
    queue_path.send(messages(job_id, 1))
    queue_path.wait_settled(repository, job_id)
    # Then on the 5th and last receive the worker fails the item for good and acknowledges the message, so the
    # job completes instead of an item stranded `running` with its message in the DLQ
    item = repository.get_item(job_id, 0)
    assert item.status == "failed" and item.error.code == "upstream_unavailable"
    assert f"gave up after {MAX_RECEIVES} attempts" in item.error.message
    assert repository.get_job(job_id).status == "failed"
    stats = queue_path.stats()
    assert (stats["records_delivered"], stats["records_failed"]) == (MAX_RECEIVES, MAX_RECEIVES - 1), stats
    assert queue_path.dead_letters() == []
    retries = MAX_RECEIVES * UPSTREAM_ATTEMPTS - 1
    figures = assert_invariants(stack, repository, emulator, job_id, retries=retries)
    assert emulator.calls == MAX_RECEIVES * UPSTREAM_ATTEMPTS
    reliability.record(
        "Queue faults",
        "DLQ path: 503 on every receive (real queue)",
        "failed on the 5th receive (gave up after 5 attempts), acknowledged; DLQ empty",
        **figures,
        receives=stats["records_delivered"],
    )


@pytest.mark.parametrize(
    ("function_timeout_s", "ends"),
    [(19, "succeeded"), (6, "failed")],
    ids=["14s-left-on-the-last-receive", "1s-left-on-the-last-receive"],
)
def test_dlq_path_a_message_whose_item_never_gets_time_is_tried_on_its_last_receive(
    stack, repository, emulator, queue_path, reliability, function_timeout_s, ends
):
    # Given a worker that never has the 15 s an item needs to start (5 s of its timeout are reserved): every
    # receive puts the message back at once, which uses up its receive count
    job_id = make_job(repository, ["starved"])
    queue_path.start(function_timeout_s=function_timeout_s)
    # When the mapping delivers it up to maxReceiveCount
    queue_path.send(messages(job_id, 1))
    queue_path.wait_for(
        lambda: repository.get_job(job_id).completed_at is not None or queue_path.depth(queue_path.dlq_url) > 0,
        "the job to complete or its message to be dead-lettered",
    )
    queue_path.wait_for(queue_path.idle, "the mapping to be idle")
    # Then the last receive does not put it back (SQS would dead-letter it with its item never started, the job
    # never complete): it tries the item with the time there is, within the deadline, and the item ends terminal:
    # generated when that time suffices, failed without an upstream call when it cannot (no time left)
    assert queue_path.dead_letters() == []
    figures = assert_invariants(stack, repository, emulator, job_id, retries=0)
    assert queue_path.queue.requested_delays == [0] * (MAX_RECEIVES - 1)
    item = repository.get_item(job_id, 0)
    assert item.status == ends
    if ends == "failed":
        assert item.error.code == "upstream_timeout" and f"gave up after {MAX_RECEIVES}" in item.error.message
    assert emulator.calls == (1 if ends == "succeeded" else 0)
    reliability.record(
        "Queue faults",
        f"DLQ path: {function_timeout_s} s timeout, never time to start, receive after receive (real queue)",
        f"put back 4 times, {ends} on the 5th receive; DLQ empty",
        **figures,
        receives=queue_path.stats()["records_delivered"],
    )


def test_dlq_path_an_item_that_kills_every_invocation_reaches_the_dlq_and_completes_once_redriven(
    stack, repository, emulator, queue_path, monkeypatch, reliability
):
    # Given an item whose invocation is killed on every receive (e.g. out of memory), next to a good item: the
    # worker can record nothing, so the queue's RedrivePolicy moves the message to the DLQ after 5 receives
    job_id = make_job(repository, ["killer", "bystander"])
    bodies = messages(job_id, 2)
    kills: list[int] = []

    def item_0_kills_its_invocation(index: int, generate: Callable[[], Any]) -> Any:
        if index == 0:
            kills.append(index)
            raise killed(repository, job_id, index)
        return generate()

    patch_generation(monkeypatch, queue_path.worker, job_id, item_0_kills_its_invocation)
    # (both on the queue before the pollers start, so they come in one batch: a poll during the send could split
    # them, and the bystander's batch would then succeed on its own)
    queue_path.send(bodies)
    queue_path.start()
    queue_path.wait_for(
        lambda: queue_path.depth(queue_path.dlq_url) == 2 and queue_path.idle(), "both messages dead-lettered"
    )
    # Then the DLQ holds the killer's message (the DLQ depth alarm fires) with its item still running, so the job
    # is not complete; and its batch-mate's, which failed with the whole batch each time (a function error fails
    # every record), although its item had succeeded, with one call, on the first receive
    assert sorted(message["Body"] for message in queue_path.dead_letters()) == sorted(bodies)
    assert len(kills) == MAX_RECEIVES
    assert repository.get_item(job_id, 0).status == "running"
    assert repository.get_item(job_id, 1).status == "succeeded"
    assert repository.get_job(job_id).completed_at is None
    # When the operator fixes the cause and redrives the DLQ (the message starts again at receive 1)
    monkeypatch.undo()
    monkeypatch.setattr(queue_path.worker, "job_queue", lambda: queue_path.queue)
    monkeypatch.setattr(queue_path.worker.item_processor(), "_queue", queue_path.queue)
    assert queue_path.redrive() == 2
    queue_path.wait_settled(repository, job_id)
    # Then the item completes once, the job with it, the batch-mate is acknowledged without a call, and the DLQ
    # is empty
    assert queue_path.dead_letters() == []
    figures = assert_invariants(stack, repository, emulator, job_id, retries=0)
    assert figures["succeeded"] == 2 and emulator.calls == 2
    reliability.record(
        "Queue faults",
        "DLQ path: item kills every invocation, then redriven (real queue)",
        "killer + batch-mate in the DLQ after 5 receives (killer's item running); 2/2 after the redrive, 2 calls",
        **figures,
        receives=queue_path.stats()["records_delivered"],
    )


# ------------------------------------------------------------------------------------------------ paid refusals
METADATA_URL = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"


@dataclass(frozen=True)
class PaidFault:
    """A 200 the upstream was paid for, whose output is of no use: how many paid calls the item may make."""

    name: str
    mode: str
    code: str
    calls: int
    params: Callable[[Any], dict[str, Any]] = lambda emulator: {}
    guard: str = "local"  # "local": the stack's; "https": the deployed scheme rule; "any-host": allowlist '*'


REFUSALS = [
    PaidFault("output over http, as deployed (https only)", "output_http", "image_rejected", 1, guard="https"),
    PaidFault(
        "output with credentials", "output_custom", "image_rejected", 1, lambda e: {"url": "http://u:p@127.0.0.1/x.png"}
    ),
    PaidFault(
        "output on a host off the allowlist",
        "output_custom",
        "image_rejected",
        1,
        lambda e: {"url": "https://images.evil.example/x.png"},
    ),
    PaidFault(
        "output on a link-local address (allowlist '*')",
        "output_custom",
        "image_rejected",
        1,
        lambda e: {"url": "http://169.254.169.254/x.png"},
        guard="any-host",
    ),
    PaidFault(
        "output redirecting to 169.254.169.254", "redirect", "image_rejected", 1, lambda e: {"location": METADATA_URL}
    ),
    PaidFault(
        "output redirecting to 169.254.169.254 (allowlist '*')",
        "redirect",
        "image_rejected",
        1,
        lambda e: {"location": METADATA_URL},
        guard="any-host",
    ),
    PaidFault("output is not an image", "not_image", "image_rejected", 1),
    PaidFault("output too large", "oversized", "image_rejected", 1, lambda e: {"size": 33 << 20}),
    PaidFault("output truncated", "truncated", "image_rejected", 1),
    PaidFault(
        "image host answers 404",
        "output_custom",
        "image_rejected",
        1,
        lambda e: {"url": f"{e.image_base_url}/images/gone.png"},
    ),
    PaidFault("200 without output, every time", "no_output", "upstream_bad_response", 2),
]


@pytest.mark.parametrize("fault", REFUSALS, ids=[fault.name for fault in REFUSALS])
def test_a_paid_200_with_a_useless_output_is_never_paid_for_more_than_twice(
    stack, repository, emulator, queue_path, monkeypatch, reliability, fault
):
    # Given an upstream whose every 200 points at an output the service refuses (or carries none)
    images = queue_path.worker.item_processor()._images
    if fault.guard == "https":
        monkeypatch.setattr(images._flux, "_output_schemes", ("https",))
    elif fault.guard == "any-host":
        monkeypatch.setattr(images._mirror, "_guard", UrlGuard(("*",), allow_http=True))
    job_id = make_job(repository, ["refused"])
    emulator.inject(fault.mode, count=None, **fault.params(emulator))
    queue_path.start()
    # When its message goes through the real queue until nothing is left
    queue_path.send(messages(job_id, 1))
    queue_path.wait_settled(repository, job_id)
    # Then the item failed with the class's code after exactly the paid calls the class allows: a refusal once,
    # a 200 without output twice (its retry counted on the item), and nothing went to the DLQ or the bucket
    item = repository.get_item(job_id, 0)
    assert item.status == "failed" and item.error.code == fault.code, item.error
    assert emulator.calls == fault.calls, emulator.calls
    assert queue_path.stats()["records_delivered"] == fault.calls
    assert queue_path.dead_letters() == []
    # (every call here was a paid 200 that produced no image: all of them count as provoked)
    figures = assert_invariants(stack, repository, emulator, job_id, retries=fault.calls)
    reliability.record(
        "Queue faults",
        f"paid refusal: {fault.name} (real queue)",
        f"failed ({fault.code}) after {fault.calls} paid call{'s' if fault.calls > 1 else ''}",
        **figures,
        receives=queue_path.stats()["records_delivered"],
    )


# ------------------------------------------------------------------------------------------------ the fan-out
@pytest.mark.parametrize(
    "fault",
    [
        "every chunk message delivered twice",
        "a chunk killed after writing 2 rows",
        "a chunk's item messages partly refused by the queue",
    ],
)
def test_a_fan_out_chunk_delivered_twice_or_killed_midway_loses_and_duplicates_nothing(
    stack, repository, emulator, queue_path, monkeypatch, reliability, fault
):
    # Given a job of 20 items submitted through the API's service: its control message on this queue, the fan-out
    # cutting it into 4 chunks of 5
    from imagegen import jobs, wiring
    from imagegen.models import ImageRequest, JobRequest

    monkeypatch.setattr(jobs, "CHUNK_ITEMS", 5)  # the API sends a job of one chunk as that chunk: not this one
    fan_out = wiring.fan_out()
    monkeypatch.setattr(fan_out, "_queue", queue_path.queue)
    monkeypatch.setattr(fan_out, "_chunk_items", 5)
    monkeypatch.setattr(wiring.job_service(), "_queue", queue_path.queue)
    kills: list[int] = []
    if fault.startswith("every chunk"):
        # (at-least-once delivery) every chunk message is on the queue twice
        real_send = queue_path.queue.send

        def send_chunks_twice(bodies: list[Any]) -> list[int]:
            if bodies and getattr(bodies[0], "chunk", None) is not None:
                bodies = [body for body in bodies for _ in (0, 1)]
            return real_send(bodies)

        monkeypatch.setattr(queue_path.queue, "send", send_chunks_twice)
    elif fault.startswith("a chunk's item messages"):
        # the queue refuses one of the second chunk's item messages on every try of its first run (FanoutIncomplete)
        real_send = queue_path.queue.send
        refusals: list[int] = []

        def refuses_one(bodies: list[Any]) -> list[int]:
            if not refusals and bodies and getattr(bodies[0], "index", None) == 5:
                refusals.append(5)
                return [0] + [position + 1 for position in real_send(bodies[1:])]  # the first one not sent
            return real_send(bodies)

        monkeypatch.setattr(queue_path.queue, "send", refuses_one)
        monkeypatch.setattr(random, "uniform", lambda low, high: low)  # every full-jitter draw at its floor
    else:
        # the runtime kills the invocation of the second chunk after 2 of its 5 rows were written (none sent)
        real_put = repository.put_queued_items

        def dies_midway(job: Any, requests: list[Any], correlation_id: Any) -> list[int]:
            if not kills and requests and requests[0][0] == 5:
                kills.append(5)
                real_put(job, requests[:2], correlation_id)
                raise Killed()
            return real_put(job, requests, correlation_id)

        monkeypatch.setattr(repository, "put_queued_items", dies_midway)
    items = [ImageRequest(prompt=f"fan {i}", seed=i, width=256, height=256) for i in range(20)]
    job_id = wiring.job_service().submit(JobRequest(items=items)).id
    # When the worker fans it out and generates it through the real queue
    queue_path.start()
    queue_path.wait_settled(repository, job_id)
    # Then every item is generated exactly once: none lost, none paid twice, one object each
    figures = assert_invariants(stack, repository, emulator, job_id, retries=0)
    assert figures["succeeded"] == 20 and emulator.calls == 20
    per_item = calls_per_item(emulator)
    assert all(per_item[index] == 1 for index in range(20)), per_item
    if fault.startswith("a chunk killed"):
        assert kills == [5] and queue_path.stats()["errors"] >= 1  # the invocation did die
    if fault.startswith("a chunk's item messages"):
        # the chunk came back after the queue's backoff for a first receive (imagegen.retry.QUEUE_RETRY: its draw at
        # the floor here, 1 s), and its replay sent the refused message (and the others again: their claims
        # refused the duplicates)
        assert refusals == [5]
        assert QUEUE_RETRY.floor_s == 1 and 1 in queue_path.queue.requested_delays, queue_path.queue.requested_delays
    assert queue_path.dead_letters() == []
    reliability.record(
        "Queue faults",
        f"fan-out: {fault} (real queue)",
        "20/20 succeeded, 0 lost, each generated once (20 upstream calls)",
        **figures,
        receives=queue_path.stats()["records_delivered"],
    )


def fan_out_on(queue_path: QueuePath, monkeypatch: Any, chunk_items: int = 5) -> tuple[Any, Any]:
    """The fan-out and the API's job service on the test's queue, cutting jobs into chunks of ``chunk_items``."""
    from imagegen import jobs, wiring

    monkeypatch.setattr(jobs, "CHUNK_ITEMS", chunk_items)  # the API sends a job of one chunk as that chunk
    fan_out = wiring.fan_out()
    monkeypatch.setattr(fan_out, "_queue", queue_path.queue)
    monkeypatch.setattr(fan_out, "_chunk_items", chunk_items)
    monkeypatch.setattr(wiring.job_service(), "_queue", queue_path.queue)
    return fan_out, wiring.job_service()


def count_announcements(monkeypatch: Any, worker: Any, fan_out: Any) -> Counter[str]:
    """Completions announced ("Job Completed" and the webhook), by job: by items settling or by the fan-out."""
    announced: Counter[str] = Counter()
    processor = worker.item_processor()
    real = processor.announce

    def announce(job_id: str) -> None:
        announced[job_id] += 1
        real(job_id)

    monkeypatch.setattr(processor, "announce", announce)
    monkeypatch.setattr(fan_out, "_on_complete", announce)
    return announced


def started_items(repository: Any, job_id: str) -> set[int]:
    """Items that ever left ``queued`` for a generation: running, or done after an attempt."""
    return {item.index for item in repository.iter_items(job_id) if item.status == "running" or item.attempts}


@pytest.mark.parametrize("moment", ["before any chunk ran", "midway through the fan-out"])
def test_a_cancel_racing_the_fan_out_loses_nothing_and_starts_nothing_more(
    stack, repository, emulator, queue_path, monkeypatch, reliability, moment
):
    # Given a job of 40 items cut into 8 chunks of 5, generations of 0.3 s
    from imagegen.models import ImageRequest, JobRequest

    fan_out, service = fan_out_on(queue_path, monkeypatch)
    announced = count_announcements(monkeypatch, queue_path.worker, fan_out)
    emulator.set_latency(0.3)
    items = [ImageRequest(prompt=f"race {i}", seed=i, width=256, height=256) for i in range(40)]
    before_any = moment.startswith("before")
    started: set[int] = set()
    canceled_at: list[int] = []
    if not before_any:
        # the chunk of items 15-19 waits for the first item of the job to start, then the client cancels and the
        # chunk goes on: some chunks are written (their items queued or started), some are not yet
        real_put = repository.put_queued_items

        def cancel_midway(job: Any, requests: list[Any], correlation_id: Any) -> list[int]:
            if not canceled_at and requests and requests[0][0] == 15:
                eventually(lambda: started_items(repository, job.id), 20, f"an item of job {job.id} to start", 0.1)
                service.cancel(job.id)
                canceled_at.append(len(list(repository.iter_items(job.id))))
                started.update(started_items(repository, job.id))  # after the cancel: nothing else can start
            return real_put(job, requests, correlation_id)

        monkeypatch.setattr(repository, "put_queued_items", cancel_midway)
    job_id = service.submit(JobRequest(items=items)).id
    if before_any:
        service.cancel(job_id)
    # When the worker fans it out through the real queue, the cancel's control message among its messages
    queue_path.start()
    queue_path.wait_settled(repository, job_id)
    # Then every item is terminal (succeeded only if it started before the cancel, else canceled), no item was
    # generated twice, none that had not started was generated at all, and the job completed, announced once
    figures = assert_invariants(stack, repository, emulator, job_id, retries=0)
    per_item = calls_per_item(emulator)
    assert all(per_item[index] <= 1 for index in range(40)), per_item
    assert set(per_item) <= started, (sorted(per_item), sorted(started))
    statuses = {item.index: item.status for item in repository.iter_items(job_id)}
    assert len(statuses) == 40
    assert all(statuses[index] == "canceled" for index in range(40) if index not in started), statuses
    assert figures["failed"] == 0 and figures["succeeded"] + repository.get_job(job_id).counts.canceled == 40
    assert announced[job_id] == 1, announced
    assert queue_path.dead_letters() == []
    stats = queue_path.stats()
    if before_any:
        # nothing started, and no item got a message: the chunks canceled their rows themselves
        assert started == set() and emulator.calls == 0
        assert stats["records_delivered"] == 1 + 8 + 1, stats  # the split, 8 chunks, the cancel
    else:
        assert canceled_at and started, (canceled_at, started)  # the cancel did come midway
    reliability.record(
        "Queue faults",
        f"fan-out: cancel {moment} (real queue)",
        f"40/40 terminal ({figures['succeeded']} started before the cancel and succeeded, the rest canceled); "
        "0 calls for unstarted items; announced once",
        **figures,
        receives=stats["records_delivered"],
    )


@pytest.mark.parametrize("fault", ["the items object is gone", "one chunk's range unreadable"])
def test_a_fan_out_message_failing_on_every_receive_fails_its_items_and_completes_the_job(
    stack, repository, emulator, queue_path, monkeypatch, reliability, fault
):
    # Given a job of 20 items in 4 chunks of 5, whose fan-out fails on every receive: its items object deleted
    # (the split cannot read it), or the range of the chunk of items 5-9 unreadable
    from imagegen.adapters.job_objects import items_key
    from imagegen.models import ImageRequest, JobRequest

    fan_out, service = fan_out_on(queue_path, monkeypatch)
    announced = count_announcements(monkeypatch, queue_path.worker, fan_out)
    items = [ImageRequest(prompt=f"lost {i}", seed=i, width=256, height=256) for i in range(20)]
    job_id = service.submit(JobRequest(items=items)).id
    whole = fault.startswith("the items object")
    if whole:
        stack.aws.client("s3").delete_object(Bucket=stack.resources.bucket, Key=items_key(job_id))
    else:
        bad = fan_out._objects.plan(items_key(job_id), 5).chunks[1]
        assert bad.index == 5
        real_read = fan_out._objects.read_range

        def unreadable(key: str, start: int, end: int) -> bytes:
            if key == items_key(job_id) and start == bad.offset:
                raise OSError("the range could not be read")
            return real_read(key, start, end)

        monkeypatch.setattr(fan_out._objects, "read_range", unreadable)
    # When the mapping delivers it up to maxReceiveCount
    queue_path.start()
    queue_path.wait_settled(repository, job_id)
    # Then its last receive gave up instead of leaving it to the DLQ: the items it never fanned out failed
    # (fanout_failed), the others were generated once, and the job completed, announced once
    lost = set(range(20)) if whole else set(range(5, 10))
    for index in range(20):
        item = repository.get_item(job_id, index)
        if index in lost:
            assert item.status == "failed" and item.error.code == "fanout_failed", item
            assert f"gave up after {MAX_RECEIVES} attempts" in item.error.message
        else:
            assert item.status == "succeeded", item
    figures = assert_invariants(stack, repository, emulator, job_id, retries=0)
    assert emulator.calls == 20 - len(lost)
    assert repository.get_job(job_id).status == ("failed" if whole else "partially_failed")
    assert announced[job_id] == 1, announced
    assert queue_path.dead_letters() == []
    stats = queue_path.stats()
    assert stats["records_failed"] >= MAX_RECEIVES - 1, stats
    # And each failed receive put the message back after the queue's backoff for that receive (an item's policy:
    # full jitter, 5 s doubling), not after a fixed delay; the last receive gave up instead
    delays = queue_path.queue.requested_delays
    assert len(delays) == MAX_RECEIVES - 1, delays
    assert all(1 <= delay <= QUEUE_RETRY.ceiling(receive) for receive, delay in enumerate(delays, start=1)), delays
    reliability.record(
        "Queue faults",
        f"fan-out fails on every receive: {fault} (real queue)",
        f"{len(lost)} item(s) failed (fanout_failed) on the 5th receive, {20 - len(lost)} succeeded; job complete, "
        "announced once; DLQ empty",
        **figures,
        receives=stats["records_delivered"],
    )
