"""Jobs and their items in the service's single DynamoDB table.

``JOB#<id>`` / ``JOB`` holds the job. Its progress lives in counter shards, ``JOB#<id>`` / ``JOB#COUNT#<k>`` for
``k = index mod 64`` (so a job of fewer than 64 items has one shard per item, a larger one 64): one counter per
item status (``c_queued`` … ``c_canceled``), ``c_waiting`` (queued items deferred to their ``retry_at``, also in
``c_queued``), ``remaining`` (the shard's items not yet terminal) and a copy of the job's ``canceled`` flag.
``JOB#<id>`` / ``ITEM#<index>`` holds each item. Every status change of an item is a transaction: the item's
conditional update (its status must still be the one read) together with its shard's counters, so counts are exact
under concurrency and redelivery, and no row is written by every item of a job (docs/scaling.md: why). The
transition that makes a shard's last item terminal is guarded as such (``remaining = 1``); only then are the job's
rows read (one strongly consistent Query: the job and its shards sort together under ``JOB``) and, when no item
remains anywhere, ``completed_at`` written on the job with a condition that exactly one caller wins: that caller
announces the completion. A completion a crash left unwritten is written by the next look (a redelivery, a cancel's
last page: ``complete_if_done``).

Jobs written before the shards (no ``shards`` attribute: the counters on the job row itself) keep working: their
transitions fall back to the job row, with ``completed_at`` in the same transaction as before.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from imagegen.adapters.images_table import plain, storable
from imagegen.entities import Item, Job, JobUnavailable, LeaseHeld, TransitionConflict
from imagegen.errors import InvalidRequestError
from imagegen.models import (
    MAX_UPLOAD_LINES,
    TERMINAL_ITEM_STATUSES,
    ImageRecord,
    ImageRequest,
    ItemError,
    ItemStatus,
    JobCounts,
    WebhookInfo,
)
from imagegen.retry import Retrying, RetryPolicy, Uniform

# The entities live in the domain; re-exported here for the modules that imported them from the adapter.
__all__ = ["Item", "Job", "JobRepository", "JobUnavailable", "LeaseHeld", "TransitionConflict"]

_RETRYABLE_REASONS = frozenset(
    {None, "None", "TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}
)
# The retries botocore does not make (imagegen.retry): a batch's unprocessed items (throttling), and transactions
# canceled by a conflict with a concurrent one. Full jitter; the conflict's floor of 20 ms lets the other finish.
BATCH_WRITE_RETRY = RetryPolicy(attempts=8, base_s=0.05, cap_s=2.0)
CONFLICT_RETRY = RetryPolicy(attempts=6, base_s=0.05, cap_s=0.8, floor_s=0.02)
CANCEL_REREAD_RETRY = RetryPolicy(attempts=5, base_s=0.0, cap_s=0.0)  # no wait: a fresh read, then at once
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()
STATUSES: tuple[ItemStatus, ...] = ("queued", "running", "succeeded", "failed", "canceled")
# The job's counters: one per status, and ``waiting`` (queued items deferred to their ``retry_at``, also queued).
COUNTERS: tuple[str, ...] = (*STATUSES, "waiting")
TRANSACTION_ITEMS = 100
BATCH_WRITE_ITEMS = 25
# Counter shards per job at most. An item's shard is ``index mod COUNTER_SHARDS``, so a transition finds its shard
# without reading the job; a job of ``total`` items has ``min(total, COUNTER_SHARDS)`` of them. A cancel flags the
# job and every shard in one transaction, so this plus one must stay within TRANSACTION_ITEMS.
COUNTER_SHARDS = 64
SHARD_PREFIX = "JOB#COUNT#"


def job_key(job_id: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "JOB"}}


def shard_count(total: int) -> int:
    return max(1, min(total, COUNTER_SHARDS))


def shard_of(index: int) -> int:
    return index % COUNTER_SHARDS


def shard_key(job_id: str, index: int) -> dict[str, dict[str, str]]:
    """The counter shard that counts item ``index``."""
    return {"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": f"{SHARD_PREFIX}{shard_of(index):02d}"}}


def shard_sizes(total: int) -> list[int]:
    """How many of the job's items each shard counts."""
    return [len(range(shard, total, COUNTER_SHARDS)) for shard in range(shard_count(total))] if total else [0]


