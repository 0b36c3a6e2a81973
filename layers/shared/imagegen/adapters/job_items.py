"""A job's items in the service's single DynamoDB table: writing them, reading them, and moving them between
statuses (each move a transaction with the item's counter shard: ``job_counters.py``, where the design is).

What lives here: ``ItemTable``, the middle layer of the job repository: the item rows written at creation, by the
fan-out and for a bad upload line; reads and pages of items; the transitions (claim, reclaim, defer, any status
change) and the cancel of queued items. What does not: the rows' shapes (``job_rows.py``), the transaction and
counter machinery (``job_counters.py``), the job row itself: create, cancel, webhook and results (``jobs_table.py``).

Why layered classes (``CountedWrites`` -> ``ItemTable`` -> ``JobRepository``) rather than objects handed to one
another: the layers share one client, table and retry state (``conflict_retries`` counts the retries of all of
them), and every caller, the unit fakes and the contention benchmark (which swaps ``_counted``) keep the single
``JobRepository`` they had.

Slightly over ~300 lines: every move an item makes (claim, reclaim, defer, settle, cancel) is here with the replay
path of the write that makes it, so one file answers "what can happen to an item row".
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from imagegen.adapters.job_counters import CountedWrites, JobGuardFailed, error_code
from imagegen.adapters.job_rows import (
    RESULT_NAMES,
    RESULT_PROJECTION,
    TRANSACTION_ITEMS,
    chunks,
    decode_cursor,
    encode_cursor,
    expires_at,
    failed_item_row,
    iso,
    item_from_row,
    item_index,
    item_key,
    job_key,
    new_item_row,
    origin_attributes,
    result_from_row,
    shard_key,
    utc_now,
)
from imagegen.entities import Item, ItemResult, Job, JobUnavailable, LeaseHeld, TransitionConflict
from imagegen.models import TERMINAL_ITEM_STATUSES, ImageRecord, ImageRequest, ItemError, ItemStatus
from imagegen.retry import RetryPolicy, Uniform

# The retries botocore does not make (imagegen.retry): a batch's unprocessed items (throttling). A cancel of queued
# items that conflicted reads them again at once (its transaction already backed off).
BATCH_WRITE_RETRY = RetryPolicy(attempts=8, base_s=0.05, cap_s=2.0)
CANCEL_REREAD_RETRY = RetryPolicy(attempts=5, base_s=0.0, cap_s=0.0)  # no wait: a fresh read, then at once
WHOLE_JOB_PAGE = 1000  # rows per Query when every item of a job is read (``iter_items``, ``iter_results``)


class ItemTable(CountedWrites):
    """A job's items: their rows, reads and transitions (each with its counter shard)."""

    def __init__(
        self,
        client: Any,
        table_name: str,
        retention_days: int,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: Uniform = random,
    ) -> None:
        super().__init__(client, table_name, sleep=sleep, rng=rng)
        self._retention = timedelta(days=retention_days)

    # ------------------------------------------------------------------------------------------ write
    def put_queued_items(
        self,
        job: Job,
        requests: list[tuple[int, ImageRequest]],
        correlation_id: str | None,
        origins: Mapping[int, tuple[int, int]] | None = None,
    ) -> list[int]:
        """Write these items ``queued`` unless they exist (a replayed chunk never overwrites an item that moved).
        Returns the indexes now queued, new or not: their messages may not have been sent before a crash.
        ``origins``: index → (request_index, image_index), for the items of a request of several images."""
        if not requests:
            return []
        expires = expires_at(job, self._retention)
        origins = origins or {}
        puts = [
            {
                "Put": {
                    "TableName": self._table,
                    "Item": new_item_row(job.id, index, request, correlation_id, expires, origins.get(index)),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            }
            for index, request in requests
        ]
        try:  # the first delivery of a chunk, the usual case: one transaction
            self._client.transact_write_items(TransactItems=puts)
            return [index for index, _ in requests]
        except ClientError as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise
        queued = []  # a replay (or a conflict): item by item
        for index, put in zip((index for index, _ in requests), puts, strict=True):
            try:
                self._client.put_item(**put["Put"])
                queued.append(index)
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                existing = self.get_item(job.id, index)
                if existing is not None and existing.status == "queued":
                    queued.append(index)
        return queued

    def put_failed_item(self, job: Job, index: int, error: ItemError, origin: tuple[int, int] | None = None) -> bool:
        """Record an item that failed validation before it was ever queued (a bad line of an upload), with the
        job's counters; False when it exists already (a replay). ``origin`` as in ``put_queued_items``."""
        entry = {**failed_item_row(job.id, index, error, expires_at(job, self._retention)), **origin_attributes(origin)}
        put = {"Put": {"TableName": self._table, "Item": entry, "ConditionExpression": "attribute_not_exists(pk)"}}
        try:
            self._counted(job.id, index, [put], {"queued": -1, "failed": 1})
        except TransitionConflict:
            return False
        except JobGuardFailed:
            return False  # the job row is gone (expired)
        return True

    def _batch_write(self, requests: list[dict[str, Any]], policy: RetryPolicy = BATCH_WRITE_RETRY) -> None:
        """Write every request or raise: the unprocessed items of an answer (botocore does not retry those) are
        written again under ``policy``; when it runs out, RuntimeError, never a job with items silently missing."""
        pending = {self._table: requests}
        retrying = self._retrying(policy)
        for _ in retrying:
            answer = self._client.batch_write_item(RequestItems=pending)
            pending = answer.get("UnprocessedItems") or {}
            if not pending or not retrying.wait():
                break
        if pending:
            left = sum(len(writes) for writes in pending.values())
            raise RuntimeError(f"DynamoDB kept throttling the job's item writes ({left} unwritten, {retrying.why_not})")

    # ------------------------------------------------------------------------------------------ read
    def get_item(self, job_id: str, index: int) -> Item | None:
        answer = self._client.get_item(TableName=self._table, Key=item_key(job_id, index), ConsistentRead=True)
        return item_from_row(answer["Item"]) if "Item" in answer else None

    def _items_query(self, job_id: str, limit: int) -> dict[str, Any]:
        """A Query of the job's item rows, in index order, ``limit`` a page."""
        return {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :items)",
            "ExpressionAttributeValues": {":pk": {"S": f"JOB#{job_id}"}, ":items": {"S": "ITEM#"}},
            "Limit": limit,
            "ConsistentRead": True,
        }

    def items_page(self, job_id: str, limit: int, cursor: str | None) -> tuple[list[Item], str | None]:
        query = self._items_query(job_id, limit)
        if cursor:
            query["ExclusiveStartKey"] = {**item_key(job_id, decode_cursor(cursor))}
        answer = self._client.query(**query)
        items = [item_from_row(raw) for raw in answer.get("Items", [])]
        last = answer.get("LastEvaluatedKey")
        next_cursor = encode_cursor(item_index(last["sk"]["S"])) if last else None
        return items, next_cursor

    def iter_items(self, job_id: str) -> Iterator[Item]:
        """Every item of the job, in index order: pages of ``WHOLE_JOB_PAGE`` rows (DynamoDB stops a page at 1 MB
        anyway), so a whole-job read (a fan-out given up, the tests) costs a round trip per thousand items, not per
        hundred as a client's page does. The results file reads less of each row: ``iter_results``."""
        cursor: str | None = None
        while True:
            items, cursor = self.items_page(job_id, WHOLE_JOB_PAGE, cursor)
            yield from items
            if cursor is None:
                return

    def iter_results(self, job_id: str) -> Iterator[ItemResult]:
        """Every item of the job as its results file states it, in index order: the rows' projection only, in pages
        of ``WHOLE_JOB_PAGE`` (a 1 MB page holds more of these than of whole rows)."""
        query = {
            **self._items_query(job_id, WHOLE_JOB_PAGE),
            "ProjectionExpression": RESULT_PROJECTION,
            "ExpressionAttributeNames": RESULT_NAMES,
        }
        while True:
            answer = self._client.query(**query)
            yield from (result_from_row(raw) for raw in answer.get("Items", []))
            if not answer.get("LastEvaluatedKey"):
                return
            query["ExclusiveStartKey"] = answer["LastEvaluatedKey"]

    # ------------------------------------------------------------------------------------------ transitions
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
        """Move ``item`` from its current status to ``to``, with the job's counters, atomically (and ``also_put``,
        e.g. the image record, in the same transaction). Returns True when this transition completed the job: the
        last terminal transition of a shard looks at every shard and, when none has any item left, writes
        ``completed_at`` with a condition exactly one caller wins. Moving to ``running`` takes a lease of ``lease_s``
        seconds."""
        if to == item.status:
            raise ValueError("a transition changes the status")
        waiting = item.status == "queued" and item.retry_at is not None
        operations = [
            self._status_update(
                item.job_id,
                item.index,
                item.status,
                to,
                error=error,
                record=record,
                lease_s=lease_s,
                waiting=waiting,
            )
        ]
        if also_put is not None:
            operations.append({"Put": {"TableName": self._table, "Item": also_put}})
        deltas: dict[str, int] = {item.status: -1, to: 1}
        if waiting:
            deltas["waiting"] = -1
        try:
            terminal = to in TERMINAL_ITEM_STATUSES
            completed = self._counted(item.job_id, item.index, operations, deltas, completion=terminal)
        except JobGuardFailed as exc:
            raise TransitionConflict(f"job {item.job_id} no longer exists") from exc
        item.status = to
        item.retry_at = None
        if to == "running":
            item.attempts += 1
        return completed

    def claim(self, job_id: str, index: int, *, lease_s: float) -> None:
        """queued → running in one transaction, without reading first (the common case of a first delivery),
        holding the item for ``lease_s`` seconds: TransitionConflict when the item is not a queued item that never
        ran (one deferred after a failure is read first: its counters and ``bad_outputs`` matter), JobUnavailable
        when the job is canceled or gone."""
        operations = [self._status_update(job_id, index, "queued", "running", lease_s=lease_s, never_ran=True)]
        try:  # the shard carries a copy of the canceled flag: the job's row is not part of the claim
            self._counted(job_id, index, operations, {"queued": -1, "running": 1}, open_only=True)
        except JobGuardFailed as exc:
            raise JobUnavailable(f"job {job_id} is canceled or gone") from exc

    def reclaim(self, item: Item, *, lease_s: float) -> None:
        """A redelivered message finds its item ``running``. Take it over only when the lease has expired (the
        previous delivery died); while another delivery holds it, LeaseHeld says how long to wait."""
        now = time.time()
        try:
            self._client.update_item(
                TableName=self._table,
                Key=item_key(item.job_id, item.index),
                UpdateExpression="SET attempts = attempts + :one, updated_at = :now, lease_until = :lease",
                ConditionExpression="#status = :running AND (attribute_not_exists(lease_until) OR lease_until < :t)",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":one": {"N": "1"},
                    ":running": {"S": "running"},
                    ":now": {"S": iso(utc_now())},
                    ":t": {"N": str(int(now))},
                    ":lease": {"N": str(int(now + lease_s))},
                },
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                if item.status == "running" and item.lease_until > now:
                    raise LeaseHeld(item.lease_until - now) from exc
                raise TransitionConflict(f"{item.job_id}#{item.index} is no longer running") from exc
            raise
        item.attempts += 1

    def defer(self, item: Item, retry_at: datetime, *, bad_output: bool = False) -> None:
        """A retryable failure: running → queued until ``retry_at``, the lease given back, with the job's counters
        (``waiting`` too) in the same transaction. ``bad_output`` also counts a paid 200 without a usable output on
        the item (``bad_outputs``). The message's next delivery claims the item from queued again."""
        sets = ["#status = :queued", "updated_at = :now", "retry_at = :retry_at", "lease_until = :zero"]
        values: dict[str, Any] = {
            ":queued": {"S": "queued"},
            ":running": {"S": "running"},
            ":now": {"S": iso(utc_now())},
            ":retry_at": {"S": iso(retry_at)},
            ":zero": {"N": "0"},
        }
        update = "SET " + ", ".join(sets)
        if bad_output:
            update += " ADD bad_outputs :one"
            values[":one"] = {"N": "1"}
        operation = {
            "Update": {
                "TableName": self._table,
                "Key": item_key(item.job_id, item.index),
                "UpdateExpression": update,
                "ConditionExpression": "#status = :running",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": values,
            }
        }
        try:
            self._counted(item.job_id, item.index, [operation], {"running": -1, "queued": 1, "waiting": 1})
        except JobGuardFailed as exc:
            raise TransitionConflict(f"job {item.job_id} no longer exists") from exc
        item.status, item.retry_at, item.lease_until = "queued", retry_at, 0.0
        if bad_output:
            item.bad_outputs += 1

    def cancel_queued_page(self, job_id: str, cursor: str | None, limit: int = 100) -> str | None:
        """Cancel the queued items of one page of a canceled job (with their shards' counters, a transaction per
        50 items: at most 50 shards with them); return the cursor of the next page, None after the last. Safe to
        replay: only items still queued move."""
        items, next_cursor = self.items_page(job_id, limit, cursor)
        queued = [item for item in items if item.status == "queued"]
        if queued:
            raw_job, shards = self._job_rows(job_id)
            legacy = raw_job is not None and not shards
            for chunk in chunks(queued, TRANSACTION_ITEMS // 2):
                self._cancel_queued(job_id, chunk, legacy=legacy)
        return next_cursor

    def _cancel_queued(self, job_id: str, items: list[Item], *, legacy: bool = False) -> None:
        """Cancel queued items in one transaction; on a conflict, retry at once with those still queued (the
        transaction's own conflicts were already backed off in ``_transact``)."""
        for _ in self._retrying(CANCEL_REREAD_RETRY):
            if not items:
                return
            updates = [
                self._status_update(job_id, item.index, "queued", "canceled", waiting=item.retry_at is not None)
                for item in items
            ]
            by_counter: dict[str, tuple[dict[str, Any], dict[str, int]]] = {}
            for item in items:
                key = job_key(job_id) if legacy else shard_key(job_id, item.index)
                _, deltas = by_counter.setdefault(key["sk"]["S"], (key, {"queued": 0, "canceled": 0}))
                deltas["queued"] -= 1
                deltas["canceled"] += 1
                if item.retry_at is not None:
                    deltas["waiting"] = deltas.get("waiting", 0) - 1
            counter_updates = [self._count_update(key, deltas) for key, deltas in by_counter.values()]
            try:
                self._transact(updates, counter_updates)
                return
            except TransitionConflict:
                fresh = (self.get_item(job_id, item.index) for item in items)
                items = [item for item in fresh if item is not None and item.status == "queued"]
        if not items:
            return
        raise RuntimeError(f"could not cancel the queued items of {job_id}")
