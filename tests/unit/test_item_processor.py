"""The item state machine, on in-memory fakes: no stack, no sockets, well under a second for the file.

Each case is one delivery of one queue message to ``ItemProcessor.handle``, and checks the outcome the queue is
told, the item's and job's state afterwards, and the paid upstream calls (``FakeImages.calls``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from imagegen.adapters.queue import message_body
from imagegen.budget import Deadline
from imagegen.entities import Job
from imagegen.errors import (
    ImageRejectedError,
    UpstreamBadResponseError,
    UpstreamRejectedError,
    UpstreamUnavailableError,
)
from imagegen.item_processor import ItemProcessor, Outcome, OutcomeKind
from imagegen.models import ImageRequest, JobMessage
from imagegen.retry import MAX_QUEUE_DELAY_S
from support.job_fakes import FakeEvents, FakeImages, FakeQueue, FakeWebhooks, MemoryItemStore

JOB_ID = "job_" + "a" * 32
MAX_RECEIVES = 5


class World:
    """A processor wired to fakes, with a one-item job (or more) recorded as the API records one."""

    def __init__(self, items: int = 1, webhook: str | None = None) -> None:
        self.now = 1_000_000.0
        self.store = MemoryItemStore(clock=lambda: self.now)
        self.images = FakeImages()
        self.events = FakeEvents()
        self.webhooks = FakeWebhooks()
        self.queue = FakeQueue()
        self.processor = ItemProcessor(
            self.store,
            self.images,
            self.events,
            self.webhooks,
            self.queue,
            max_receive_count=MAX_RECEIVES,
            lease_margin_s=35,
        )
        from imagegen.models import WebhookInfo

        job = Job(
            id=JOB_ID,
            total=items,
            created_at=datetime.now(UTC),
            counts=None,  # type: ignore[arg-type]  # set by the store
            remaining=items,
            webhook=WebhookInfo(url=webhook) if webhook else None,
        )
        self.store.create(job, [ImageRequest(prompt=f"p{i}", seed=i) for i in range(items)])

    def deliver(self, index: int = 0, *, receive_count: int = 1, body: str | None = None, time_left_s: float = 120):
        if body is None:
            message = JobMessage(request=ImageRequest(prompt=f"p{index}", seed=index), job_id=JOB_ID, index=index)
            body = message_body(message)
        deadline = Deadline.after(time_left_s, clock=lambda: 0.0)
        return self.processor.handle(body, message_id=f"m{index}", receive_count=receive_count, deadline=deadline)


@pytest.fixture
def world() -> World:
    return World()


def test_outcomes_are_values_built_by_name():
    assert Outcome.ack().kind is OutcomeKind.ACK and not Outcome.ack().retries
    retry = Outcome.retry(30, "upstream_unavailable")
    assert (retry.kind, retry.after_s, retry.why, retry.retries) == (
        OutcomeKind.RETRY,
        30,
        "upstream_unavailable",
        True,
    )
    assert Outcome.reject("unreadable").kind is OutcomeKind.REJECT


def test_first_delivery_generates_settles_and_completes_the_job():
    # Given a one-item job with a webhook
    world = World(webhook="https://hooks.example.com/x")
    # When its message is delivered
    outcome = world.deliver()
    # Then one paid call, the item succeeded with its record, the job completed and was announced once
    assert outcome == Outcome.ack()
    assert world.images.calls == 1
    item = world.store.item(JOB_ID)
    assert item.status == "succeeded" and item.record is not None and item.attempts == 1
    job = world.store.job(JOB_ID)
    assert job.counts.succeeded == 1 and job.remaining == 0 and job.completed_at is not None
    assert world.events.types() == ["Image Generated", "Job Completed"]
    assert world.webhooks.sent == [("https://hooks.example.com/x", JOB_ID)]
    assert world.store.webhooks[JOB_ID] == ("delivered", 1)


def test_a_succeeded_item_writes_the_image_row_the_images_table_writes():
    # Given a one-item job
    world = World()
    # When its message is delivered and the image is made
    assert world.deliver() == Outcome.ack()
    # Then the image's row written with the item's last transition is the images table's own (the fake reuses it)
    [row] = world.store.image_records
    record = world.store.item(JOB_ID).record
    assert record is not None
    assert row["pk"] == {"S": f"IMAGE#{record.id}"} and row["entity"] == {"S": "image"} and "record" in row


def test_an_item_keeps_its_request_as_the_jobs_table_gives_it_back():
    # Given a job item with the options whose stored form differs from the request (a float kept as Decimal)
    world = World()
    request = ImageRequest(prompt="a fox", aspect_ratio="16:9", megapixels=0.3, output_format="webp", output_quality=70)
    world.store.ensure_item(JOB_ID, 1, request, "corr-1")
    # When it is read back
    item = world.store.item(JOB_ID, 1)
    # Then it is the request, through the table's row and reader
    assert item.request == request and item.status == "queued" and item.correlation_id == "corr-1"


def test_redelivery_of_a_finished_item_never_calls_the_upstream_again(world):
    world.deliver()
    # When the same message comes again (at-least-once delivery)
    outcome = world.deliver(receive_count=2)
    # Then it is acknowledged with no call and no second announcement
    assert outcome == Outcome.ack()
    assert world.images.calls == 1
    assert world.events.types() == ["Image Generated", "Job Completed"]


def test_duplicate_while_leased_waits_out_the_lease_without_paying(world):
    # Given a delivery that claimed the item and is still generating (its lease is live)
    world.store.claim(JOB_ID, 0, lease_s=155)
    # When a duplicate arrives
    outcome = world.deliver(receive_count=2)
    # Then it is put back until the lease runs out, and nobody called the upstream
    assert outcome.kind is OutcomeKind.RETRY and 155 <= outcome.after_s <= 156
    assert world.images.calls == 0
    assert world.store.item(JOB_ID).status == "running"


def test_item_left_running_by_a_dead_delivery_is_taken_over_once_its_lease_expired(world):
    world.store.claim(JOB_ID, 0, lease_s=155)
    world.now += 200  # the first delivery died; its lease ran out
    assert world.deliver(receive_count=2) == Outcome.ack()
    item = world.store.item(JOB_ID)
    assert item.status == "succeeded" and item.attempts == 2 and world.images.calls == 1


def test_canceled_job_settles_the_item_canceled_without_a_call(world):
    # Given a job flagged canceled whose item is still queued
    world.store.jobs[JOB_ID].canceled = True
    # When its message is delivered
    outcome = world.deliver()
    # Then the item is canceled, the job completes (canceled) and is announced, nothing is paid
    assert outcome == Outcome.ack()
    assert world.images.calls == 0
    assert world.store.item(JOB_ID).status == "canceled"
    job = world.store.job(JOB_ID)
    assert job.status == "canceled" and job.completed_at is not None
    assert world.events.types() == ["Job Completed"]


def test_retryable_failure_puts_the_item_back_to_queued_until_its_retry_at(world):
    # Given an upstream that is rate limited for an hour
    world.images.fail_next(UpstreamUnavailableError("down", retry_after=3600))
    # When the item is delivered
    outcome = world.deliver()
    # Then the message comes back in an hour; meanwhile the item is honestly queued, waiting, its lease released
    assert outcome == Outcome.retry(3600, "upstream_unavailable")
    item = world.store.item(JOB_ID)
    assert item.status == "queued" and item.lease_until == 0.0 and item.retry_at is not None
    assert 3590 < (item.retry_at - datetime.now(UTC)).total_seconds() <= 3600
    job = world.store.job(JOB_ID)
    assert (job.counts.queued, job.counts.running, job.counts.waiting) == (1, 0, 1)
    assert job.status == "queued"
    assert world.events.types() == []  # no "Image Failed" on a retry


def test_a_retry_after_beyond_the_queues_longest_delay_waits_that_long_and_says_so(world):
    # Given an upstream whose quota is replenished in a day (its Retry-After, as the Flux client clamps it)
    world.images.fail_next(UpstreamUnavailableError("quota", retry_after=86_400))
    # When the item is delivered
    outcome = world.deliver()
    # Then its message is put back for the longest the queue allows (SQS: 12 h less a margin), and the item's
    # retry_at says that time, not a day: it is when the message comes back and the item is tried again
    assert outcome == Outcome.retry(MAX_QUEUE_DELAY_S, "upstream_unavailable")
    item = world.store.item(JOB_ID)
    assert item.status == "queued" and item.retry_at is not None
    assert MAX_QUEUE_DELAY_S - 10 < (item.retry_at - datetime.now(UTC)).total_seconds() <= MAX_QUEUE_DELAY_S


def test_a_waiting_item_is_claimed_from_queued_by_the_next_delivery(world):
    world.images.fail_next(UpstreamUnavailableError("down", retry_after=60))
    world.deliver()
    # When the message comes back after its delay
    outcome = world.deliver(receive_count=2)
    # Then the item is claimed again and succeeds; it no longer counts as waiting
    assert outcome == Outcome.ack()
    item = world.store.item(JOB_ID)
    assert item.status == "succeeded" and item.retry_at is None and item.attempts == 2
    job = world.store.job(JOB_ID)
    assert (job.counts.queued, job.counts.waiting, job.counts.succeeded) == (0, 0, 1)
    assert world.images.calls == 2


def test_a_job_with_one_item_waiting_and_one_running_reads_running():
    world = World(items=2)
    world.images.fail_next(UpstreamUnavailableError("down", retry_after=60))
    world.deliver(0)
    world.store.claim(JOB_ID, 1, lease_s=100)
    job = world.store.job(JOB_ID)
    assert job.status == "running"
    assert (job.counts.queued, job.counts.waiting, job.counts.running) == (1, 1, 1)


def test_canceling_a_job_cancels_its_waiting_item_and_the_counts_agree(world):
    world.images.fail_next(UpstreamUnavailableError("down", retry_after=60))
    world.deliver()
    world.store.jobs[JOB_ID].canceled = True  # the flag only: the worker settles the item on its next delivery
    assert world.deliver(receive_count=2) == Outcome.ack()
    job = world.store.job(JOB_ID)
    assert (job.counts.queued, job.counts.waiting, job.counts.canceled) == (0, 0, 1)
    assert job.status == "canceled" and world.images.calls == 1


def test_permanent_failure_is_recorded_and_acknowledged(world):
    world.images.fail_next(UpstreamRejectedError("the Flux Schnell API rejected the request: bad prompt"))
    outcome = world.deliver()
    assert outcome == Outcome.ack()
    item = world.store.item(JOB_ID)
    assert item.status == "failed" and item.error is not None and item.error.code == "upstream_rejected"
    assert world.store.job(JOB_ID).status == "failed"
    assert world.events.types() == ["Image Failed", "Job Completed"]
    assert world.images.calls == 1


def test_last_receive_fails_the_item_instead_of_retrying(world):
    world.images.fail_next(UpstreamUnavailableError("down", retry_after=5))
    outcome = world.deliver(receive_count=MAX_RECEIVES)
    assert outcome == Outcome.ack()
    item = world.store.item(JOB_ID)
    assert item.status == "failed" and item.error is not None
    assert item.error.code == "upstream_unavailable" and f"gave up after {MAX_RECEIVES} attempts" in item.error.message


def test_not_enough_time_puts_the_message_back_at_once_before_the_last_receive(world):
    assert world.deliver(time_left_s=5) == Outcome.retry(0, "not enough time left in this invocation")
    assert world.store.item(JOB_ID).status == "queued" and world.images.calls == 0


def test_unknown_item_is_dead_lettered_with_the_reason(world):
    body = json.dumps({"request": {"prompt": "x"}, "job_id": JOB_ID, "index": 42})
    outcome = world.deliver(body=body)
    assert outcome.kind is OutcomeKind.REJECT
    assert world.queue.messages == [(body, f"job {JOB_ID} has no item 42")]
    assert world.images.calls == 0


def test_invalid_message_naming_its_item_fails_the_item_instead_of_the_dlq(world):
    body = json.dumps({"request": {"prompt": "x", "stepz": 3}, "job_id": JOB_ID, "index": 0})
    outcome = world.deliver(body=body)
    assert outcome.kind is OutcomeKind.REJECT and "stepz" in outcome.why
    item = world.store.item(JOB_ID)
    assert item.status == "failed" and item.error is not None and item.error.code == "invalid_message"
    assert world.queue.messages == []
    assert world.events.types() == ["Job Completed"]


def test_unreadable_message_is_dead_lettered(world):
    outcome = world.deliver(body="not json at all")
    assert outcome.kind is OutcomeKind.REJECT
    assert [body for body, _ in world.queue.messages] == ["not json at all"]
    assert "job message schema" in world.queue.messages[0][1]


# ------------------------------------------------------------------------------------------ paid refusals
def test_a_refused_output_is_permanent_after_one_paid_call(world):
    # Given a paid 200 whose output the service refuses (a URL not https, an address, not an image, ...)
    world.images.fail_next(ImageRejectedError("the upstream's output URL scheme 'http' is refused (https only)"))
    # When the item is delivered
    outcome = world.deliver()
    # Then it fails at once: acknowledged, never retried, one paid call
    assert outcome == Outcome.ack()
    item = world.store.item(JOB_ID)
    assert item.status == "failed" and item.error is not None and item.error.code == "image_rejected"
    assert world.images.calls == 1


def test_a_200_without_output_is_retried_once_per_item_then_failed(world):
    # Given an upstream that keeps answering 200 without a usable output
    no_output = UpstreamBadResponseError("the Flux Schnell API answered 200 without a usable output URL")
    world.images.fail_next(no_output, no_output, no_output)
    # When the message is delivered, then redelivered after the backoff
    first = world.deliver()
    second = world.deliver(receive_count=2)
    # Then the first is retried (the count kept on the item), the second fails the item: two paid calls in all
    assert first.kind is OutcomeKind.RETRY and first.why == "upstream_bad_response"
    assert second == Outcome.ack()
    item = world.store.item(JOB_ID)
    assert item.bad_outputs == 1
    assert item.status == "failed" and item.error is not None and item.error.code == "upstream_bad_response"
    assert "2 paid calls" in item.error.message
    assert world.images.calls == 2


def test_other_retryable_failures_do_not_use_up_the_bad_output_retry(world):
    world.images.fail_next(
        UpstreamUnavailableError("down", retry_after=1),
        UpstreamBadResponseError("no output"),
        UpstreamUnavailableError("down", retry_after=1),
    )
    outcomes = [world.deliver(receive_count=n) for n in (1, 2, 3, 4)]
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY] * 3 + [OutcomeKind.ACK]
    assert world.store.item(JOB_ID).status == "succeeded" and world.images.calls == 4


# ------------------------------------------------------------------------------------------ cancel, announce
class SteppingClock:
    """A clock that moves ``step`` seconds each time it is read: each page of cancelations takes time."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def cancel_body(cursor: str | None = None) -> str:
    order: dict[str, str] = {"job_id": JOB_ID}
    if cursor is not None:
        order["cursor"] = cursor
    return json.dumps({"cancel": order})


