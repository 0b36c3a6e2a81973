"""A job's objects in the bucket: its items (one ``POST /v1/images`` body per line), its results file, and the
files clients upload to submit large jobs.

``jobs/<job_id>/items.jsonl``  the job's items, written once at submit (or copied from an upload); the fan-out reads
                               it by byte ranges, so a replayed chunk reads exactly the same lines.
``jobs/<job_id>/results.jsonl`` one line per item in index order, written when the job completes.
``uploads/<upload_id>.jsonl``  a client's file; the bucket's lifecycle deletes it after a day.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from imagegen.models import MAX_NUM_IMAGES, FanoutChunk

CHUNK_ITEMS = 100  # items per fan-out chunk: one chunk message writes and enqueues this many
JSONL = "application/x-ndjson"


def items_key(job_id: str) -> str:
    return f"jobs/{job_id}/items.jsonl"


def results_key(job_id: str) -> str:
    return f"jobs/{job_id}/results.jsonl"


def upload_key(upload_id: str) -> str:
    return f"uploads/{upload_id}.jsonl"


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class ItemsPlan:
    """What one pass over an items object found: its items (a non-blank line makes ``images_in_line`` of them), the
    chunks they fall into, and its requests (non-blank lines)."""

    items: int
    chunks: list[FanoutChunk]
    requests: int = 0


def images_in_line(line: bytes) -> int:
    """The items a line of a job's items object makes: its ``num_images`` when that is 1–4, else 1 (a line that
    is not a valid request is one failed item). The plan and the fan-out both count with this, so a chunk's
    items always add up to what the plan counted. Only a line that can name ``num_images`` (the key, or a JSON
    escape that could spell it) is parsed: the usual line costs a substring search."""
    if b"num_images" not in line and b"\\" not in line:
        return 1
    try:
        value = json.loads(line)
    except ValueError:
        return 1
    count = value.get("num_images") if isinstance(value, dict) else None
    if isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= MAX_NUM_IMAGES:
        return count
    return 1


class JobObjects:
    def __init__(self, client: Any, bucket: str, *, url_ttl_s: int = 3600) -> None:
        self._client = client
        self._bucket = bucket
        self._url_ttl_s = url_ttl_s

    def s3_uri(self, key: str) -> str:
        return f"s3://{self._bucket}/{key}"

    def put_lines(self, key: str, lines: Iterable[str]) -> int:
        """Write one line per entry; returns the object's size in bytes."""
        body = "".join(f"{line}\n" for line in lines).encode("utf-8")
        self._client.put_object(Bucket=self._bucket, Key=key, Body=body, ContentType=JSONL)
        return len(body)

    def copy(self, source_key: str, key: str) -> None:
        self._client.copy_object(
            Bucket=self._bucket,
            Key=key,
            CopySource={"Bucket": self._bucket, "Key": source_key},
            ContentType=JSONL,
            MetadataDirective="REPLACE",
        )

    def head(self, key: str) -> ObjectInfo | None:
        try:
            answer = self._client.head_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        modified = answer["LastModified"]
        return ObjectInfo(int(answer["ContentLength"]), modified if modified.tzinfo else modified.replace(tzinfo=UTC))

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive)."""
        if end <= start:
            return b""
        answer = self._client.get_object(Bucket=self._bucket, Key=key, Range=f"bytes={start}-{end - 1}")
        return bytes(answer["Body"].read())

    def lines(self, key: str) -> Iterator[tuple[int, bytes]]:
        """Every line of the object with its byte offset, streamed (the object is never held whole)."""
        body = self._client.get_object(Bucket=self._bucket, Key=key)["Body"]
        offset, pending = 0, b""
        for block in body.iter_chunks(1024 * 1024):
            pending += block
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield offset, line
                offset += len(line) + 1
        if pending:
            yield offset, pending

    def plan(self, key: str, chunk_items: int = CHUNK_ITEMS) -> ItemsPlan:
        """Count the object's items and cut them into chunks of at most ``chunk_items`` items, whole lines each (a
        line of several images is never split; one larger than ``chunk_items`` is a chunk of its own). When some
        line makes several items, every chunk also says its first request and its item count (``FanoutChunk``)."""
        chunks: list[FanoutChunk] = []
        starts: list[tuple[int, int]] = []  # (first request, items) of each chunk
        items = requests = end = 0
        several = False
        for line_no, (offset, line) in enumerate(self.lines(key), start=1):
            end = offset + len(line) + 1
            if not line.strip():
                continue
            count = images_in_line(line)
            several = several or count > 1
            if not chunks or starts[-1][1] + count > chunk_items:
                if chunks:
                    chunks[-1] = chunks[-1].model_copy(update={"end": offset})
                chunks.append(FanoutChunk(index=items, line=line_no, offset=offset, end=offset))
                starts.append((requests, 0))
            starts[-1] = (starts[-1][0], starts[-1][1] + count)
            items += count
            requests += 1
        if chunks:
            chunks[-1] = chunks[-1].model_copy(update={"end": end})
        if several:
            chunks = [
                chunk.model_copy(update={"request_index": first, "items": count})
                for chunk, (first, count) in zip(chunks, starts, strict=True)
            ]
        return ItemsPlan(items, chunks, requests)

    def put_results(self, job_id: str, lines: Iterable[str]) -> str:
        key = results_key(job_id)
        self.put_lines(key, lines)
        return key

    def presign_get(self, key: str) -> str:
        return str(
            self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=self._url_ttl_s
            )
        )

    def presign_put(self, key: str, expires_in_s: int) -> str:
        return str(
            self._client.generate_presigned_url(
                "put_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=expires_in_s
            )
        )
