"""In-memory fakes of what the item processor talks to, for fast unit tests of the item state machine.

``MemoryItemStore`` keeps the contract of ``JobRepository`` (``imagegen.entities.ItemStore``): every status change
moves the job's counters with it, conditional on the status read; the transition that makes the last item terminal
completes the job and says so, once; a claim refuses a canceled job; a live lease is never taken over. Where the
table keeps the counters (up to 64 shards per job, docs/scaling.md) is the adapter's business: the contract, and so
this fake, counts per job.

What has a real implementation is reused, not restated: an item is created as the jobs table writes its row and
read back as the table reads it (``job_rows.new_item_row``, ``item_from_row``), the image service's documents and
table items are the real service's and repository's (``image_document``, ``ImageRepository.item``), a queue body
is the real queue's (``message_body``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from imagegen.adapters.images_table import ImageRepository
from imagegen.adapters.job_rows import item_from_row, new_item_row
from imagegen.adapters.queue import message_body
from imagegen.entities import Item, Job, JobExtras, JobUnavailable, LeaseHeld, TransitionConflict
from imagegen.models import (
    TERMINAL_ITEM_STATUSES,
    ControlMessage,
    GenerationParameters,
    ImageDocument,
    ImageRecord,
    ImageRequest,
    ItemError,
    ItemStatus,
    JobCounts,
    JobMessage,
    StoredImage,
    Timings,
)
from imagegen.service import image_document


def stored_item(job_id: str, index: int, request: ImageRequest, correlation_id: str | None) -> Item:
    """A new queued item as the jobs table gives it back: its row as the table writes it, read as the table reads
    it (the request through the same JSON, Decimal and non-strict validation)."""
    return item_from_row(new_item_row(job_id, index, request, correlation_id, expires="0"))


class MemoryItemStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.jobs: dict[str, Job] = {}
        self.items: dict[tuple[str, int], Item] = {}
        self.image_records: list[dict[str, Any]] = []
        self.webhooks: dict[str, tuple[str, int]] = {}
        self.pages = 0
        self.clock = clock

    # ------------------------------------------------------------------------------------------ create / read
    def create(self, job: Job, requests: list[ImageRequest], correlation_ids: list[str | None] | None = None) -> bool:
        if job.id in self.jobs:
            return False
        stored = copy.deepcopy(job)
        stored.counts = JobCounts(queued=job.total)
        stored.remaining = job.total
        self.jobs[job.id] = stored
        ids = correlation_ids or [None] * len(requests)
        for index, (request, correlation_id) in enumerate(zip(requests, ids, strict=True)):
            self.items[(job.id, index)] = stored_item(job.id, index, request, correlation_id)
        return True

    def ensure_item(self, job_id: str, index: int, request: ImageRequest, correlation_id: str | None) -> None:
        if (job_id, index) not in self.items:
            self.items[(job_id, index)] = stored_item(job_id, index, request, correlation_id)

    def get_job(self, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        return copy.deepcopy(job) if job is not None else None

    def get_job_extras(self, job_id: str) -> tuple[Job | None, Any]:
        return self.get_job(job_id), JobExtras()

    def get_item(self, job_id: str, index: int) -> Item | None:
        item = self.items.get((job_id, index))
        return copy.deepcopy(item) if item is not None else None

    def get_item_and_job(self, job_id: str, index: int) -> tuple[Item | None, Job | None]:
        return self.get_item(job_id, index), self.get_job(job_id)

    # ------------------------------------------------------------------------------------------ transitions
    def _move(self, job_id: str, deltas: dict[str, int]) -> None:
        job = self.jobs[job_id]
        counts = job.counts.model_dump()
        for status, delta in deltas.items():
            counts[status] += delta
        job.counts = JobCounts(**counts)
        job.remaining -= sum(delta for status, delta in deltas.items() if status in TERMINAL_ITEM_STATUSES)

    def claim(self, job_id: str, index: int, *, lease_s: float) -> None:
        item = self.items.get((job_id, index))
        if item is None or item.status != "queued" or item.attempts != 0:
            raise TransitionConflict(f"{job_id}#{index} is not a queued item that never ran")
        job = self.jobs.get(job_id)
        if job is None or job.canceled:
            raise JobUnavailable(f"job {job_id} is canceled or gone")
        self._to_running(item, lease_s)

    def _leave(self, item: Item, to: str) -> None:
        deltas = {item.status: -1, to: 1}
        if item.status == "queued" and item.retry_at is not None:
            deltas["waiting"] = -1
        self._move(item.job_id, deltas)
        item.status = to  # type: ignore[assignment]
        item.retry_at = None

    def _to_running(self, item: Item, lease_s: float) -> None:
        self._leave(item, "running")
        item.attempts += 1
        item.lease_until = self.clock() + lease_s

    def transition(
        self,
        item: Item,
        to: ItemStatus,
        *,
        error: ItemError | None = None,
        record: ImageRecord | None = None,
        also_put: dict[str, Any] | None = None,
        lease_s: float | None = None,
    ) -> bool:
        if to == item.status:
            raise ValueError("a transition changes the status")
        stored = self.items.get((item.job_id, item.index))
        job = self.jobs.get(item.job_id)
        if stored is None or stored.status != item.status or job is None:
            raise TransitionConflict("the item was no longer in the expected status")
        if (stored.retry_at is None) != (item.retry_at is None):
            raise TransitionConflict("the item was deferred (or picked up) since it was read")
        if to == "running":
            if lease_s is None:
                raise ValueError("moving an item to running needs its lease (lease_s)")
            self._to_running(stored, lease_s)
        else:
            self._leave(stored, to)
        stored.error = error or stored.error
        stored.record = record or stored.record
        if also_put is not None:
            self.image_records.append(also_put)
        item.status, item.attempts, item.retry_at = stored.status, stored.attempts, None
        if to in TERMINAL_ITEM_STATUSES and job.remaining == 0 and job.completed_at is None:
            job.completed_at = datetime.now(UTC)
            return True
        return False

    def reclaim(self, item: Item, *, lease_s: float) -> None:
        stored = self.items[(item.job_id, item.index)]
        now = self.clock()
        if stored.status != "running":
            raise TransitionConflict(f"{item.job_id}#{item.index} is no longer running")
        if stored.lease_until > now:
            raise LeaseHeld(stored.lease_until - now)
        stored.attempts += 1
        stored.lease_until = now + lease_s
        item.attempts = stored.attempts

    def defer(self, item: Item, retry_at: datetime, *, bad_output: bool = False) -> None:
        stored = self.items[(item.job_id, item.index)]
        if stored.status != "running":
            raise TransitionConflict(f"{item.job_id}#{item.index} is no longer running")
        self._move(item.job_id, {"running": -1, "queued": 1, "waiting": 1})
        stored.status, stored.retry_at, stored.lease_until = "queued", retry_at, 0.0
        if bad_output:
            stored.bad_outputs += 1
        item.status, item.retry_at, item.lease_until, item.bad_outputs = "queued", retry_at, 0.0, stored.bad_outputs

    def cancel_queued_page(self, job_id: str, cursor: str | None, limit: int = 100) -> str | None:
        self.pages += 1
        start = int(cursor) if cursor else 0
        indexes = sorted(index for (owner, index) in self.items if owner == job_id)
        page = [index for index in indexes if index >= start][:limit]
        for index in page:
            item = self.items[(job_id, index)]
            if item.status == "queued":
                self._leave(item, "canceled")
        rest = [index for index in indexes if index >= start][limit:]
        return str(rest[0]) if rest else None

    def complete_if_done(self, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None or job.remaining != 0 or job.completed_at is not None:
            return None
        job.completed_at = datetime.now(UTC)
        return copy.deepcopy(job)

    def claim_announcement(self, job_id: str, until: float) -> bool:
        job = self.jobs.get(job_id)
        if job is None or job.completed_at is None or job.results_recorded or job.announce_claim >= time.time():
            return False
        job.announce_claim = until
        return True

    def record_webhook(self, job_id: str, status: str, attempts: int) -> None:
        self.webhooks[job_id] = (status, attempts)

    # ------------------------------------------------------------------------------------------ test helpers
    def cancel(self, job_id: str) -> bool:
        """As the API cancels: the flag only (the worker settles the queued items)."""
        job = self.jobs.get(job_id)
        if job is None or job.completed_at is not None:
            return False
        job.canceled = True
        return True

    def item(self, job_id: str, index: int = 0) -> Item:
        return self.items[(job_id, index)]

    def job(self, job_id: str) -> Job:
        return self.jobs[job_id]


def image_record(image_id: str, key: str) -> ImageRecord:
    params = GenerationParameters(prompt="p", num_steps=4, seed=1, width=256, height=256)
    stored = StoredImage(
        bucket="b", key=key, content_type="image/png", bytes=10, sha256="0" * 64, width=256, height=256
    )
    return ImageRecord(
        id=image_id,
        parameters=params,
        stored=stored,
        created_at=datetime.now(UTC),
        timings=Timings(upstream_ms=1, total_ms=2),
    )


@dataclass
class FakeImages:
    """The image service: each call pops the next scripted answer (an exception to raise), else succeeds.
    ``calls`` counts paid upstream calls, as the emulator would."""

    script: list[BaseException] = field(default_factory=list)
    calls: int = 0

    def fail_next(self, *errors: BaseException) -> None:
        self.script.extend(errors)

    def generate_record(
        self,
        request: ImageRequest,
        deadline: Any,
        *,
        image_id: str | None = None,
        key_stem: str | None = None,
        store: bool = True,
    ) -> ImageRecord:
        self.calls += 1
        if self.script:
            raise self.script.pop(0)
        return image_record(image_id or "img_" + "0" * 32, f"{key_stem}.png")

    def record_item(self, record: ImageRecord) -> dict[str, Any]:
        """The image's table item, as the real service makes it (the repository needs no client for that)."""
        return ImageRepository(None, "images", retention_days=1).item(record)

    def document(self, record: ImageRecord) -> ImageDocument:
        url = f"https://example.test/{record.stored.key}"
        return image_document(record, url, datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1))


