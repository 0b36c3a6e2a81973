"""Bulk jobs, the API's side: submit (items or an upload), read with progress, cancel; the job document.

Submit and cancel are constant-time: the job and its items are recorded as one object and the fan-out, the
item rows and the cancelation of items happen on the queue side. The ids, the seeding of unseeded requests and
the job document are shared with the worker.

Not here: what the worker does with an item (``imagegen.item_processor``), the fan-out (``imagegen.fanout``).
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from imagegen.adapters.job_objects import CHUNK_ITEMS, JobObjects, items_key, upload_key
from imagegen.adapters.jobs_table import JobExtras, JobRepository
from imagegen.adapters.queue import JobQueue
from imagegen.entities import RESULTS_AWAITED_S, Item, Job
from imagegen.errors import (
    EnqueueError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
)
from imagegen.models import (
    MAX_SEED,
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_LINES,
    CancelOrder,
    ControlMessage,
    FanoutChunk,
    FanoutMessage,
    ImageRequest,
    JobCounts,
    JobDocument,
    JobItemDocument,
    JobRequest,
    ResultsInfo,
    UploadDocument,
    WebhookInfo,
)
from imagegen.observability import shared_metrics
from imagegen.service import ImageService

logger = Logger(child=True)
metrics = shared_metrics()

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
        awaited = job.completed_at is not None and self._now() - job.completed_at < timedelta(seconds=RESULTS_AWAITED_S)
        if awaited and results is None:
            # The worker writes the results file right after it completes the job: until it is recorded the job
            # reads as not yet complete, so a client that sees a final status (or completed_at) finds its file. A
            # file that never comes (an announcement lost for good) is waited for RESULTS_AWAITED_S at most.
            job = replace(job, completed_at=None)
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


def results_info(objects: JobObjects, extras: JobExtras) -> ResultsInfo | None:
    """The results file as a job document shows it (a fresh URL), or None before it is written."""
    if extras.results_key is None:
        return None
    return ResultsInfo(
        url=objects.presign_get(extras.results_key),
        s3_uri=objects.s3_uri(extras.results_key),
        items=extras.results_items,
    )
