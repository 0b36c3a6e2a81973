"""The worker's side of bulk jobs: one queue message at a time, an item taken from ``queued`` to a final status.

``ItemProcessor.handle`` reads a message (an item, a control message, or something nobody can read), claims the
item, generates its image on the shared engine (``ImageService``), records the outcome with the job's counters,
announces what happened (events, and the job's completion with its webhook), and answers with an ``Outcome``:
acknowledge, retry after N seconds, or reject (recorded on the item, or the message moved to the dead-letter
queue with the reason). Every item is idempotent under redelivery: its state moves only through conditional
transitions, its image id derives from job id + index, and an item already settled is acknowledged without
another upstream call.

Over ~300 lines on purpose: it is one state machine (claim, generate, record, announce, and the control messages
that cancel and complete), read top to bottom; its ports (the ``Protocol`` classes) and ``Outcome`` sit with it
because they are its vocabulary, and the in-memory fakes of ``tests/support/job_fakes.py`` implement them.

Not here: submitting, reading and canceling jobs (``imagegen.jobs``, the API's side), the fan-out of a job's
items into messages (``imagegen.fanout``), the SQS batch and its partial response (the worker's entry point).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Protocol

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import ValidationError

from imagegen.budget import Deadline
from imagegen.entities import (
    ANNOUNCE_AFTER_S,
    Item,
    ItemStore,
    Job,
    JobUnavailable,
    LeaseHeld,
    TransitionConflict,
)
from imagegen.errors import (
    ContentBlockedError,
    ServiceError,
    UpstreamBadResponseError,
)
from imagegen.jobs import direct_job_id, job_document, with_seed
from imagegen.models import (
    CONTROL_KEYS,
    MAX_JOB_ITEMS,
    CancelOrder,
    ControlMessage,
    FanoutMessage,
    ImageDocument,
    ImageRecord,
    ImageRequest,
    ItemError,
    JobMessage,
)
from imagegen.observability import shared_metrics
from imagegen.retry import queue_delay
from imagegen.service import BLOCKED_EVENT, blocked_event, item_image_id

logger = Logger(child=True)
metrics = shared_metrics()

MIN_ITEM_TIME_S = 15.0  # an item does not start with less time left in the invocation than this
# A paid 200 without a usable output may be a passing fault: retried once per item, never more (each try is paid).
MAX_BAD_OUTPUT_RETRIES = 1
MIN_CANCEL_PAGE_TIME_S = 5.0  # a page of cancelations (100 items, two transactions) does not start with less


def _names_item(body: str) -> tuple[str | None, int | None]:
    """The job and index an unreadable message names, if it names them at all (read leniently: the message is
    already known to be invalid, and its item is where the failure belongs)."""
    try:
        raw = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(raw, dict):
        return None, None
    job_id, index = raw.get("job_id"), raw.get("index")
    if isinstance(job_id, str) and isinstance(index, int) and not isinstance(index, bool):
        return job_id, index
    return None, None


def _is_control(body: str) -> bool:
    """A control message (``{"cancel": …}``, ``{"announce": …}``, ``{"blocked": …}``), told apart by its keys."""
    try:
        raw = json.loads(body)
    except ValueError:
        return False
    return isinstance(raw, dict) and bool(CONTROL_KEYS & raw.keys())


class OutcomeKind(Enum):
    ACK = "ack"  # done with the message: delete it
    RETRY = "retry"  # put it back, visible again after ``after_s``
    REJECT = "reject"  # it can never be processed: already recorded on its item or dead-lettered


@dataclass(frozen=True)
class Outcome:
    """What became of one message, for the entry point to tell the queue. Build with the named constructors."""

    kind: OutcomeKind
    after_s: int = 0
    why: str = ""

    @classmethod
    def ack(cls) -> Outcome:
        return cls(OutcomeKind.ACK)

    @classmethod
    def retry(cls, after_s: int, why: str) -> Outcome:
        return cls(OutcomeKind.RETRY, max(0, int(after_s)), why)

    @classmethod
    def reject(cls, why: str) -> Outcome:
        return cls(OutcomeKind.REJECT, why=why)

    @property
    def retries(self) -> bool:
        return self.kind is OutcomeKind.RETRY


class ImageGenerator(Protocol):
    """What the item processor needs of the image service (``ImageService``; a fake in the unit tests)."""

    def generate_record(
        self,
        request: ImageRequest,
        deadline: Deadline,
        *,
        image_id: str | None = None,
        key_stem: str | None = None,
        store: bool = True,
    ) -> ImageRecord: ...

    def record_item(self, record: ImageRecord) -> dict[str, Any]: ...

    def document(self, record: ImageRecord) -> ImageDocument: ...


class EventSink(Protocol):
    def publish(self, detail_type: str, detail: dict[str, Any]) -> object: ...


class WebhookDelivery(Protocol):
    @property
    def delivered(self) -> bool: ...

    @property
    def attempts(self) -> int: ...


class WebhookSink(Protocol):
    def deliver(self, url: str, message_id: str, payload: dict[str, Any]) -> WebhookDelivery: ...


class Expander(Protocol):
    """What the item processor needs of the fan-out (``FanOut``): a direct message of several images made a job."""

    def from_message(self, message: JobMessage, message_id: str) -> str: ...

    def give_up(self, message: FanoutMessage, attempts: int) -> int | None: ...


class WorkQueue(Protocol):
    """The jobs queue as the item processor uses it: its dead-letter queue, and control messages to itself."""

    def dead_letter(self, body: str, reason: str, message_id: str) -> None: ...

    def send_control(self, message: ControlMessage) -> None: ...


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "message"
    return f"{where}: {first.get('msg', 'invalid')}"


class ItemProcessor:
    """The worker side: one queue message, one item, exactly one terminal state."""

    def __init__(
        self,
        repository: ItemStore,
        images: ImageGenerator,
        events: EventSink,
        webhooks: WebhookSink,
        queue: WorkQueue,
        *,
        max_receive_count: int = 5,
        lease_margin_s: float = 35.0,
        expander: Callable[[], Expander] | None = None,
    ) -> None:
        # The fan-out, built when a message first needs it (it announces through this processor: no cycle).
        self._expander = expander
        self._repository = repository
        self._images = images
        self._events = events
        self._webhooks = webhooks
        self._queue = queue
        self._max_receive_count = max_receive_count
        self._lease_margin_s = lease_margin_s

    def handle(self, body: str, *, message_id: str, receive_count: int, deadline: Deadline) -> Outcome:
        """One message body as the queue delivered it: parse it, then process it (or reject it)."""
        if _is_control(body):
            return self._control(body, message_id, deadline, receive_count)
        try:
            message = JobMessage.model_validate_json(body)
        except ValidationError as exc:
            why = f"the message does not match the job message schema: {_first_error(exc)}"
            return self._reject(body, why, message_id)
        return self.process(message, message_id=message_id, receive_count=receive_count, deadline=deadline, body=body)

    def process(
        self,
        message: JobMessage,
        *,
        message_id: str,
        receive_count: int,
        deadline: Deadline,
        body: str | None = None,
    ) -> Outcome:
        job_id, index = message.job_id, message.index if message.index is not None else 0
        request = message.request
        if job_id is None and request.num_images > 1:
            return self._several(message, message_id, receive_count)
        if job_id is None:
            job_id = self._ensure_direct_job(message, message_id)
            request = with_seed(message.request, entropy=message_id)
        if deadline.remaining() < MIN_ITEM_TIME_S and receive_count < self._max_receive_count:
            # Put back for an invocation with more time, but never on the last receive: SQS would then move the
            # message to the dead-letter queue with its item never started and the job never complete. There it
            # is tried with the time left: generation keeps to the deadline, so the item still ends terminal.
            return Outcome.retry(0, "not enough time left in this invocation")
        # The item is held for as long as this invocation can live (its deadline, i.e. the function's Timeout as
        # Lambda reports it, less the reserve) plus the margin: a live delivery always finishes within its lease.
        lease_s = deadline.remaining() + self._lease_margin_s
        try:
            # First delivery, the usual case: claim without reading first (one round trip).
            self._repository.claim(job_id, index, lease_s=lease_s)
            item = Item(
                job_id,
                index,
                "running",
                request,
                attempts=1,
                correlation_id=message.correlation_id,
                request_index=message.request_index,
                image_index=message.image_index,
            )
        except (TransitionConflict, JobUnavailable):
            claimed = self._look_again(job_id, index, lease_s, receive_count)
            if claimed is None:
                why = f"job {job_id} has no item {index}"
                return self._reject(
                    body if body is not None else message.model_dump_json(exclude_none=True), why, message_id
                )
            if isinstance(claimed, Outcome):
                return claimed
            item = claimed
        return self._run(item, receive_count, deadline, message.correlation_id)

    def _several(self, message: JobMessage, message_id: str, receive_count: int) -> Outcome:
        """A direct producer's message of ``num_images`` over 1: the fan-out makes it a job of that many items, each
        sent as its own message. A failure is retried whole (safe: the job's id derives from the message id, and
        its item rows and messages are written conditionally and claimed); on the last receive the fan-out gives up
        on what it could not queue, so the job still completes."""
        if self._expander is None:
            return self._reject(
                message.model_dump_json(exclude_none=True), "num_images over 1 needs the fan-out", message_id
            )
        expander = self._expander()
        try:
            expander.from_message(message, message_id)
        except Exception:
            logger.exception("a message of several images could not be made a job", message_id=message_id)
            if receive_count < self._max_receive_count:
                return Outcome.retry(queue_delay(receive_count), "the job of several images is not fanned out yet")
            job_id = direct_job_id(message_id)
            if expander.give_up(FanoutMessage(job_id=job_id), receive_count) is None:
                self._queue.dead_letter(
                    message.model_dump_json(exclude_none=True), "its job could not be created", message_id
                )
        return Outcome.ack()

    def _reject(self, body: str, why: str, message_id: str) -> Outcome:
        """A message that can never be processed: record the failure on its item when it names one still open,
        else move it to the dead-letter queue with the reason. Either way the queue is done with it."""
        metrics.add_metric(name="InvalidMessages", unit=MetricUnit.Count, value=1)
        logger.warning("invalid message", message_id=message_id, reason=why[:300])
        job_id, index = _names_item(body)
        if job_id is not None and index is not None:
            item = self._repository.get_item(job_id, index) if 0 <= index < MAX_JOB_ITEMS else None
            if item is not None and item.status in ("queued", "running"):
                error = ItemError(code="invalid_message", message=why[:500])
                try:
                    completed = self._repository.transition(item, "failed", error=error)
                except TransitionConflict:
                    return Outcome.retry(1, "the item moved under us; look again")
                if completed:
                    self.announce(job_id)
                return Outcome.reject(why)
        self._queue.dead_letter(body, why, message_id)
        return Outcome.reject(why)

    # ------------------------------------------------------------------------------------------ control messages
    def _control(self, body: str, message_id: str, deadline: Deadline, receive_count: int = 1) -> Outcome:
        try:
            control = ControlMessage.model_validate_json(body)
        except ValidationError as exc:
            return self._reject(body, f"the control message is invalid: {_first_error(exc)}", message_id)
        if control.blocked is not None:  # an image the API's moderation blocked: announced from here
            notice = control.blocked
            detail = {"image_id": notice.image_id, "target": notice.target, "categories": notice.categories}
            self._events.publish(BLOCKED_EVENT, {**detail, "job_id": None, "index": None, "correlation_id": None})
            return Outcome.ack()
        if control.announce is not None:
            job = self._repository.get_job(control.announce.job_id)
            if job is not None and job.completed_at is not None:
                self.announce(job.id)
            return Outcome.ack()
        assert control.cancel is not None
        return self._cancel(control.cancel, body, message_id, deadline, receive_count)

    def _cancel(
        self, order: CancelOrder, body: str, message_id: str, deadline: Deadline, receive_count: int = 1
    ) -> Outcome:
        """Settle a canceled job's queued items, a page at a time, within this invocation's deadline; when out of
        time, continue in a new control message from where this one stopped. Safe to replay: only items still
        queued move, and the job completes (and is announced) once."""
        job = self._repository.get_job(order.job_id)
        if job is None:
            return Outcome.ack()  # expired (TTL): nothing left to cancel
        if not job.canceled:
            return self._reject(body, f"job {order.job_id} is not canceled", message_id)
        cursor = order.cursor
        while True:
            if deadline.remaining() < MIN_CANCEL_PAGE_TIME_S:
                self._queue.send_control(ControlMessage(cancel=CancelOrder(job_id=order.job_id, cursor=cursor)))
                logger.info("cancelation continues in a new message", job_id=order.job_id)
                return Outcome.ack()
            cursor = self._repository.cancel_queued_page(order.job_id, cursor)
            if cursor is None:
                break
        self.finish(order.job_id)
        if receive_count > 1:  # an earlier delivery of this order failed: maybe after it completed the job
            job = self._repository.get_job(order.job_id)
            lease_s = deadline.remaining() + self._lease_margin_s
            if job is not None and (left := self._announce_if_left(job, receive_count, lease_s)) is not None:
                return left
        return Outcome.ack()

    def _look_again(self, job_id: str, index: int, lease_s: float, receive_count: int = 1) -> Item | Outcome | None:
        """The claim failed: a redelivery, a canceled job, or an item a dead invocation left running. None when
        there is no such item (nothing to record a failure on)."""
        item, job = self._repository.get_item_and_job(job_id, index)
        if item is None:
            return None
        if item.status in ("succeeded", "failed", "canceled"):
            metrics.add_metric(name="DuplicateDeliveries", unit=MetricUnit.Count, value=1)
            if job is not None and job.remaining == 0 and job.completed_at is None:
                self.finish(job_id)  # e.g. a cancelation whose completion the API did not get to write
            elif job is not None and (left := self._announce_if_left(job, receive_count, lease_s)) is not None:
                return left
            return Outcome.ack()  # done already: a redelivery never calls the upstream again
        if job is None:
            return Outcome.ack()  # the job expired (TTL): nothing left to record the item on
        if job.canceled:
            self._settle(item, "canceled")
            return Outcome.ack()
        try:
            if item.status == "queued":
                self._repository.transition(item, "running", lease_s=lease_s)
            else:
                self._repository.reclaim(item, lease_s=lease_s)  # the previous attempt died with the item running
        except LeaseHeld as held:
            # A duplicate delivery while the first is still generating: never a second upstream call.
            return Outcome.retry(int(held.seconds_left) + 1, "another delivery is generating this item")
        except TransitionConflict:
            return Outcome.retry(1, "the item moved under us; look again")
        return item

    def _run(self, item: Item, receive_count: int, deadline: Deadline, correlation_id: str | None) -> Outcome:
        try:
            record = self._images.generate_record(
                item.request,
                deadline,
                image_id=item_image_id(item.job_id, item.index),
                key_stem=f"images/jobs/{item.job_id}/{item.index:04d}",  # a replay overwrites, never duplicates
                store=False,  # the record is written in the item's final transaction
            )
        except ServiceError as exc:
            last_receive = receive_count >= self._max_receive_count
            bad_output = isinstance(exc, UpstreamBadResponseError)
            if bad_output and item.bad_outputs >= MAX_BAD_OUTPUT_RETRIES:
                # Every try of a 200 without a usable output is paid: one more, and no further.
                message = f"{exc.message} (again: {item.bad_outputs + 1} paid calls without an image, not retried)"
                self._settle(item, "failed", ItemError(code=exc.code, message=message), correlation_id)
                return Outcome.ack()
            if exc.retryable and not last_receive:
                # The upstream's Retry-After up to the longest the queue holds a message back: the item's retry_at
                # is then when its message really comes back.
                delay = queue_delay(receive_count, exc.retry_after)
                self._defer(item, delay, bad_output=bad_output)
                logger.info("item will be retried", job_id=item.job_id, index=item.index, code=exc.code, delay_s=delay)
                return Outcome.retry(delay, exc.code)
            message = (
                exc.message
                if not (exc.retryable and last_receive)
                else f"{exc.message} (gave up after {receive_count} attempts)"
            )
            settled = self._settle(item, "failed", ItemError(code=exc.code, message=message), correlation_id)
            if settled and isinstance(exc, ContentBlockedError):
                detail = blocked_event(
                    exc, job_id=item.job_id, index=item.index, **item.origin, correlation_id=correlation_id
                )
                self._events.publish(BLOCKED_EVENT, detail)
            return Outcome.ack()
        except Exception:
            logger.exception("unexpected error while generating an item", job_id=item.job_id, index=item.index)
            if receive_count < self._max_receive_count:
                delay = queue_delay(receive_count)
                self._defer(item, delay)
                return Outcome.retry(delay, "internal_error")
            error = ItemError(code="internal_error", message="an unexpected error occurred; the item was not generated")
            self._settle(item, "failed", error, correlation_id)
            return Outcome.ack()
        self._settle(item, "succeeded", record=record, correlation_id=correlation_id)
        return Outcome.ack()

    def _settle(
        self,
        item: Item,
        status: str,
        error: ItemError | None = None,
        correlation_id: str | None = None,
        record: Any = None,
    ) -> bool:
        """Record a terminal state, announce it, and complete the job when it was the last item. False when another
        delivery had settled it already (nothing recorded or announced here)."""
        image_item = self._images.record_item(record) if record is not None else None
        try:
            completed = self._repository.transition(
                item,
                status,  # type: ignore[arg-type]
                error=error,
                record=record,
                also_put=image_item,
            )
        except TransitionConflict:
            logger.info("item already settled by another delivery", job_id=item.job_id, index=item.index)
            return False
        metrics.add_metric(name=f"Items{status.capitalize()}", unit=MetricUnit.Count, value=1)
        if status == "succeeded" and record is not None:
            self._events.publish(
                "Image Generated",
                {
                    "job_id": item.job_id,
                    "index": item.index,
                    **item.origin,
                    "correlation_id": correlation_id,
                    "image": self._images.document(record).model_dump(mode="json"),
                },
            )
        elif status == "failed" and error is not None:
            self._events.publish(
                "Image Failed",
                {
                    "job_id": item.job_id,
                    "index": item.index,
                    **item.origin,
                    "correlation_id": correlation_id,
                    "error": error.model_dump(mode="json"),
                },
            )
        if completed:
            self.announce(item.job_id)
        return True

    def finish(self, job_id: str) -> None:
        """Complete the job if nothing remains (after cancelations, which move many items at once)."""
        if self._repository.complete_if_done(job_id) is not None:
            self.announce(job_id)

    def _announce_if_left(self, job: Job, receive_count: int, lease_s: float) -> Outcome | None:
        """A completed job whose announcement left no trace (``announced``): the delivery that completed it may
        have failed before it announced (S3 or DynamoDB unavailable, the function stopped). Its own message, which
        it did not delete, comes back after the queue's visibility timeout, and so may other messages of the job.

        - Within ``ANNOUNCE_AFTER_S`` of the completion the completer may still be running. A redelivery (receive
          count > 1: perhaps the completer's own message) is put back until then; a first delivery (a duplicate)
          is done with: the completer's own message stays to come back.
        - After it, the completer has ended whatever its timeout: the one delivery that takes the job's
          announcement claim (a conditional write) announces in its place; any other is done with. A claimer that
          fails too lets its claim lapse after its lease, and its message comes back.

        None when there is nothing to announce (the caller acknowledges)."""
        if job.completed_at is None or self.announced(job):
            return None
        age_s = (datetime.now(UTC) - job.completed_at).total_seconds()
        if age_s < ANNOUNCE_AFTER_S:
            if receive_count > 1:
                return Outcome.retry(int(ANNOUNCE_AFTER_S - age_s) + 1, "the job's completer may still announce it")
            return None
        if not self._repository.claim_announcement(job.id, time.time() + lease_s):
            return None
        logger.warning("announcing a completion its delivery did not", job_id=job.id)
        self.announce(job.id)
        return Outcome.ack()

    def announced(self, job: Job) -> bool:
        """Whether a completed job's announcement got as far as leaving its trace. Here, where the announcement
        records nothing, always: only a processor whose announcement records something (``AnnouncingProcessor``:
        its results file, the first step) can tell. What follows the trace is not done again."""
        return True

    def announce(self, job_id: str) -> None:
        """The job just completed: "Job Completed" on the bus, and the signed webhook when it has one. Only the
        worker announces: the API hands a completion it made to the worker (an announce control message)."""
        job = self._repository.get_job(job_id)
        if job is None:
            return
        document = job_document(job).model_dump(mode="json", exclude={"items", "next_cursor"})
        self._events.publish("Job Completed", {"job": document})
        logger.info("job completed", job_id=job_id, status=job.status)
        if job.webhook is not None:
            delivery = self._webhooks.deliver(job.webhook.url, job.id, document)
            self._repository.record_webhook(job.id, "delivered" if delivery.delivered else "failed", delivery.attempts)
            if not delivery.delivered:
                metrics.add_metric(name="WebhooksFailed", unit=MetricUnit.Count, value=1)

    def _ensure_direct_job(self, message: JobMessage, message_id: str) -> str:
        job_id = direct_job_id(message_id)
        job = Job(
            id=job_id,
            total=1,
            created_at=datetime.now(UTC),
            counts=None,  # type: ignore[arg-type]
            remaining=1,
            direct=True,
        )
        correlation = [message.correlation_id]
        if not self._repository.create(job, [with_seed(message.request, entropy=message_id)], correlation):
            self._repository.ensure_item(
                job_id, 0, with_seed(message.request, entropy=message_id), message.correlation_id
            )
        return job_id

    def _defer(self, item: Item, delay_s: int, *, bad_output: bool = False) -> None:
        """Back to queued until the retry (its lease released): the item is waiting, not running."""
        try:
            self._repository.defer(item, datetime.now(UTC) + timedelta(seconds=delay_s), bad_output=bad_output)
        except Exception:  # noqa: BLE001 - the item stays running and its lease simply expires
            logger.warning("could not defer the item", job_id=item.job_id, index=item.index)
