"""Jobs in the service's single DynamoDB table: the repository the job API, the worker, the fan-out and the results
file use (``JobRepository``).

What lives here: the job row's own life: creating a job with its counter shards and items, abandoning one nobody
was told about, reading it (with its counts), canceling it, recording its results file and its webhook's outcome.
``JobRepository`` is the top layer of three: it inherits the items and their transitions (``job_items.py``), which
inherit the counter transactions and the completion (``job_counters.py``, where the table's design is described).
The rows' shapes, keys and the items cursor are in ``job_rows.py``. The entities (``Job``, ``Item`` and the
transition errors) live in the domain (``imagegen.entities``).
"""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError

from imagegen.adapters.job_counters import (
    CONFLICT_RETRY,
    RETRYABLE_REASONS,
    cancellation_codes,
    condition_failed,
    error_code,
)
from imagegen.adapters.job_items import ItemTable
from imagegen.adapters.job_rows import (
    BATCH_WRITE_ITEMS,
    chunks,
    expires_at,
    iso,
    job_from_rows,
    job_key,
    job_row,
    new_item_row,
    shard_rows,
    utc_now,
)
from imagegen.entities import Item, Job, JobExtras, JobUnavailable, LeaseHeld, TransitionConflict
from imagegen.models import ImageRequest

# The entities live in the domain; re-exported here for the modules that imported them from the adapter.
__all__ = ["Item", "Job", "JobExtras", "JobRepository", "JobUnavailable", "LeaseHeld", "TransitionConflict"]


class JobRepository(ItemTable):
    """Jobs and their items: what the job API, the worker, the fan-out and the results file call."""

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
        expires = expires_at(job, self._retention)
        row = job_row(job, expires, items_key=items_key, correlation_id=correlation_id)
        puts = [{"Put": {"TableName": self._table, "Item": row, "ConditionExpression": "attribute_not_exists(pk)"}}]
        puts.extend({"Put": {"TableName": self._table, "Item": shard}} for shard in shard_rows(job, expires))
        try:  # the job and its shards at once: nobody sees a job without its counters
            self._client.transact_write_items(TransactItems=puts)
        except ClientError as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise
            codes = cancellation_codes(exc)
            if codes and codes[0] == "ConditionalCheckFailed":
                return False  # a replay: the job exists
            raise
        ids = correlation_ids or [None] * len(requests)
        writes = [
            {"PutRequest": {"Item": new_item_row(job.id, index, request, correlation_id, expires)}}
            for index, (request, correlation_id) in enumerate(zip(requests, ids, strict=True))
        ]
        for chunk in chunks(writes, BATCH_WRITE_ITEMS):
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
                "ExpressionAttributeValues": {":now": {"S": iso(utc_now())}, ":true": {"BOOL": True}},
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
            error = condition_failed(exc) if error_code(exc) == "TransactionCanceledException" else exc
            if error is exc:
                raise
            raise error from exc

    def get_job_extras(self, job_id: str) -> tuple[Job | None, JobExtras]:
        raw, shards = self._job_rows(job_id)
        if raw is None:
            return None, JobExtras()
        return job_from_rows(raw, shards), JobExtras(
            items_key=raw.get("items_key", {}).get("S"),
            correlation_id=raw.get("correlation_id", {}).get("S"),
            results_key=raw.get("results_key", {}).get("S"),
            results_items=int(raw.get("results_items", {}).get("N", "0")),
        )

    def claim_announcement(self, job_id: str, until: float) -> bool:
        try:
            self._client.update_item(
                TableName=self._table,
                Key=job_key(job_id),
                UpdateExpression="SET announce_claim = :until",
                ConditionExpression=(
                    "attribute_exists(completed_at) AND attribute_not_exists(results_key) "
                    "AND (attribute_not_exists(announce_claim) OR announce_claim < :now)"
                ),
                ExpressionAttributeValues={":until": {"N": repr(until)}, ":now": {"N": repr(time.time())}},
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
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
        expires = expires_at(job, self._retention)
        try:
            self._client.put_item(
                TableName=self._table,
                Item=new_item_row(job_id, index, request, correlation_id, expires),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise

    # ------------------------------------------------------------------------------------------ read
    def get_job(self, job_id: str) -> Job | None:
        raw, shards = self._job_rows(job_id)
        return job_from_rows(raw, shards) if raw is not None else None

    def get_item_and_job(self, job_id: str, index: int) -> tuple[Item | None, Job | None]:
        """The item and its job (with its counts), both strongly consistent: the path of a claim that failed."""
        return self.get_item(job_id, index), self.get_job(job_id)

    # ------------------------------------------------------------------------------------------ cancel, record
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
                if error_code(exc) != "TransactionCanceledException":
                    raise
                codes = cancellation_codes(exc)
                if codes and codes[0] == "ConditionalCheckFailed":
                    return False
                if any(code not in RETRYABLE_REASONS for code in codes) or not retrying.wait():
                    raise
                self.conflict_retries += 1
        raise AssertionError("not reached: the last attempt's wait() is False")  # pragma: no cover

    def record_webhook(self, job_id: str, status: str, attempts: int) -> None:
        self._client.update_item(
            TableName=self._table,
            Key=job_key(job_id),
            UpdateExpression="SET webhook_status = :status, webhook_attempts = :attempts",
            ExpressionAttributeValues={":status": {"S": status}, ":attempts": {"N": str(attempts)}},
        )