def test_cancel_message_settles_every_queued_item_completes_and_announces_once():
    # Given a job of 250 items, two already finished, canceled by the API (the flag only)
    world = World(items=250, webhook="https://hooks.example.com/x")
    world.deliver(0)
    world.deliver(1)
    assert world.store.cancel(JOB_ID)
    # When the worker gets the cancel control message
    outcome = world.deliver(body=cancel_body())
    # Then every queued item is canceled, in pages, the job completes and is announced once, nothing is paid for
    assert outcome == Outcome.ack()
    job = world.store.job(JOB_ID)
    assert (job.counts.succeeded, job.counts.canceled, job.counts.queued, job.remaining) == (2, 248, 0, 0)
    assert job.status == "canceled" and job.completed_at is not None
    assert world.store.pages == 3
    assert world.events.types().count("Job Completed") == 1 and len(world.webhooks.sent) == 1
    assert world.images.calls == 2
    # And a replay of the message moves nothing and announces nothing again
    assert world.deliver(body=cancel_body()) == Outcome.ack()
    assert world.events.types().count("Job Completed") == 1 and len(world.webhooks.sent) == 1


def test_cancel_out_of_time_continues_in_a_new_message_from_where_it_stopped():
    world = World(items=250)
    world.store.cancel(JOB_ID)
    # Given an invocation with time for two pages only (each read of the clock takes 4 s; 5 s are needed per page)
    deadline = Deadline.after(10, clock=SteppingClock(step=2))
    # When the cancel message is handled
    outcome = world.processor.handle(cancel_body(), message_id="c", receive_count=1, deadline=deadline)
    # Then two pages were canceled, the rest is handed to a new control message with the next cursor
    assert outcome == Outcome.ack()
    assert world.store.job(JOB_ID).counts.canceled == 200 and world.store.job(JOB_ID).completed_at is None
    assert world.queue.controls == [cancel_body("200").replace(" ", "")]
    # When that continuation is handled, then the job completes
    assert world.deliver(body=world.queue.controls[0]) == Outcome.ack()
    job = world.store.job(JOB_ID)
    assert job.counts.canceled == 250 and job.completed_at is not None
    assert world.events.types() == ["Job Completed"]


