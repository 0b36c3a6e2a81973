"""Bulk jobs: submitted by the API, processed item by item by the worker, on the same engine as the sync path.

Every item is idempotent under redelivery: its state moves only through conditional transitions
(``JobRepository``), its image id (hence S3 key and record) derives from job id + index, and an item that
already succeeded is acknowledged without another upstream call.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Protocol

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import ValidationError

from imagegen.adapters.job_objects import CHUNK_ITEMS, JobObjects, items_key, upload_key
from imagegen.adapters.jobs_table import JobExtras, JobRepository
from imagegen.adapters.queue import JobQueue
from imagegen.budget import Deadline
from imagegen.entities import Item, ItemStore, Job, JobUnavailable, LeaseHeld, TransitionConflict
from imagegen.errors import (
    ContentBlockedError,
    EnqueueError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceError,
    UpstreamBadResponseError,
)
from imagegen.models import (
    CONTROL_KEYS,
    MAX_JOB_ITEMS,
    MAX_SEED,
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_LINES,
    CancelOrder,
    ControlMessage,
    FanoutChunk,
    FanoutMessage,
    ImageDocument,
    ImageRecord,
    ImageRequest,
    ItemError,
    JobCounts,
    JobDocument,
    JobItemDocument,
    JobMessage,
    JobRequest,
    ResultsInfo,
    UploadDocument,
    WebhookInfo,
)
from imagegen.retry import RetryPolicy
from imagegen.service import BLOCKED_EVENT, ImageService, blocked_event, item_image_id

logger = Logger(child=True)
metrics = Metrics()

MIN_ITEM_TIME_S = 15.0  # an item does not start with less time left in the invocation than this
MAX_BACKOFF_S = 900
# 5 s doubling to 15 min, full jitter, at least 1 s (a 0 would bring the message straight back). ``attempts`` is
# not used here: the queue's maxReceiveCount bounds the receives (``last_receive``).
ITEM_RETRY = RetryPolicy(attempts=1, base_s=5, cap_s=MAX_BACKOFF_S, floor_s=1)
# A paid 200 without a usable output may be a passing fault: retried once per item, never more (each try is paid).
MAX_BAD_OUTPUT_RETRIES = 1
MIN_CANCEL_PAGE_TIME_S = 5.0  # a page of cancelations (100 items, two transactions) does not start with less
UPLOAD_URL_TTL_S = 3600  # the presigned PUT URL of an upload
UPLOAD_LIFETIME = timedelta(days=1)  # the bucket's lifecycle deletes uploads/ after a day: older ones are expired


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


def new_upload_id() -> str:
    return f"upl_{uuid.uuid4().hex}"


def direct_job_id(message_id: str) -> str:
    """The job of a message a producer put on the queue itself: derived from the SQS message id."""
    return "job_" + uuid.uuid5(uuid.NAMESPACE_URL, f"sqs-message:{message_id}").hex


def with_seed(request: ImageRequest, entropy: str | None = None) -> ImageRequest:
    """Resolve the seed once, when the item is recorded, so a replay generates the same image."""
    if request.seed is not None:
        return request
    if entropy is None:
        seed = random.SystemRandom().randrange(MAX_SEED + 1)
    else:
        seed = int(hashlib.sha256(entropy.encode()).hexdigest()[:8], 16)
    return request.model_copy(update={"seed": seed})


def job_document(
    job: Job,
    items: list[JobItemDocument] | None = None,
    next_cursor: str | None = None,
    *,
    results: ResultsInfo | None = None,
) -> JobDocument:
    return JobDocument(
        id=job.id,
        status=job.status,
        total=job.total,
        counts=job.counts,
        created_at=job.created_at,
        completed_at=job.completed_at,
        metadata=job.metadata,
        webhook=job.webhook,
        results=results,
        items=items or [],
        next_cursor=next_cursor,
    )


class JobService:
    """The API side: submit (constant time: the fan-out happens on the queue side), read (paged), cancel."""

    def __init__(
        self,
        repository: JobRepository,
        queue: JobQueue,
        images: ImageService,
        objects: JobObjects,
        *,
        allow_http_webhooks: bool = False,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        # No announcer here: the API never completes a job it told anyone of (the queue side settles cancelations
        # and announces), and a job it abandons (503, no id handed out) is announced to nobody.
        self._repository = repository
        self._queue = queue
        self._images = images
        self._objects = objects
        self._allow_http_webhooks = allow_http_webhooks
        self._now = now

    def submit(self, request: JobRequest) -> JobDocument:
        """Record the items as one object and the job as one row, and hand the fan-out to the queue in one control
        message: a constant number of AWS calls whatever the item count (an upload is also copied and counted)."""
        if request.webhook_url and not request.webhook_url.startswith("https://") and not self._allow_http_webhooks:
            raise InvalidRequestError("must be an https URL", field="webhook_url", location="body")
        job_id = new_job_id()
        key = items_key(job_id)
        # One message either way, so the job is handed over whole or not at all: the control message (the worker
        # splits the object into chunks), or for a job of one chunk that chunk itself (one queue hop less).
        control = FanoutMessage(job_id=job_id)
        if request.items is not None:
            # One item per image: a request of ``num_images`` N is N items, made on the queue side (``fanout``).
            total = sum(item.num_images for item in request.items)
            size = self._objects.put_lines(key, (item.model_dump_json(exclude_none=True) for item in request.items))
            if total <= CHUNK_ITEMS:
                chunk = FanoutChunk(index=0, line=1, offset=0, end=size)
                if total > len(request.items):  # some request of several images: as the plan marks its chunks
                    chunk = chunk.model_copy(update={"request_index": 0, "items": total})
                control = FanoutMessage(job_id=job_id, chunk=chunk)
        else:
            assert request.items_upload_id is not None  # JobRequest requires exactly one
            total = self._items_from_upload(request.items_upload_id, key)
        job = Job(
            id=job_id,
            total=total,
            created_at=self._now(),
            counts=JobCounts(queued=total),
            remaining=total,
            metadata=request.metadata,
            webhook=WebhookInfo(url=request.webhook_url) if request.webhook_url else None,
        )
        self._repository.create(job, [], items_key=key)
        try:
            not_sent = self._queue.send([control])
        except Exception:
            logger.exception("the fan-out message could not be sent", job_id=job_id)
            not_sent = [0]
        if not_sent:
            self._abandon(job_id)
            raise EnqueueError("the jobs queue refused the job; nothing was enqueued, retry later", retry_after=5)
        metrics.add_metric(name="JobsSubmitted", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="ItemsSubmitted", unit=MetricUnit.Count, value=total)
        logger.info("job submitted", job_id=job_id, items=total, upload=request.items_upload_id is not None)
        return job_document(job)

    def _abandon(self, job_id: str) -> None:
        """Nobody will fan this job out: it ends failed at once (its items object expires with the bucket's
        lifecycle). The caller got a 503 without the id, and a retry makes a new job."""
        try:
            self._repository.abandon(job_id)
        except Exception:
            logger.exception("could not mark an abandoned job failed", job_id=job_id)

    def _items_from_upload(self, upload_id: str, key: str) -> int:
        """Copy the uploaded file to the job's items object and count its items. Counting streams the copy once,
        bounded by the size cap (64 MiB): the answer's ``total`` is then exact, which the queue side could not
        give at submit time."""
        info = self._objects.head(upload_key(upload_id))
        if info is None or info.last_modified < self._now() - UPLOAD_LIFETIME:
            raise InvalidRequestError(
                "no file was uploaded for this id, or it expired (uploads last a day)",
                field="items_upload_id",
                location="body",
            )
        if info.size > MAX_UPLOAD_BYTES:
            raise PayloadTooLargeError(
                f"the uploaded file has {info.size} bytes; a job accepts at most {MAX_UPLOAD_BYTES}",
                details=[
                    {
                        "location": "body.items_upload_id",
                        "field": "items_upload_id",
                        "message": f"larger than {MAX_UPLOAD_BYTES} bytes",
                        "type": "too_large",
                    }
                ],
            )
        self._objects.copy(upload_key(upload_id), key)  # the copy, not the upload, is what gets counted and read
        plan = self._objects.plan(key)
        total = plan.items  # one per image: a line with num_images N counts N
        if not 1 <= total <= MAX_UPLOAD_LINES:  # the copy expires with the bucket's lifecycle (jobs/)
            if total == 0:
                reason = "has no items (no non-blank line)"
            elif total == plan.requests:
                reason = f"has {total} lines; at most {MAX_UPLOAD_LINES}"
            else:
                reason = f"has {plan.requests} lines making {total} images (num_images); at most {MAX_UPLOAD_LINES}"
            raise InvalidRequestError(f"the uploaded file {reason}", field="items_upload_id", location="body")
        return total

    def create_upload(self) -> UploadDocument:
        upload_id = new_upload_id()
        return UploadDocument(
            id=upload_id,
            upload_url=self._objects.presign_put(upload_key(upload_id), UPLOAD_URL_TTL_S),
            expires_at=self._now() + timedelta(seconds=UPLOAD_URL_TTL_S),
            max_bytes=MAX_UPLOAD_BYTES,
            max_lines=MAX_UPLOAD_LINES,
        )

    def get(self, job_id: str, *, cursor: str | None = None, limit: int = 100) -> JobDocument:
        job, extras = self._repository.get_job_extras(job_id)
        if job is None:
            raise NotFoundError(f"job {job_id} not found")
        results = results_info(self._objects, extras)
        if limit == 0:
            return job_document(job, results=results)
        items, next_cursor = self._repository.items_page(job_id, limit, cursor)
        return job_document(job, [self.item_document(item) for item in items], next_cursor, results=results)

    def cancel(self, job_id: str) -> JobDocument:
        """One conditional write, whatever the job's size: the job is canceled from then on (no item of it starts).
        Its queued items are settled on the queue side (a cancel control message), which completes the job."""
        if self._repository.get_job(job_id) is None:
            raise NotFoundError(f"job {job_id} not found")
        if self._repository.cancel(job_id):
            logger.info("job canceled", job_id=job_id)
            try:
                self._queue.send_control(ControlMessage(cancel=CancelOrder(job_id=job_id)))
            except Exception:  # the cancel holds: each queued item is canceled when its own message comes
                logger.exception("could not queue the cancelation of the job's items", job_id=job_id)
                metrics.add_metric(name="CancelOrdersNotQueued", unit=MetricUnit.Count, value=1)
        return self.get(job_id, limit=0)

    def item_document(self, item: Item) -> JobItemDocument:
        return JobItemDocument(
            index=item.index,
            request_index=item.request_index,
            image_index=item.image_index,
            status=item.status,
            request=item.request,
            error=item.error,
            image=self._images.document(item.record) if item.record is not None else None,
            retry_at=item.retry_at if item.status == "queued" else None,
        )


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


def results_info(objects: JobObjects, extras: JobExtras) -> ResultsInfo | None:
    """The results file as a job document shows it (a fresh URL), or None before it is written."""
    if extras.results_key is None:
        return None
    return ResultsInfo(
        url=objects.presign_get(extras.results_key),
        s3_uri=objects.s3_uri(extras.results_key),
        items=extras.results_items,
    )


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
            return self._control(body, message_id, deadline)
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
            claimed = self._look_again(job_id, index, lease_s)
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
                return Outcome.retry(self._backoff(receive_count), "the job of several images is not fanned out yet")
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
    def _control(self, body: str, message_id: str, deadline: Deadline) -> Outcome:
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
        return self._cancel(control.cancel, body, message_id, deadline)

    def _cancel(self, order: CancelOrder, body: str, message_id: str, deadline: Deadline) -> Outcome:
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
        return Outcome.ack()

    def _look_again(self, job_id: str, index: int, lease_s: float) -> Item | Outcome | None:
        """The claim failed: a redelivery, a canceled job, or an item a dead invocation left running. None when
        there is no such item (nothing to record a failure on)."""
        item, job = self._repository.get_item_and_job(job_id, index)
        if item is None:
            return None
        if item.status in ("succeeded", "failed", "canceled"):
            metrics.add_metric(name="DuplicateDeliveries", unit=MetricUnit.Count, value=1)
            if job is not None and job.remaining == 0 and job.completed_at is None:
                self.finish(job_id)  # e.g. a cancelation whose completion the API did not get to write
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
                delay = exc.retry_after if exc.retry_after is not None else self._backoff(receive_count)
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
                delay = self._backoff(receive_count)
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

    @staticmethod
    def _backoff(receive_count: int) -> int:
        """Seconds until the item's message comes back: the policy's full jitter, waited out by SQS (its
        visibility), not by a sleep; the queue's maxReceiveCount bounds the receives."""
        return int(ITEM_RETRY.backoff(receive_count))
