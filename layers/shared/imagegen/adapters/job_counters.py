"""A job's counters, and the transactions that move an item together with them.

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

What lives here: ``CountedWrites``, the lowest layer of the job repository (``ItemTable`` in ``job_items.py``, then
``JobRepository`` in ``jobs_table.py``, build on it): the two halves of a transition (the item's conditional update,
the counter row's update), running them as one transaction with the conflict retries botocore does not make, the
job's rows read together, and the completion. What does not: the rows' shapes (``job_rows.py``), which transitions
exist (``job_items.py``), creating and canceling jobs (``jobs_table.py``).

Slightly over ~300 lines: a transition's two halves, the transaction that runs them with its conflict retries, and
the completion check that follows a shard's last item are read together when reasoning about exact counts; the
pre-shard fallback adds its branch to each.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from imagegen.adapters.images_table import storable
from imagegen.adapters.job_rows import (
    SHARD_PREFIX,
    iso,
    item_key,
    job_from_rows,
    job_key,
    serializer,
    shard_key,
    utc_now,
)
from imagegen.entities import Job, TransitionConflict
from imagegen.models import TERMINAL_ITEM_STATUSES, ImageRecord, ItemError, ItemStatus
from imagegen.retry import Retrying, RetryPolicy, Uniform

RETRYABLE_REASONS = frozenset({None, "None", "TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"})
# Transactions canceled by a conflict with a concurrent one: botocore does not retry those (imagegen.retry). Full
# jitter; the conflict's floor of 20 ms lets the other finish.
CONFLICT_RETRY = RetryPolicy(attempts=6, base_s=0.05, cap_s=0.8, floor_s=0.02)


class JobGuardFailed(Exception):
    """The job's condition failed in a transaction: the job is missing, or this was (or was not) its last item."""


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def cancellation_codes(exc: ClientError) -> list[str | None]:
    """The per-operation reasons of a canceled transaction, in the order of its operations."""
    return [reason.get("Code") for reason in exc.response.get("CancellationReasons") or []]


def condition_failed(exc: ClientError) -> Exception:
    """A canceled transaction whose first operation's condition failed becomes the ConditionalCheckFailedException
    a single write would have raised (what callers of a single write expect); any other cancel stays as it is."""
    codes = cancellation_codes(exc)
    if codes and codes[0] == "ConditionalCheckFailed":
        error = {"Error": {"Code": "ConditionalCheckFailedException", "Message": "the job's condition failed"}}
        return ClientError(error, "TransactWriteItems")  # type: ignore[arg-type]
    return exc


class CountedWrites:
    """The table, its client and the conflict retries shared by every layer of the job repository."""

    def __init__(
        self, client: Any, table_name: str, *, sleep: Callable[[float], None] = time.sleep, rng: Uniform = random
    ) -> None:
        self._client = client
        self._table = table_name
        self._sleep = sleep
        self._rng = rng
        self.conflict_retries = 0  # transactions retried after a TransactionConflict (and throttling)

    def _retrying(self, policy: RetryPolicy) -> Retrying:
        return Retrying(policy, sleep=self._sleep, rng=self._rng)

    # ------------------------------------------------------------------------------------------ the job's rows
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
        values: dict[str, Any] = {":now": {"S": iso(utc_now())}}
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
            if error_code(exc) == "ConditionalCheckFailedException":
                return None
            raise
        return job_from_rows(answer["Attributes"], shards)

    def _is_legacy(self, job_id: str) -> bool:
        """A job written before the counter shards: it exists, without a ``shards`` attribute."""
        answer = self._client.get_item(
            TableName=self._table, Key=job_key(job_id), ConsistentRead=True, ProjectionExpression="pk, shards"
        )
        raw = answer.get("Item")
        return raw is not None and "shards" not in raw

    # ------------------------------------------------------------------------------------------ a transition's halves
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
        values: dict[str, Any] = {":to": {"S": to}, ":from": {"S": current}, ":now": {"S": iso(utc_now())}}
        names = {"#status": "status"}
        if error is not None:
            sets.append("#error = :error")
            values[":error"] = serializer.serialize(error.model_dump(mode="json"))
            names["#error"] = "error"
        if record is not None:
            sets.append("#record = :record")
            values[":record"] = serializer.serialize(storable(record.model_dump(mode="json")))
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
        caller that completed the job. JobGuardFailed when the counter's condition failed (canceled, or gone).

        A job from before the shards (no shard row, counters on the job's row) gets the same, on the job's row."""
        try:
            return self._counted_on(shard_key(job_id, index), job_id, operations, deltas, completion, open_only)
        except JobGuardFailed:
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
        except JobGuardFailed:
            pass
        # The shard's last item (or the job is gone: then this raises JobGuardFailed too).
        self._transact(operations, [self._count_update(key, deltas, guard="last", completes_job=legacy)])
        if legacy:
            return True  # the old model: completed_at was written in that transaction
        return self.complete_if_done(job_id) is not None

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
                    values[":now"] = {"S": iso(utc_now())}
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
        TransitionConflict when an item was no longer in the expected status, JobGuardFailed when only a counter's
        guard failed.

        Concurrent transitions on one shard collide (TransactionConflict) and are retried here with jittered
        backoff: botocore does not retry a canceled transaction. ``conflict_retries`` counts those retries."""
        retrying = self._retrying(policy)
        for _ in retrying:
            try:
                self._client.transact_write_items(TransactItems=[*operations, *counters])
                return
            except ClientError as exc:
                if error_code(exc) != "TransactionCanceledException":
                    raise
                codes = cancellation_codes(exc)
                if not codes or any(code == "ConditionalCheckFailed" for code in codes[: len(operations)]):
                    raise TransitionConflict("an item was no longer in the expected status") from exc
                if any(code == "ConditionalCheckFailed" for code in codes[len(operations) :]):
                    raise JobGuardFailed() from exc
                if any(code not in RETRYABLE_REASONS for code in codes) or not retrying.wait():
                    raise
                self.conflict_retries += 1