def test_cancel_message_for_a_job_not_canceled_is_dead_lettered(world):
    outcome = world.deliver(body=cancel_body())
    assert outcome.kind is OutcomeKind.REJECT
    assert world.store.item(JOB_ID).status == "queued"
    assert world.queue.messages == [(cancel_body(), f"job {JOB_ID} is not canceled")]


def test_item_message_after_the_cancel_never_calls_the_upstream(world):
    world.store.cancel(JOB_ID)
    assert world.deliver() == Outcome.ack()
    assert world.images.calls == 0 and world.store.item(JOB_ID).status == "canceled"


def test_job_service_cancel_is_one_write_and_a_control_message_and_announces_nothing():
    from imagegen.jobs import JobService

    world = World(items=3)
    service = JobService(world.store, world.queue, world.images, objects=None)  # type: ignore[arg-type]
    # When the API cancels the job
    document = service.cancel(JOB_ID)
    # Then it answers at once, canceled, with the items still to be settled by the worker; nothing announced
    assert document.status == "canceled" and document.counts.queued == 3
    assert world.queue.controls == [cancel_body().replace(" ", "")]
    assert world.events.published == [] and world.webhooks.sent == []


# ------------------------------------------------------------------------------------------------ moderation
def test_blocked_item_fails_for_good_and_is_announced_once_as_image_blocked(world):
    # Given moderation blocking the item's image
    from imagegen.errors import ContentBlockedError

    blocked = ContentBlockedError("image", ["SEXUAL"])
    blocked.image_id = "img_" + "b" * 32
    world.images.fail_next(blocked)
    # When its message is delivered, and delivered again
    first = world.deliver()
    second = world.deliver(receive_count=2)
    # Then the item failed with content_blocked (acknowledged, not retried), and the block was announced once
    assert first == second == Outcome.ack()
    item = world.store.item(JOB_ID)
    assert item.status == "failed" and item.error.code == "content_blocked"
    assert world.images.calls == 1
    assert world.events.types() == ["Image Failed", "Job Completed", "Image Blocked"]
    detail = dict(world.events.published)["Image Blocked"]
    assert detail == {
        "image_id": "img_" + "b" * 32,
        "target": "image",
        "categories": ["SEXUAL"],
        "job_id": JOB_ID,
        "index": 0,
        "correlation_id": None,
    }


