"""The queue side of a submit: a job's items object becomes item rows and item messages, in chunks safe to replay.

The API records the job (its row) and its items (one object) and sends ONE control message. The worker splits the
object into chunk messages (``split``); each chunk (``run_chunk``) conditionally writes its item rows (never over
an item that already moved) and sends the messages of its items still ``queued``: its first ``FIRST_SENT`` items'
rows and messages before the rest's rows, so workers start on a job while its chunks are still being written. A
duplicated or half-done chunk therefore loses nothing and duplicates no upstream call: a second message for an item
is refused by its claim.
Seeds of items without one derive from job id + index, so a replay generates the same image.

A request of ``num_images`` N makes N items here (one image, one paid call, one result line each; seeds ``seed``,
``seed+1``, …), each carrying its ``request_index`` and ``image_index`` when the job has such requests: the one
place every way of making a job goes through, so submit stays constant-time and an item stays one image
(docs/jobs.md, "Several images per request"). A direct producer's message of several images becomes a job here too
(``from_message``).

A fan-out message that fails on every receive (its items object unreadable, the queue refusing its sends, a bug)
would reach the dead-letter queue with its items never written, and the job would never complete. Its last receive
therefore gives up instead (``give_up``): the items it never fanned out end ``failed`` (``fanout_failed``) and the
job completes, announced once, as an item's last receive does.

An ``Image Requested`` event (EventBridge → jobs queue) becomes a job the same way (``from_event``), its id
derived from the event id so a redelivered event makes no second job.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import ValidationError

from imagegen.adapters.job_objects import CHUNK_ITEMS, JobObjects, images_in_line, items_key
from imagegen.adapters.job_rows import encode_cursor
from imagegen.adapters.jobs_table import Job, JobRepository
from imagegen.adapters.queue import JobQueue
from imagegen.entities import Item, TransitionConflict
from imagegen.jobs import direct_job_id, with_seed
from imagegen.models import (
    FanoutChunk,
    FanoutMessage,
    ImageRequest,
    ImageRequestedDetail,
    ItemError,
    JobMessage,
    WebhookInfo,
    job_item,
)
from imagegen.observability import shared_metrics
from imagegen.service import image_requests

logger = Logger(child=True)
metrics = shared_metrics()

IMAGE_REQUESTED = "Image Requested"
FIRST_SENT = 20  # a chunk's first items: their rows written and messages sent before the rest's rows
FANOUT_FAILED = "fanout_failed"


class FanoutIncomplete(Exception):
    """Some messages could not be put on the queue: the chunk (or split) is retried whole, which is safe."""


class InvalidEvent(Exception):
    """An ``Image Requested`` event that can never become a job (the reason says why)."""


def is_eventbridge_envelope(body: Any) -> bool:
    return isinstance(body, dict) and "detail-type" in body and "detail" in body and "source" in body


def event_job_id(event_id: str) -> str:
    """The job of an ``Image Requested`` event: derived from the EventBridge event id."""
    return "job_" + uuid.uuid5(uuid.NAMESPACE_URL, f"eventbridge-event:{event_id}").hex


def item_seed_entropy(job_id: str, index: int) -> str:
    return f"{job_id}#{index}"


def first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


class FanOut:
    def __init__(
        self,
        repository: JobRepository,
        objects: JobObjects,
        queue: JobQueue,
        *,
        on_complete: Callable[[str], None],
        allow_http_webhooks: bool = False,
        chunk_items: int = CHUNK_ITEMS,
    ) -> None:
        self._chunk_items = chunk_items
        self._repository = repository
        self._objects = objects
        self._queue = queue
        self._on_complete = on_complete
        self._allow_http_webhooks = allow_http_webhooks

    def handle(self, message: FanoutMessage) -> None:
        if message.chunk is None:
            self.split(message.job_id)
        else:
            self.run_chunk(message.job_id, message.chunk)

    def split(self, job_id: str) -> None:
        """The control message: one chunk message per ``CHUNK_ITEMS`` items of the job's items object."""
        job, extras = self._repository.get_job_extras(job_id)
        if job is None or extras.items_key is None or job.completed_at is not None:  # complete: see run_chunk
            logger.info("nothing to fan out", job_id=job_id)
            return
        plan = self._objects.plan(extras.items_key, self._chunk_items)
        chunks = [FanoutMessage(job_id=job_id, chunk=chunk) for chunk in plan.chunks]
        if self._queue.send(chunks):
            raise FanoutIncomplete(f"not every chunk of {job_id} reached the queue")
        logger.info("job split into chunks", job_id=job_id, chunks=len(chunks), items=plan.items)

    def run_chunk(self, job_id: str, chunk: FanoutChunk) -> None:
        """Write the chunk's item rows (conditionally) and send the messages of those still queued."""
        job, extras = self._repository.get_job_extras(job_id)
        if job is None or extras.items_key is None:
            return  # expired (TTL): nothing to record the items on
        if job.completed_at is not None:
            # Every item it counts is settled. Such a message can still come: that of a job the API abandoned
            # because its send reported failed (every attempt timed out) while SQS had taken the message, delivered
            # after the abandon. That job answered 503 without its id and ended failed: its items get no row, no
            # message and no paid call (the client's retry is a new job).
            logger.info("the job is already complete: nothing to fan out", job_id=job_id, index=chunk.index)
            return
        data = self._objects.read_range(extras.items_key, chunk.offset, chunk.end)
        valid: list[tuple[int, ImageRequest]] = []
        invalid: list[tuple[int, str]] = []
        # A job with requests of several images: each item says which request (and which of its images) it is.
        origins: dict[int, tuple[int, int]] = {}
        request_index = chunk.request_index
        index = chunk.index
        for line_no, raw in enumerate(data.split(b"\n"), start=chunk.line):
            if not raw.strip():
                continue
            count = images_in_line(raw)  # as the plan counted: the chunk's items add up to it
            indexes = range(index, index + count)
            if request_index is not None:
                origins.update({item_index: (request_index, image) for image, item_index in enumerate(indexes)})
                request_index += 1
            try:
                request = job_item(ImageRequest.model_validate_json(raw))
                if request.num_images != count:  # only a JSON parser disagreeing with another could bring this
                    raise ValueError(f"line {line_no}: num_images: could not be read unambiguously")
                # N images: seeds seed, seed+1, … as POST /v1/images numbers them; without a seed, the base derives
                # from the job and the first item, so a replay makes the same images (one image: as before).
                seeded = with_seed(request, entropy=item_seed_entropy(job_id, index))
                valid += zip(indexes, image_requests(seeded), strict=True)
            except ValidationError as exc:
                invalid += [(item_index, f"line {line_no}: {first_error(exc)}"[:500]) for item_index in indexes]
            except ValueError as exc:
                invalid += [(item_index, str(exc)) for item_index in indexes]
            index += count
        failed = 0
        for item_index, reason in invalid:
            error = ItemError(code="invalid_request", message=reason)
            origin = {"origin": origins[item_index]} if item_index in origins else {}
            if self._repository.put_failed_item(job, item_index, error, **origin):
                failed += 1
        # The origins only when there are any: a job of single images writes its rows exactly as before.
        tagged = {"origins": origins} if origins else {}
        if job.canceled:
            # Canceled before this chunk ran: none of its items may start, so none gets a message (one each, only
            # to be canceled on arrival); they are canceled here, a transaction per 50, and the job may complete.
            # (A cancel after the read above is settled the usual way: each message finds the job canceled.)
            self._repository.put_queued_items(job, valid, extras.correlation_id, **tagged)
            cursor = encode_cursor(chunk.index - 1) if chunk.index else None
            self._repository.cancel_queued_page(job_id, cursor, limit=max(1, index - chunk.index))
            if self._repository.complete_if_done(job_id) is not None:
                self._on_complete(job_id)
            return
        # The first items' rows, then their messages, then the rest's: workers start on the job while the rest of
        # the chunk is written. Each message still follows its own item's row.
        not_sent = 0
        for part in (valid[:FIRST_SENT], valid[FIRST_SENT:]):
            queued = set(self._repository.put_queued_items(job, part, extras.correlation_id, **tagged))
            messages = [
                JobMessage(
                    request=request,
                    job_id=job_id,
                    index=item_index,
                    correlation_id=extras.correlation_id,
                    request_index=origins[item_index][0] if item_index in origins else None,
                    image_index=origins[item_index][1] if item_index in origins else None,
                )
                for item_index, request in part
                if item_index in queued
            ]
            not_sent += len(self._queue.send(messages))
        if not_sent:
            metrics.add_metric(name="ItemsNotEnqueued", unit=MetricUnit.Count, value=not_sent)
            raise FanoutIncomplete(f"not every item of {job_id} from {chunk.index} reached the queue")
        if failed:
            metrics.add_metric(name="ItemsFailed", unit=MetricUnit.Count, value=failed)
            if self._repository.complete_if_done(job_id) is not None:
                self._on_complete(job_id)  # every item of the job was a bad line

    # ------------------------------------------------------------------------------------------ giving up
    def give_up(self, message: FanoutMessage, attempts: int) -> int | None:
        """The message's last receive failed too: settle what it leaves open, so the job still completes (and is
        announced once). The items of its range (the whole job for the split, the chunk's for a chunk) that have
        no row end ``failed`` (``fanout_failed``); for a chunk, so do its rows still queued that never ran (their
        messages may never have been sent). Safe to replay and to race a chunk that does run: every write is
        conditional, so an item ends in one terminal state whichever writes first. Returns the items failed, None
        when there is no job (nothing to settle: the message is better kept in the dead-letter queue)."""
        job = self._repository.get_job(message.job_id)
        if job is None:
            return None
        if job.completed_at is not None:
            return 0
        chunk = message.chunk
        error = ItemError(
            code=FANOUT_FAILED,
            message=f"the item could not be read from the job's items and queued (gave up after {attempts} attempts)",
        )
        if chunk is None:
            indexes = range(job.total)
            open_rows: list[Item] = []
            written = {item.index for item in self._repository.iter_items(job.id)}
        else:
            # A chunk says its items when some request makes several; otherwise every chunk but the last has
            # ``chunk_items`` items (``plan``), a job of one chunk at most that many.
            indexes = range(chunk.index, min(chunk.index + (chunk.items or self._chunk_items), job.total))
            rows = [self._repository.get_item(job.id, index) for index in indexes]
            open_rows = [item for item in rows if item is not None and item.status == "queued" and not item.attempts]
            written = {item.index for item in rows if item is not None}
        failed = sum(self._repository.put_failed_item(job, index, error) for index in indexes if index not in written)
        completed = False
        for item in open_rows:
            try:
                completed = self._repository.transition(item, "failed", error=error) or completed
                failed += 1
            except TransitionConflict:
                pass  # its message came after all: it is running or settled
        metrics.add_metric(name="ItemsFailed", unit=MetricUnit.Count, value=failed)
        logger.error("fan-out given up", job_id=job.id, chunk=chunk.index if chunk else None, items_failed=failed)
        if completed or self._repository.complete_if_done(job.id) is not None:
            self._on_complete(job.id)
        return failed

    # ------------------------------------------------------------------------------------------ events
    def from_event(self, envelope: dict[str, Any]) -> str:
        """An ``Image Requested`` event becomes a job (once per event id), fanned out right here."""
        if envelope.get("detail-type") != IMAGE_REQUESTED:
            raise InvalidEvent(f"detail-type {str(envelope.get('detail-type'))[:100]!r} is not {IMAGE_REQUESTED!r}")
        event_id = envelope.get("id")
        if not isinstance(event_id, str) or not event_id:
            raise InvalidEvent("the event has no id")
        try:
            detail = ImageRequestedDetail.model_validate_json(json.dumps(envelope["detail"]))
        except ValidationError as exc:
            raise InvalidEvent(f"detail.{first_error(exc)}") from None
        except (TypeError, ValueError) as exc:
            raise InvalidEvent(f"detail is not JSON: {exc}") from None
        if detail.webhook_url and not detail.webhook_url.startswith("https://") and not self._allow_http_webhooks:
            raise InvalidEvent("detail.webhook_url: must be an https URL")
        job_id = event_job_id(event_id)
        job = _new_job(
            job_id,
            metadata=detail.metadata,
            webhook=WebhookInfo(url=detail.webhook_url) if detail.webhook_url else None,
        )
        self._create_and_run(job, detail.all_requests, detail.correlation_id, "job created from an event")
        return job_id

    def from_message(self, message: JobMessage, message_id: str) -> str:
        """A direct producer's message asking for several images (``num_images`` over 1) becomes a job of that many
        items, as an event does: its id derived from the SQS message id, so a redelivery makes no second job, and
        its items sent as messages of their own (each retried, claimed and counted as any item)."""
        job_id = direct_job_id(message_id)
        job = _new_job(job_id, direct=True)
        self._create_and_run(job, [message.request], message.correlation_id, "job created from a queue message")
        return job_id

    def _create_and_run(self, job: Job, requests: list[ImageRequest], correlation_id: str | None, what: str) -> None:
        key = items_key(job.id)
        # Deterministic content: a redelivery rewrites the same object.
        self._objects.put_lines(key, (request.model_dump_json(exclude_none=True) for request in requests))
        job.total = job.remaining = sum(request.num_images for request in requests)
        if self._repository.create(job, [], items_key=key, correlation_id=correlation_id):
            metrics.add_metric(name="JobsSubmitted", unit=MetricUnit.Count, value=1)
            logger.info(what, job_id=job.id, items=job.total, requests=len(requests))
        # At most 40 chunks (1,000 requests of 4 images): fanned out here, not through more messages. A redelivery
        # redoes it.
        for chunk in self._objects.plan(key, self._chunk_items).chunks:
            self.run_chunk(job.id, chunk)


def _new_job(job_id: str, **fields: Any) -> Job:
    """A job the queue side creates (from an event or a direct message): its total is set by ``_create_and_run``,
    its counts by the repository."""
    return Job(id=job_id, total=0, created_at=datetime.now(UTC), counts=None, remaining=0, **fields)  # type: ignore[arg-type]
