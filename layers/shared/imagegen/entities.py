"""The bulk-job domain: a job, its items, and what the item processor needs from the store that keeps them.

Entities only: how they are stored (DynamoDB attribute shapes, keys, counters) stays in
``adapters/jobs_table.py``, which implements ``ItemStore``. The unit tests implement it in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from imagegen.models import ImageRecord, ImageRequest, ItemError, ItemStatus, JobCounts, JobStatus, WebhookInfo

# Lambda's longest timeout: a delivery that completed a job longer ago than this has ended, whatever the worker's
# Timeout. Until then only the completer announces the completion; after, a redelivery may in its place.
ANNOUNCE_AFTER_S = 900
# How long a completed job reads as not yet complete while its results file is not recorded: long enough for a
# redelivery to announce in a failed completer's place, bounded so a job whose file never comes still ends.
RESULTS_AWAITED_S = ANNOUNCE_AFTER_S + 300


@dataclass
class Job:
    id: str
    total: int
    created_at: datetime
    counts: JobCounts
    remaining: int
    canceled: bool = False
    completed_at: datetime | None = None
    metadata: dict[str, Any] | None = None
    webhook: WebhookInfo | None = None
    direct: bool = False  # created on the fly for a message a producer put on the queue itself
    results_recorded: bool = False  # its completion's results file is written and recorded on the job
    announce_claim: float = 0.0  # epoch seconds: a delivery announcing a completion its completer did not, until then

    @property
    def status(self) -> JobStatus:
        counts = self.counts
        if self.completed_at is not None:
            if counts.succeeded == self.total:
                return "succeeded"
            if self.canceled and counts.canceled:
                return "canceled"
            return "failed" if counts.succeeded == 0 else "partially_failed"
        if self.canceled:
            return "canceled"
        # An item deferred after a retryable failure is queued again: a job whose every item is queued (waiting
        # or not yet started) has nothing running, and says so.
        return "queued" if counts.queued == self.total else "running"


def origin_of(request_index: int | None, image_index: int | None) -> dict[str, int]:
    """An item's ``request_index`` and ``image_index`` (a request of several images), or nothing when unset."""
    if request_index is None or image_index is None:
        return {}
    return {"request_index": request_index, "image_index": image_index}


@dataclass
class Item:
    job_id: str
    index: int
    status: ItemStatus
    request: ImageRequest
    attempts: int = 0
    error: ItemError | None = None
    record: ImageRecord | None = None
    correlation_id: str | None = None
    lease_until: float = 0.0  # epoch seconds: a delivery working on the item holds it until then
    bad_outputs: int = 0  # paid 200s without a usable output so far (each retry of one is another paid call)
    retry_at: datetime | None = None  # queued again after a retryable failure: its next try is not before then
    # In a job where some request asked for several images: the request this item's image comes from, and which
    # of its images it is (None otherwise: every item is its own request).
    request_index: int | None = None
    image_index: int | None = None

    @property
    def origin(self) -> dict[str, int]:
        """``request_index`` and ``image_index`` for a document, an event or a results line; empty when unset."""
        return origin_of(self.request_index, self.image_index)


@dataclass(frozen=True)
class ItemResult:
    """One item as its job's results file states it. Read with a projection of the item's row, these fields only, and
    not as a whole ``Item``: a results file reads every row of the job between its completion and its announcement,
    and parsing whole rows (request, record) took 210-318 ms of CPU per 1,000 rows against 93-111 ms for these."""

    index: int
    status: ItemStatus
    request_index: int | None = None  # as ``Item``'s: in a job with requests of several images
    image_index: int | None = None
    image_id: str | None = None
    s3_uri: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    error: ItemError | None = None

    @property
    def origin(self) -> dict[str, int]:
        return origin_of(self.request_index, self.image_index)


class TransitionConflict(Exception):
    """The item was no longer in the expected status (someone else moved it)."""


class LeaseHeld(TransitionConflict):
    """Another delivery of the same message is working on the item right now (its lease has not expired)."""

    def __init__(self, seconds_left: float) -> None:
        super().__init__(f"the item is leased for {seconds_left:.0f} s more")
        self.seconds_left = seconds_left


class JobUnavailable(Exception):
    """The job was canceled (or no longer exists): its queued items must not start."""


@dataclass(frozen=True)
class JobExtras:
    """What the fan-out and the results file record on the job row besides the job itself."""

    items_key: str | None = None  # the job's items object (fanned out by the worker), when it has one
    correlation_id: str | None = None  # an event-driven job's correlation id, echoed in its events
    results_key: str | None = None  # the results file, once written
    results_items: int = 0


class ItemStore(Protocol):
    """What the item processor needs from the jobs store. Every status change moves the job's counters with it,
    atomically; a transition that makes the last item terminal completes the job (returns True), exactly once."""

    def create(
        self, job: Job, requests: list[ImageRequest], correlation_ids: list[str | None] | None = None
    ) -> bool: ...

    def ensure_item(self, job_id: str, index: int, request: ImageRequest, correlation_id: str | None) -> None: ...

    def get_job(self, job_id: str) -> Job | None: ...

    def get_job_extras(self, job_id: str) -> tuple[Job | None, JobExtras]: ...

    def get_item(self, job_id: str, index: int) -> Item | None: ...

    def get_item_and_job(self, job_id: str, index: int) -> tuple[Item | None, Job | None]: ...

    def claim(self, job_id: str, index: int, *, lease_s: float) -> None:
        """queued → running without reading the item first, for an item that never ran: TransitionConflict when
        it is not queued or ran before (deferred), JobUnavailable when its job is canceled or gone."""
        ...

    def transition(
        self,
        item: Item,
        to: ItemStatus,
        *,
        error: ItemError | None = None,
        record: ImageRecord | None = None,
        also_put: dict[str, Any] | None = None,
        lease_s: float | None = None,
    ) -> bool: ...

    def reclaim(self, item: Item, *, lease_s: float) -> None: ...

    def defer(self, item: Item, retry_at: datetime, *, bad_output: bool = False) -> None:
        """A retryable failure: running → queued until ``retry_at``, its lease given back, the job's counters
        (``waiting`` included) with it. ``bad_output`` counts one more paid 200 without a usable output on the
        item (``Item.bad_outputs``), so the count holds across deliveries."""
        ...

    def cancel_queued_page(self, job_id: str, cursor: str | None, limit: int = 100) -> str | None:
        """Cancel the queued items of one page of a job's items; the next page's cursor, None after the last."""
        ...

    def complete_if_done(self, job_id: str) -> Job | None: ...

    def claim_announcement(self, job_id: str, until: float) -> bool:
        """Hold the announcement of a completed job whose results file is not recorded until ``until`` (epoch
        seconds), unless another delivery holds it: exactly one delivery announces in the completer's place."""
        ...

    def record_webhook(self, job_id: str, status: str, attempts: int) -> None: ...