def test_moderation_unavailable_is_retried_like_an_upstream_outage(world):
    from imagegen.errors import ModerationUnavailableError

    world.images.fail_next(ModerationUnavailableError("content moderation is unavailable", retry_after=5))
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.RETRY and outcome.after_s == 5 and outcome.why == "moderation_unavailable"
    assert world.store.item(JOB_ID).status == "queued"
    assert "Image Blocked" not in world.events.types()


def test_a_blocked_notice_from_the_api_is_announced_as_image_blocked(world):
    from imagegen.models import BlockedNotice, ControlMessage

    notice = BlockedNotice(image_id="img_" + "c" * 32, target="prompt", categories=["HATE"])
    body = ControlMessage(blocked=notice).model_dump_json(exclude_none=True)
    assert world.deliver(body=body) == Outcome.ack()
    assert world.events.published == [
        (
            "Image Blocked",
            {
                "image_id": "img_" + "c" * 32,
                "target": "prompt",
                "categories": ["HATE"],
                "job_id": None,
                "index": None,
                "correlation_id": None,
            },
        )
    ]
    assert world.images.calls == 0


def test_a_control_message_with_two_orders_is_rejected():
    from imagegen.models import ControlMessage

    job = {"job_id": "job_" + "a" * 32}
    with pytest.raises(ValueError, match="exactly one"):
        ControlMessage.model_validate({"announce": job, "cancel": job})
    with pytest.raises(ValueError, match="exactly one"):
        ControlMessage.model_validate({})