@dataclass
class FakeEvents:
    published: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def publish(self, detail_type: str, detail: dict[str, Any]) -> None:
        self.published.append((detail_type, detail))

    def types(self) -> list[str]:
        return [detail_type for detail_type, _ in self.published]


@dataclass(frozen=True)
class FakeDelivery:
    delivered: bool
    attempts: int


@dataclass
class FakeWebhooks:
    sent: list[tuple[str, str]] = field(default_factory=list)

    def deliver(self, url: str, message_id: str, payload: dict[str, Any]) -> FakeDelivery:
        self.sent.append((url, message_id))
        return FakeDelivery(True, 1)


@dataclass
class FakeQueue:
    """The jobs queue: what was dead-lettered (body, reason) and the control messages sent."""

    messages: list[tuple[str, str]] = field(default_factory=list)
    controls: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    refuse: set[int] = field(default_factory=set)  # positions ``send`` reports as not enqueued
    on_send: Callable[[list[str]], None] | None = None  # e.g. a worker that is quicker than the API

    def send(self, messages: Sequence[JobMessage]) -> list[int]:
        bodies = [message_body(m) for i, m in enumerate(messages) if i not in self.refuse]
        self.sent.extend(bodies)
        if self.on_send is not None:
            self.on_send(bodies)
        return sorted(self.refuse)

    def dead_letter(self, body: str, reason: str, message_id: str) -> None:
        self.messages.append((body, reason))

    def send_control(self, message: ControlMessage) -> None:
        self.controls.append(message_body(message))


__all__ = [
    "FakeEvents",
    "FakeImages",
    "FakeQueue",
    "FakeWebhooks",
    "MemoryItemStore",
    "image_record",
]
