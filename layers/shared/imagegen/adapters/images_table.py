"""Image records in the service's DynamoDB table.

Single-table design, keys ``pk``/``sk``: an image is ``IMAGE#<id>`` / ``IMAGE``. Jobs and their items (the
asynchronous path) live in the same table as ``JOB#<id>`` / ``JOB`` and ``JOB#<id>`` / ``ITEM#<index>``, so one
query reads a job with its items. ``expires_at`` (epoch seconds) is the table's TTL attribute and matches the
bucket's retention, so a record never outlives its image.
"""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from imagegen.models import ImageRecord
from imagegen.models import json_numbers as plain  # DynamoDB's Decimals back to ints/floats (jobs_table uses it too)

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def image_key(image_id: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": f"IMAGE#{image_id}"}, "sk": {"S": "IMAGE"}}


class ImageRepository:
    def __init__(self, client: Any, table_name: str, retention_days: int) -> None:
        self._client = client
        self._table = table_name
        self._retention = timedelta(days=retention_days)

    def item(self, record: ImageRecord) -> dict[str, Any]:
        """The record as a DynamoDB item (also written inside a job item's final transaction)."""
        return {
            **image_key(record.id),
            "entity": {"S": "image"},
            "expires_at": {"N": str(int((record.created_at + self._retention).timestamp()))},
            "record": _serializer.serialize(storable(record.model_dump(mode="json"))),
        }

    def put(self, record: ImageRecord, *, overwrite: bool = False) -> None:
        """Store a record. A new id must not exist, unless ``overwrite`` (a job item's replay rewrites its own
        deterministic id)."""
        item = self.item(record)
        try:
            condition = {} if overwrite else {"ConditionExpression": "attribute_not_exists(pk)"}
            self._client.put_item(TableName=self._table, Item=item, **condition)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            # botocore may have retried a PutItem whose first attempt had succeeded: the same record is fine.
            existing = self.get(record.id)
            if existing is None or existing.stored.sha256 != record.stored.sha256:
                raise ValueError(f"image {record.id} already exists") from exc

    def get(self, image_id: str) -> ImageRecord | None:
        answer = self._client.get_item(TableName=self._table, Key=image_key(image_id), ConsistentRead=True)
        item = answer.get("Item")
        if not item or "record" not in item:
            return None
        # DynamoDB's TTL deletes up to 48 h late, S3's lifecycle on time: an expired record is gone.
        if int(item.get("expires_at", {}).get("N", "0") or 0) and int(item["expires_at"]["N"]) <= time.time():
            return None
        document = _deserializer.deserialize(item["record"])
        return ImageRecord.model_validate(plain(document))


def storable(value: Any) -> Any:
    """JSON data as DynamoDB takes it: floats (``megapixels``) as Decimal, which it stores exactly."""
    if isinstance(value, dict):
        return {key: storable(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [storable(inner) for inner in value]
    if isinstance(value, float):
        return Decimal(repr(value))
    return value