# ------------------------------------------------------------------------------------------ several images
class FakeExpander:
    """The fan-out as the processor sees it: makes a direct message of several images a job (or fails)."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.made: list[tuple[int, str]] = []
        self.given_up: list[tuple[str, int]] = []

    def from_message(self, message: JobMessage, message_id: str) -> str:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the queue refused the items")
        self.made.append((message.request.num_images, message_id))
        return "job_" + "b" * 32

    def give_up(self, message, attempts: int) -> int | None:
        self.given_up.append((message.job_id, attempts))
        return 1


def several_world(expander: FakeExpander) -> World:
    world = World()
    world.processor._expander = lambda: expander
    return world


def test_a_direct_message_of_several_images_is_handed_to_the_fan_out_without_a_paid_call():
    expander = FakeExpander()
    world = several_world(expander)
    body = json.dumps({"request": {"prompt": "x", "num_images": 3}})
    assert world.deliver(body=body) == Outcome.ack()
    assert expander.made == [(3, "m0")]
    assert world.images.calls == 0 and world.queue.messages == []


def test_a_direct_message_of_several_images_is_retried_then_given_up_on_its_last_receive():
    from imagegen.jobs import direct_job_id

    expander = FakeExpander(failures=MAX_RECEIVES)
    world = several_world(expander)
    body = json.dumps({"request": {"prompt": "x", "num_images": 2}})
    # A failure before the last receive: the whole message comes back (safe: the job and its items are idempotent)
    assert world.deliver(body=body).retries
    assert expander.given_up == []
    # On the last receive the fan-out gives up on what it could not queue, and the message is done
    assert world.deliver(body=body, receive_count=MAX_RECEIVES) == Outcome.ack()
    assert expander.given_up == [(direct_job_id("m0"), MAX_RECEIVES)]
    assert world.images.calls == 0


def test_a_direct_message_of_one_image_still_runs_inline():
    expander = FakeExpander()
    world = several_world(expander)
    body = json.dumps({"request": {"prompt": "x", "num_images": 1}})
    assert world.deliver(body=body) == Outcome.ack()
    assert expander.made == [] and world.images.calls == 1