def item_sort_key(index: int) -> str:
    """``ITEM#0000``-``ITEM#9999`` (the original width), then ``ITEM#~010000``…: ``~`` sorts after the digits, so
    items of an uploaded job (up to 100,000) still page in index order, and existing rows keep their keys."""
    return f"ITEM#{index:04d}" if index < 10_000 else f"ITEM#~{index:06d}"


def item_index(sort_key: str) -> int:
    return int(sort_key.split("#", 1)[1].lstrip("~"))


def item_key(job_id: str, index: int) -> dict[str, dict[str, str]]:
    return {"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": item_sort_key(index)}}


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class JobExtras:
    """What the fan-out and the results file record on the job row besides the job itself."""

    items_key: str | None = None  # the job's items object (fanned out by the worker), when it has one
    correlation_id: str | None = None  # an event-driven job's correlation id, echoed in its events
    results_key: str | None = None  # the results file, once written
    results_items: int = 0


class JobRepository:
    def __init__(
        self,
        client: Any,
        table_name: str,
        retention_days: int,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: Uniform = random,
    ) -> None:
        self._client = client
        self._table = table_name
        self._retention = timedelta(days=retention_days)
        self._sleep = sleep
        self._rng = rng
        self.conflict_retries = 0  # transactions retried after a TransactionConflict (and throttling)

    def _retrying(self, policy: RetryPolicy) -> Retrying:
        return Retrying(policy, sleep=self._sleep, rng=self._rng)

    # ------------------------------------------------------------------------------------------ create
    def create(
        self,
        job: Job,
        requests: list[ImageRequest],
        correlation_ids: list[str | None] | None = None,
        *,
        items_key: str | None = None,
        correlation_id: str | None = None,
    ) -> bool:
        """Write the job, then its items. Returns False when the job already existed (a replay). With
        ``items_key`` (and no ``requests``) the items are in that object: the worker's fan-out writes their rows,
        and until then the job's counters count them ``queued``."""
        expires = str(int((job.created_at + self._retention).timestamp()))
        item: dict[str, Any] = {
            **job_key(job.id),
            "entity": {"S": "job"},
            "id": {"S": job.id},
            "total": {"N": str(job.total)},
            "shards": {"N": str(shard_count(job.total))},
            "created_at": {"S": _iso(job.created_at)},
            "canceled": {"BOOL": False},
            "direct": {"BOOL": job.direct},
            "expires_at": {"N": expires},
        }
        if job.metadata is not None:
            item["metadata"] = _serializer.serialize(job.metadata)
        if job.webhook is not None:
            item["webhook_url"] = {"S": job.webhook.url}
            item["webhook_status"] = {"S": "pending"}
            item["webhook_attempts"] = {"N": "0"}
        if items_key is not None:
            item["items_key"] = {"S": items_key}
        if correlation_id is not None:
            item["correlation_id"] = {"S": correlation_id}
        puts = [{"Put": {"TableName": self._table, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}}]
        for shard, size in enumerate(shard_sizes(job.total)):
            counters = {f"c_{counter}": {"N": str(size if counter == "queued" else 0)} for counter in COUNTERS}
            row = {
                **shard_key(job.id, shard),
                "entity": {"S": "job_counter"},
                "total": {"N": str(size)},
                "remaining": {"N": str(size)},
                "canceled": {"BOOL": False},
                "expires_at": {"N": expires},
                **counters,
            }
            puts.append({"Put": {"TableName": self._table, "Item": row}})
        try:  # the job and its shards at once: nobody sees a job without its counters
            self._client.transact_write_items(TransactItems=puts)
        except ClientError as exc:
            if _code(exc) != "TransactionCanceledException":
                raise
            codes = [reason.get("Code") for reason in exc.response.get("CancellationReasons") or []]
            if codes and codes[0] == "ConditionalCheckFailed":
                return False  # a replay: the job exists
            raise
        ids = correlation_ids or [None] * len(requests)
        writes = [
            {"PutRequest": {"Item": self._new_item(job.id, index, request, correlation_id, expires)}}
            for index, (request, correlation_id) in enumerate(zip(requests, ids, strict=True))
        ]
        for chunk in _chunks(writes, BATCH_WRITE_ITEMS):
            self._batch_write(chunk)
        return True

    def abandon(self, job_id: str) -> None:
        """A job nobody was told about (its fan-out could not be handed to the queue): completed at once with every
        item counted failed, so nothing looks alive. No item row exists yet; the records never get deleted."""
        job_update: dict[str, Any] = {
            "Update": {
                "TableName": self._table,
                "Key": job_key(job_id),
                "UpdateExpression": "SET completed_at = :now, abandoned = :true",
                "ConditionExpression": "attribute_exists(pk) AND attribute_not_exists(completed_at)",
                "ExpressionAttributeValues": {":now": {"S": _iso(_now())}, ":true": {"BOOL": True}},
            }
        }
        raw_job, shards = self._job_rows(job_id)
        if raw_job is not None and not shards:  # a job from before the shards: its counters are on its row
            job_update["Update"]["UpdateExpression"] += ", remaining = :zero, c_queued = :zero, c_failed = #total"
            job_update["Update"]["ExpressionAttributeNames"] = {"#total": "total"}
            job_update["Update"]["ExpressionAttributeValues"][":zero"] = {"N": "0"}
        shard_updates = [
            {
                "Update": {
                    "TableName": self._table,
                    "Key": {"pk": shard["pk"], "sk": shard["sk"]},
                    "UpdateExpression": "SET remaining = :zero, c_queued = :zero, c_failed = #total",
                    "ExpressionAttributeNames": {"#total": "total"},
                    "ExpressionAttributeValues": {":zero": {"N": "0"}},
                }
            }
            for shard in shards
        ]
        try:
            self._client.transact_write_items(TransactItems=[job_update, *shard_updates])
        except ClientError as exc:
            error = _condition_failed(exc) if _code(exc) == "TransactionCanceledException" else exc
            if error is exc:
                raise
            raise error from exc

    def get_job_extras(self, job_id: str) -> tuple[Job | None, JobExtras]:
        raw, shards = self._job_rows(job_id)
        if raw is None:
            return None, JobExtras()
        return _job(raw, shards), JobExtras(
            items_key=raw.get("items_key", {}).get("S"),
            correlation_id=raw.get("correlation_id", {}).get("S"),
            results_key=raw.get("results_key", {}).get("S"),
            results_items=int(raw.get("results_items", {}).get("N", "0")),
        )

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
        expires = str(int((job.created_at + self._retention).timestamp()))
        origins = origins or {}
        puts = [
            {
                "Put": {
                    "TableName": self._table,
                    "Item": self._new_item(job.id, index, request, correlation_id, expires, origins.get(index)),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            }
            for index, request in requests
        ]
        try:  # the first delivery of a chunk, the usual case: one transaction
            self._client.transact_write_items(TransactItems=puts)
            return [index for index, _ in requests]
        except ClientError as exc:
            if _code(exc) != "TransactionCanceledException":
                raise
        queued = []  # a replay (or a conflict): item by item
        for index, put in zip((index for index, _ in requests), puts, strict=True):
            try:
                self._client.put_item(**put["Put"])
                queued.append(index)
            except ClientError as exc:
                if _code(exc) != "ConditionalCheckFailedException":
                    raise
                existing = self.get_item(job.id, index)
                if existing is not None and existing.status == "queued":
                    queued.append(index)
        return queued

    def put_failed_item(self, job: Job, index: int, error: ItemError, origin: tuple[int, int] | None = None) -> bool:
        """Record an item that failed validation before it was ever queued (a bad line of an upload), with the
        job's counters; False when it exists already (a replay). ``origin`` as in ``put_queued_items``."""
        expires = str(int((job.created_at + self._retention).timestamp()))
        entry: dict[str, Any] = {
            **item_key(job.id, index),
            "entity": {"S": "item"},
            "job_id": {"S": job.id},
            "index": {"N": str(index)},
            "status": {"S": "failed"},
            "attempts": {"N": "0"},
            "error": _serializer.serialize(error.model_dump(mode="json")),
            "expires_at": {"N": expires},
            **_origin(origin),
        }
        put = {"Put": {"TableName": self._table, "Item": entry, "ConditionExpression": "attribute_not_exists(pk)"}}
        try:
            self._counted(job.id, index, [put], {"queued": -1, "failed": 1})
        except TransitionConflict:
            return False
        except _JobGuardFailed:
            return False  # the job row is gone (expired)
        return True

    def record_results(self, job_id: str, key: str, items: int) -> None:
        self._client.update_item(
            TableName=self._table,
            Key=job_key(job_id),
            UpdateExpression="SET results_key = :key, results_items = :items",
            ExpressionAttributeValues={":key": {"S": key}, ":items": {"N": str(items)}},
        )

    def ensure_item(self, job_id: str, index: int, request: ImageRequest, correlation_id: str | None) -> None:
        """Write a queued item unless it exists (a direct job whose first delivery died between job and item)."""
        job = self.get_job(job_id)
        if job is None:
            raise ValueError(f"job {job_id} does not exist")
        expires = str(int((job.created_at + self._retention).timestamp()))
        try:
            self._client.put_item(
                TableName=self._table,
                Item=self._new_item(job_id, index, request, correlation_id, expires),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise

    @staticmethod
    def _new_item(
        job_id: str,
        index: int,
        request: ImageRequest,
        correlation_id: str | None,
        expires: str,
        origin: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            **item_key(job_id, index),
            "entity": {"S": "item"},
            "job_id": {"S": job_id},
            "index": {"N": str(index)},
            "status": {"S": "queued"},
            "attempts": {"N": "0"},
            "request": _serializer.serialize(storable(request.model_dump(mode="json"))),
            "expires_at": {"N": expires},
            **_origin(origin),
        }
        if correlation_id is not None:
            entry["correlation_id"] = {"S": correlation_id}
        return entry

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
    def get_job(self, job_id: str) -> Job | None:
        raw, shards = self._job_rows(job_id)
        return _job(raw, shards) if raw is not None else None

    def _job_rows(self, job_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The job's row and its counter shards: one strongly consistent Query (``JOB`` and ``JOB#COUNT#…`` sort
        together, after every ``ITEM#``), paged only if DynamoDB splits it."""
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :job)",
            "ExpressionAttributeValues": {":pk": {"S": f"JOB#{job_id}"}, ":job": {"S": "JOB"}},
            "ConsistentRead": True,
        }
        raw_job, shards = None, []
        while True:
            answer = self._client.query(**query)
            for raw in answer.get("Items", []):
                if raw["sk"]["S"] == "JOB":
                    raw_job = raw
                elif raw["sk"]["S"].startswith(SHARD_PREFIX):
                    shards.append(raw)
            if "LastEvaluatedKey" not in answer:
                return raw_job, shards
            query["ExclusiveStartKey"] = answer["LastEvaluatedKey"]

    def get_item_and_job(self, job_id: str, index: int) -> tuple[Item | None, Job | None]:
        """The item and its job (with its counts), both strongly consistent: the path of a claim that failed."""
        return self.get_item(job_id, index), self.get_job(job_id)

    def get_item(self, job_id: str, index: int) -> Item | None:
        answer = self._client.get_item(TableName=self._table, Key=item_key(job_id, index), ConsistentRead=True)
        return _item(answer["Item"]) if "Item" in answer else None

    def items_page(self, job_id: str, limit: int, cursor: str | None) -> tuple[list[Item], str | None]:
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :items)",
            "ExpressionAttributeValues": {":pk": {"S": f"JOB#{job_id}"}, ":items": {"S": "ITEM#"}},
            "Limit": limit,
            "ConsistentRead": True,
        }
        if cursor:
            query["ExclusiveStartKey"] = {**item_key(job_id, decode_cursor(cursor))}
        answer = self._client.query(**query)
        items = [_item(raw) for raw in answer.get("Items", [])]
        last = answer.get("LastEvaluatedKey")
        next_cursor = encode_cursor(item_index(last["sk"]["S"])) if last else None
        return items, next_cursor

    def iter_items(self, job_id: str) -> Iterator[Item]:
        cursor: str | None = None
        while True:
            items, cursor = self.items_page(job_id, 100, cursor)
            yield from items
            if cursor is None:
                return

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
        except _JobGuardFailed as exc:
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
        except _JobGuardFailed as exc:
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
                    ":now": {"S": _iso(_now())},
                    ":t": {"N": str(int(now))},
                    ":lease": {"N": str(int(now + lease_s))},
                },
            )
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
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
            ":now": {"S": _iso(_now())},
            ":retry_at": {"S": _iso(retry_at)},
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
        except _JobGuardFailed as exc:
            raise TransitionConflict(f"job {item.job_id} no longer exists") from exc
        item.status, item.retry_at, item.lease_until = "queued", retry_at, 0.0
        if bad_output:
            item.bad_outputs += 1

    def cancel(self, job_id: str) -> bool:
        """Flag the job canceled, unless it completed: one transaction, whatever the job's size (the job's row and
        the flag's copy on each of its at most 64 counter shards). From then on no item of it is claimed (``claim``
        checks its shard's flag); ``cancel_queued_page`` settles the queued ones. False when the job had completed
        (or does not exist)."""
        _, shards = self._job_rows(job_id)
        operations: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self._table,
                    "Key": job_key(job_id),
                    "UpdateExpression": "SET canceled = :true",
                    "ConditionExpression": "attribute_exists(pk) AND attribute_not_exists(completed_at)",
                    "ExpressionAttributeValues": {":true": {"BOOL": True}},
                }
            }
        ]
        operations.extend(
            {
                "Update": {
                    "TableName": self._table,
                    "Key": {"pk": shard["pk"], "sk": shard["sk"]},
                    "UpdateExpression": "SET canceled = :true",
                    "ExpressionAttributeValues": {":true": {"BOOL": True}},
                }
            }
            for shard in shards
        )
        retrying = self._retrying(CONFLICT_RETRY)
        for _ in retrying:
            try:
                self._client.transact_write_items(TransactItems=operations)
                return True
            except ClientError as exc:
                if _code(exc) != "TransactionCanceledException":
                    raise
                codes = [reason.get("Code") for reason in exc.response.get("CancellationReasons") or []]
                if codes and codes[0] == "ConditionalCheckFailed":
                    return False
                if any(code not in _RETRYABLE_REASONS for code in codes) or not retrying.wait():
                    raise
                self.conflict_retries += 1
        raise AssertionError("not reached: the last attempt's wait() is False")  # pragma: no cover

    def cancel_queued_page(self, job_id: str, cursor: str | None, limit: int = 100) -> str | None:
        """Cancel the queued items of one page of a canceled job (with their shards' counters, a transaction per
        50 items: at most 50 shards with them); return the cursor of the next page, None after the last. Safe to
        replay: only items still queued move."""
        items, next_cursor = self.items_page(job_id, limit, cursor)
        queued = [item for item in items if item.status == "queued"]
        if queued:
            raw_job, shards = self._job_rows(job_id)
            legacy = raw_job is not None and not shards
            for chunk in _chunks(queued, TRANSACTION_ITEMS // 2):
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

    def complete_if_done(self, job_id: str) -> Job | None:
        """Mark the job complete when no item remains in any shard; return it to the one caller that did. The
        shards are read strongly consistent after the caller's own transition: items never leave a terminal
        status, so a zero seen is final, and the condition on ``completed_at`` lets exactly one writer win."""
        raw_job, shards = self._job_rows(job_id)
        if raw_job is None or "completed_at" in raw_job:
            return None
        if shards:
            if sum(int(shard["remaining"]["N"]) for shard in shards) != 0:
                return None
            condition = "attribute_exists(pk) AND attribute_not_exists(completed_at)"
        else:  # a job from before the shards: its own ``remaining``
            condition = "remaining = :zero AND attribute_not_exists(completed_at)"
        values: dict[str, Any] = {":now": {"S": _iso(_now())}}
        if not shards:
            values[":zero"] = {"N": "0"}
        try:
            answer = self._client.update_item(
                TableName=self._table,
                Key=job_key(job_id),
                UpdateExpression="SET completed_at = :now",
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return None
            raise
        return _job(answer["Attributes"], shards)

    def record_webhook(self, job_id: str, status: str, attempts: int) -> None:
        self._client.update_item(
            TableName=self._table,
            Key=job_key(job_id),
            UpdateExpression="SET webhook_status = :status, webhook_attempts = :attempts",
            ExpressionAttributeValues={":status": {"S": status}, ":attempts": {"N": str(attempts)}},
        )

    # ------------------------------------------------------------------------------------------ internals
    def _status_update(
        self,
        job_id: str,
        index: int,
        current: ItemStatus,
        to: ItemStatus,
        *,
        error: ItemError | None = None,
        record: ImageRecord | None = None,
        lease_s: float | None = None,
        waiting: bool = False,
        never_ran: bool = False,
    ) -> dict[str, Any]:
        """The item's half of a transition: conditional on its status still being ``current``. Moving to
        ``running`` counts an attempt and takes a lease of ``lease_s`` seconds (required then). A queued item is
        also conditional on whether it is ``waiting`` (deferred, with ``retry_at``), which leaves with it, so the
        job's ``waiting`` counter moves exactly; ``never_ran`` requires that it never ran (no attempts)."""
        sets = ["#status = :to", "updated_at = :now"]
        values: dict[str, Any] = {":to": {"S": to}, ":from": {"S": current}, ":now": {"S": _iso(_now())}}
        names = {"#status": "status"}
        if error is not None:
            sets.append("#error = :error")
            values[":error"] = _serializer.serialize(error.model_dump(mode="json"))
            names["#error"] = "error"
        if record is not None:
            sets.append("#record = :record")
            values[":record"] = _serializer.serialize(storable(record.model_dump(mode="json")))
            names["#record"] = "record"
        if to == "running":
            if lease_s is None:
                raise ValueError("moving an item to running needs its lease (lease_s)")
            sets.extend(["attempts = if_not_exists(attempts, :no_attempts) + :one", "lease_until = :lease"])
            values[":one"] = {"N": "1"}
            values[":no_attempts"] = {"N": "0"}
            values[":lease"] = {"N": str(int(time.time() + lease_s))}
        condition = "#status = :from"
        update = "SET " + ", ".join(sets)
        if current == "queued":
            condition += " AND attribute_exists(retry_at)" if waiting else " AND attribute_not_exists(retry_at)"
            if waiting:
                update += " REMOVE retry_at"
        if never_ran:
            condition += " AND (attribute_not_exists(attempts) OR attempts = :zero_attempts)"
            values[":zero_attempts"] = {"N": "0"}
        return {
            "Update": {
                "TableName": self._table,
                "Key": item_key(job_id, index),
                "UpdateExpression": update,
                "ConditionExpression": condition,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        }

    def _counted(
        self,
        job_id: str,
        index: int,
        operations: list[dict[str, Any]],
        deltas: dict[str, int],
        *,
        completion: bool = False,
        open_only: bool = False,
    ) -> bool:
        """Run ``operations`` (the item's half) with item ``index``'s counter shard moved by ``deltas``, in one
        transaction. ``open_only`` refuses a canceled job (the shard's copy of the flag). ``completion``: a
        terminal transition, guarded "others remain in this shard"; when that guard fails, the same transaction
        again guarded "the shard's last", then the job completes if no shard has any left. Returns True to the one
        caller that completed the job. _JobGuardFailed when the counter's condition failed (canceled, or gone).

        A job from before the shards (no shard row, counters on the job's row) gets the same, on the job's row."""
        try:
            return self._counted_on(shard_key(job_id, index), job_id, operations, deltas, completion, open_only)
        except _JobGuardFailed:
            if not self._is_legacy(job_id):
                raise
        return self._counted_on(job_key(job_id), job_id, operations, deltas, completion, open_only, legacy=True)

    def _counted_on(
        self,
        key: dict[str, Any],
        job_id: str,
        operations: list[dict[str, Any]],
        deltas: dict[str, int],
        completion: bool,
        open_only: bool,
        *,
        legacy: bool = False,
    ) -> bool:
        if not completion:
            self._transact(operations, [self._count_update(key, deltas, open_only=open_only)])
            return False
        try:  # not the shard's last item (the usual case): one transaction
            self._transact(operations, [self._count_update(key, deltas, guard="not_last")])
            return False
        except _JobGuardFailed:
            pass
        # The shard's last item (or the job is gone: then this raises _JobGuardFailed too).
        self._transact(operations, [self._count_update(key, deltas, guard="last", completes_job=legacy)])
        if legacy:
            return True  # the old model: completed_at was written in that transaction
        return self.complete_if_done(job_id) is not None

    def _is_legacy(self, job_id: str) -> bool:
        """A job written before the counter shards: it exists, without a ``shards`` attribute."""
        answer = self._client.get_item(
            TableName=self._table, Key=job_key(job_id), ConsistentRead=True, ProjectionExpression="pk, shards"
        )
        raw = answer.get("Item")
        return raw is not None and "shards" not in raw

    def _count_update(
        self,
        key: dict[str, Any],
        deltas: dict[str, int],
        guard: str | None = None,
        *,
        open_only: bool = False,
        completes_job: bool = False,
    ) -> dict[str, Any]:
        """The counter row's half of a transition (a shard, or a legacy job's own row). ``guard`` "not_last": other
        items of this row remain; "last": these are its last (``completes_job``: also write ``completed_at``, the
        legacy job row's way)."""
        terminal = sum(delta for status, delta in deltas.items() if status in TERMINAL_ITEM_STATUSES)
        adds = [f"c_{status} :d_{status}" for status in deltas]
        values: dict[str, Any] = {f":d_{status}": {"N": str(delta)} for status, delta in deltas.items()}
        condition = "attribute_exists(pk)"
        sets = ""
        if open_only:
            condition += " AND canceled = :false"
            values[":false"] = {"BOOL": False}
        if terminal:
            adds.append("remaining :d_remaining")
            values[":d_remaining"] = {"N": str(-terminal)}
            if guard == "not_last":
                condition += " AND remaining > :terminal"
                values[":terminal"] = {"N": str(terminal)}
            elif guard == "last":
                condition += " AND remaining = :terminal"
                values[":terminal"] = {"N": str(terminal)}
                if completes_job:
                    condition += " AND attribute_not_exists(completed_at)"
                    sets = " SET completed_at = :now"
                    values[":now"] = {"S": _iso(_now())}
        return {
            "Update": {
                "TableName": self._table,
                "Key": key,
                "UpdateExpression": "ADD " + ", ".join(adds) + sets,
                "ConditionExpression": condition,
                "ExpressionAttributeValues": values,
            }
        }

    def _transact(
        self, operations: list[dict[str, Any]], counters: list[dict[str, Any]], policy: RetryPolicy = CONFLICT_RETRY
    ) -> None:
        """Run a transaction of the items' ``operations`` and then their ``counters`` updates. Raises
        TransitionConflict when an item was no longer in the expected status, _JobGuardFailed when only a counter's
        guard failed.

        Concurrent transitions on one shard collide (TransactionConflict) and are retried here with jittered
        backoff: botocore does not retry a canceled transaction. ``conflict_retries`` counts those retries."""
        retrying = self._retrying(policy)
        for _ in retrying:
            try:
                self._client.transact_write_items(TransactItems=[*operations, *counters])
                return
            except ClientError as exc:
                if _code(exc) != "TransactionCanceledException":
                    raise
                codes = [reason.get("Code") for reason in exc.response.get("CancellationReasons") or []]
                if not codes or any(code == "ConditionalCheckFailed" for code in codes[: len(operations)]):
                    raise TransitionConflict("an item was no longer in the expected status") from exc
                if any(code == "ConditionalCheckFailed" for code in codes[len(operations) :]):
                    raise _JobGuardFailed() from exc
                if any(code not in _RETRYABLE_REASONS for code in codes) or not retrying.wait():
                    raise
                self.conflict_retries += 1


class _JobGuardFailed(Exception):
    """The job's condition failed in a transaction: the job is missing, or this was (or was not) its last item."""


def encode_cursor(index: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"i": index}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        document = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        index = document["i"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise InvalidRequestError("cursor is not one this API returned", field="cursor") from None
    if not isinstance(index, int) or not 0 <= index < MAX_UPLOAD_LINES:
        raise InvalidRequestError("cursor is not one this API returned", field="cursor")
    return index


def _chunks(values: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _condition_failed(exc: ClientError) -> Exception:
    """A canceled transaction whose first operation's condition failed becomes the ConditionalCheckFailedException
    a single write would have raised (what callers of a single write expect); any other cancel stays as it is."""
    codes = [reason.get("Code") for reason in exc.response.get("CancellationReasons") or []]
    if codes and codes[0] == "ConditionalCheckFailed":
        error = {"Error": {"Code": "ConditionalCheckFailedException", "Message": "the job's condition failed"}}
        return ClientError(error, "TransactWriteItems")  # type: ignore[arg-type]
    return exc


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _job(raw: dict[str, Any], shards: list[dict[str, Any]] | None = None) -> Job:
    """The job from its row and its counter shards (summed); a job from before the shards counts on its row."""
    data = plain({key: _deserializer.deserialize(value) for key, value in raw.items()})
    webhook = None
    if data.get("webhook_url"):
        webhook = WebhookInfo(
            url=data["webhook_url"],
            status=data.get("webhook_status", "pending"),
            attempts=data.get("webhook_attempts", 0),
        )
    counters = [data]
    if shards:
        counters = [plain({key: _deserializer.deserialize(value) for key, value in row.items()}) for row in shards]
    totals = {counter: sum(row.get(f"c_{counter}", 0) for row in counters) for counter in COUNTERS}
    return Job(
        id=data["id"],
        total=data["total"],
        created_at=datetime.fromisoformat(data["created_at"]),
        counts=JobCounts(**{counter: max(0, value) for counter, value in totals.items()}),
        remaining=sum(row.get("remaining", 0) for row in counters),
        canceled=bool(data.get("canceled")),
        completed_at=datetime.fromisoformat(data["completed_at"]) if data.get("completed_at") else None,
        metadata=data.get("metadata"),
        webhook=webhook,
        direct=bool(data.get("direct")),
    )


def _origin(origin: tuple[int, int] | None) -> dict[str, Any]:
    """An item's ``request_index`` and ``image_index`` (a request of several images), or nothing."""
    if origin is None:
        return {}
    return {"request_index": {"N": str(origin[0])}, "image_index": {"N": str(origin[1])}}


def _item(raw: dict[str, Any]) -> Item:
    data = plain({key: _deserializer.deserialize(value) for key, value in raw.items()})
    return Item(
        job_id=data["job_id"],
        index=data["index"],
        status=data["status"],
        # No request: an uploaded line that failed validation (recorded failed, never processed).
        request=ImageRequest.model_validate(data["request"], strict=False) if "request" in data else None,  # type: ignore[arg-type]
        attempts=data.get("attempts", 0),
        error=ItemError.model_validate(data["error"]) if data.get("error") else None,
        record=ImageRecord.model_validate(data["record"]) if data.get("record") else None,
        correlation_id=data.get("correlation_id"),
        lease_until=float(data.get("lease_until", 0) or 0),
        bad_outputs=int(data.get("bad_outputs", 0) or 0),
        retry_at=datetime.fromisoformat(data["retry_at"]) if data.get("retry_at") else None,
        request_index=data.get("request_index"),
        image_index=data.get("image_index"),
    )
