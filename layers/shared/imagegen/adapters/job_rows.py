"""The jobs' storage shapes in the service's single DynamoDB table: keys, rows and the items cursor.

Layout (the whole design: ``adapters/job_counters.py``): ``JOB#<id>`` / ``JOB`` holds the job; ``JOB#<id>`` /
``JOB#COUNT#<k>`` its counter shards (``k = index mod 64``); ``JOB#<id>`` / ``ITEM#<index>`` each item.

What lives here: pure functions and constants, no client: the keys, the rows ``create`` and the item writes put,
the entities read back from rows (``job_from_rows``, ``item_from_row``), the opaque cursor of the items pages.
What does not: any read or write (``jobs_table.py``, ``job_items.py``, ``job_counters.py``), and the entities
themselves (``imagegen.entities``, the domain).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from imagegen.adapters.images_table import plain, storable
from imagegen.entities import Item, ItemResult, Job
from imagegen.errors import InvalidRequestError
from imagegen.models import MAX_UPLOAD_LINES, ImageRecord, ImageRequest, ItemError, ItemStatus, JobCounts, WebhookInfo

serializer = TypeSerializer()
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


# ---------------------------------------------------------------------------------------------------- keys
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


# ---------------------------------------------------------------------------------------------------- rows written
def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def expires_at(job: Job, retention: timedelta) -> str:
    """The TTL of every row of ``job`` (epoch seconds, as DynamoDB's TTL reads it)."""
    return str(int((job.created_at + retention).timestamp()))


def job_row(job: Job, expires: str, *, items_key: str | None, correlation_id: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        **job_key(job.id),
        "entity": {"S": "job"},
        "id": {"S": job.id},
        "total": {"N": str(job.total)},
        "shards": {"N": str(shard_count(job.total))},
        "created_at": {"S": iso(job.created_at)},
        "canceled": {"BOOL": False},
        "direct": {"BOOL": job.direct},
        "expires_at": {"N": expires},
    }
    if job.metadata is not None:
        row["metadata"] = serializer.serialize(job.metadata)
    if job.webhook is not None:
        row["webhook_url"] = {"S": job.webhook.url}
        row["webhook_status"] = {"S": "pending"}
        row["webhook_attempts"] = {"N": "0"}
    if items_key is not None:
        row["items_key"] = {"S": items_key}
    if correlation_id is not None:
        row["correlation_id"] = {"S": correlation_id}
    return row


def shard_rows(job: Job, expires: str) -> list[dict[str, Any]]:
    """The job's counter shards as created: each counts its items ``queued``, none terminal yet."""
    rows = []
    for shard, size in enumerate(shard_sizes(job.total)):
        counters = {f"c_{counter}": {"N": str(size if counter == "queued" else 0)} for counter in COUNTERS}
        rows.append(
            {
                **shard_key(job.id, shard),
                "entity": {"S": "job_counter"},
                "total": {"N": str(size)},
                "remaining": {"N": str(size)},
                "canceled": {"BOOL": False},
                "expires_at": {"N": expires},
                **counters,
            }
        )
    return rows


def new_item_row(
    job_id: str,
    index: int,
    request: ImageRequest,
    correlation_id: str | None,
    expires: str,
    origin: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """A queued item that never ran. ``origin``: (request_index, image_index), for a request of several images."""
    entry: dict[str, Any] = {
        **item_key(job_id, index),
        "entity": {"S": "item"},
        "job_id": {"S": job_id},
        "index": {"N": str(index)},
        "status": {"S": "queued"},
        "attempts": {"N": "0"},
        "request": serializer.serialize(storable(request.model_dump(mode="json"))),
        "expires_at": {"N": expires},
        **origin_attributes(origin),
    }
    if correlation_id is not None:
        entry["correlation_id"] = {"S": correlation_id}
    return entry


def origin_attributes(origin: tuple[int, int] | None) -> dict[str, Any]:
    """An item's ``request_index`` and ``image_index`` (a request of several images), or nothing."""
    if origin is None:
        return {}
    return {"request_index": {"N": str(origin[0])}, "image_index": {"N": str(origin[1])}}


def failed_item_row(job_id: str, index: int, error: ItemError, expires: str) -> dict[str, Any]:
    """An item that failed validation before it was ever queued (a bad line of an upload): it has no request."""
    return {
        **item_key(job_id, index),
        "entity": {"S": "item"},
        "job_id": {"S": job_id},
        "index": {"N": str(index)},
        "status": {"S": "failed"},
        "attempts": {"N": "0"},
        "error": serializer.serialize(error.model_dump(mode="json")),
        "expires_at": {"N": expires},
    }


def chunks(values: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


# ---------------------------------------------------------------------------------------------------- rows read
def plain_row(raw: dict[str, Any]) -> dict[str, Any]:
    """A row as DynamoDB answers it (``{"S": …}`` values), as plain Python values (whole numbers as ``int``)."""
    return plain({key: _deserializer.deserialize(value) for key, value in raw.items()})


def job_from_rows(raw: dict[str, Any], shards: list[dict[str, Any]] | None = None) -> Job:
    """The job from its row and its counter shards (summed); a job from before the shards counts on its row."""
    data = plain_row(raw)
    webhook = None
    if data.get("webhook_url"):
        webhook = WebhookInfo(
            url=data["webhook_url"],
            status=data.get("webhook_status", "pending"),
            attempts=data.get("webhook_attempts", 0),
        )
    counters = [data]
    if shards:
        counters = [plain_row(row) for row in shards]
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
        results_recorded="results_key" in data,
        announce_claim=float(data.get("announce_claim", 0) or 0),
    )


def item_from_row(raw: dict[str, Any]) -> Item:
    data = plain_row(raw)
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


# What a results file reads of an item row (``ItemResult``): not the request's prompt, nor the record's parameters
# and timings. Every name of every path is aliased: DynamoDB refuses a reserved word anywhere in a path (index,
# status, error, record, request, stored and parameters are reserved), and moto does not check nested names.
_RESULT_ATTRIBUTES = ("index", "status", "error", "request_index", "image_index", "record", "request")
RESULT_NAMES = {f"#{name}": name for name in (*_RESULT_ATTRIBUTES, "id", "stored", "parameters", "seed")}
RESULT_PROJECTION = ", ".join(
    [f"#{name}" for name in _RESULT_ATTRIBUTES[:5]]
    + ["#record.#id", "#record.#stored", "#record.#parameters.#seed", "#request.#seed"]
)


def result_from_row(raw: dict[str, Any]) -> ItemResult:
    """An item row read with ``RESULT_PROJECTION``."""
    data = plain_row(raw)
    record = data.get("record") or {}
    stored = record.get("stored") or {}
    seed = (record.get("parameters") or {}).get("seed") if record else (data.get("request") or {}).get("seed")
    return ItemResult(
        index=data["index"],
        status=data["status"],
        request_index=data.get("request_index"),
        image_index=data.get("image_index"),
        image_id=record.get("id"),
        s3_uri=f"s3://{stored['bucket']}/{stored['key']}" if stored else None,
        sha256=stored.get("sha256"),
        bytes=stored.get("bytes"),
        width=stored.get("width"),
        height=stored.get("height"),
        seed=seed,
        error=ItemError.model_validate(data["error"]) if data.get("error") else None,
    )


# ---------------------------------------------------------------------------------------------------- cursor
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
