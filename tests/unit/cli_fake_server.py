"""A fake of the bulk-job API (docs/jobs.md) for the CLI tests: stdlib ``http.server`` on 127.0.0.1, port 0.

- ``POST /v1/jobs`` (``Idempotency-Key``: the same key and body replay the original answer, another body is
  ``422 idempotency_key_reused``), ``GET /v1/jobs/{id}`` (``?cursor=&limit=``, at most ``max_page`` items a page),
  ``DELETE /v1/jobs/{id}``; an optional stage prefix (``/prod``) is accepted like a deployed URL.
- Items progress over successive reads of a job's first page: each such read is a "tick" that finishes
  ``items_per_tick`` more items (and starts the next ones).
- A prompt containing ``[fail]`` ends ``failed`` (``upstream_rejected``); ``[badsha]`` succeeds with a wrong
  sha256 in its document.
- Succeeded items point at presigned-style image URLs on this server, serving real PNG bytes (different per item).
- Faults: ``fail(route, status, ...)`` queues error answers for a route (``create``, ``get``, ``delete``,
  ``image``, ``upload_create``, ``upload_put``, ``image_doc``); ``expire_image_fetches = n`` answers the next n
  image fetches with S3's expired-URL 403; ``stale_signatures`` answers that 403 to every image URL signed
  ``sig<n>`` for the ``n`` in it (each read of a job page or image document signs its URLs with the job's next
  ``url_generation``), to expire the URLs of one particular read. ``cut_file_fetches = n`` answers the next n
  image or results fetches with a 200 whose body stops halfway: its full ``Content-Length`` is sent, half the
  body, then the connection is closed (a connection broken mid-body).
- Uploads (issue 9): ``POST /v1/uploads`` hands out an upload URL on this server (``PUT /upload/{id}``, no API key,
  a ``Content-Length`` required as S3 requires it); ``POST /v1/jobs {"items_upload_id"}`` makes a job of the file's
  non-blank lines, a line that is not a valid item becoming a failed item (``invalid_request``, its line number in
  the message). ``uploads_enabled = False`` answers ``POST /v1/uploads`` with the 404 of an older deployment;
  ``expire_upload_puts = n`` answers the next n PUTs with S3's expired-URL 403.
- A finished job's document has ``results`` (``null`` before): a presigned-style URL of its ``results.jsonl`` on
  this server; ``results_enabled = False`` leaves it out (an older deployment); ``expire_results_fetches = n``
  answers the next n results fetches with a 403. ``GET /v1/images/{id}`` answers an item's image document.
- ``POST /v1/images`` (``generate``): a one-item job finished at once, answered 201 with its image document
  (``Idempotency-Key`` replayed as for jobs); a blank or missing prompt is a 422 naming ``body.prompt``, a prompt
  containing ``[fail]`` a 400 ``upstream_rejected``.
- Every request is recorded in ``seen`` (method, path, query, headers, body); ``api_requests()`` are those to the
  API (what the usage plan counts), not to the bucket's presigned URLs.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import struct
import threading
import uuid
import zlib
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from devstack.serving import ServerThread, http_url

CUT_HEADER = "x-fake-cut-body"  # internal: never sent, tells the handler to cut the body short
ROUTES = ("create", "get", "delete", "image", "upload_create", "upload_put", "results", "image_doc", "generate")
UPLOAD_MAX_LINES = 100_000
UPLOAD_MAX_BYTES = 64 * 1024 * 1024
ITEM_FIELDS = frozenset({"prompt", "num_steps", "seed", "width", "height"})


def tiny_png(width: int = 2, height: int = 2, rgb: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    """A valid RGB PNG, built by hand (signature, IHDR, zlib-compressed IDAT, IEND, each with its CRC)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))  # filter byte 0 + pixels, per row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeJob:
    id: str
    requests: list[dict[str, Any]]
    per_tick: int
    metadata: dict[str, Any] | None
    webhook_url: str | None
    created_at: str
    ticks: int = 0
    cancel_from: int | None = None
    url_generation: int = 0
    invalid: dict[int, str] = field(default_factory=dict)  # index → why its upload line is not an item

    @property
    def total(self) -> int:
        return len(self.requests)


@dataclass
class _Fault:
    status: int
    headers: dict[str, str]
    error: dict[str, Any] | None


@dataclass
class FakeJobsApi:
    api_key: str = "test-api-key-0123456789"
    items_per_tick: int | None = None  # None: a third of the job per tick
    max_page: int = 100
    expire_image_fetches: int = 0
    cut_file_fetches: int = 0
    image_padding: int = 0  # bytes after each PNG: bodies longer than one read of the client (64 KB), to cut midway
    uploads_enabled: bool = True
    results_enabled: bool = True
    generate_async: bool = False  # POST /v1/images answers 202 with a one-item job (as respond-async does)
    expire_upload_puts: int = 0
    expire_results_fetches: int = 0
    stale_signatures: set[str] = field(default_factory=set)
    upload_max_bytes: int = UPLOAD_MAX_BYTES
    uploads: dict[str, bytes | None] = field(default_factory=dict)  # upload id → the file PUT (None: not yet)
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._faults: dict[str, deque[_Fault]] = {route: deque() for route in ROUTES}
        self._idempotency: dict[str, tuple[str, int, bytes]] = {}
        self._images: dict[str, tuple[str, int]] = {}  # image id → (job id, index)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        httpd.daemon_threads = True
        self._serving = ServerThread(httpd, "fake-jobs-api")

    # ------------------------------------------------------------------------------------------- control
    @property
    def url(self) -> str:
        return http_url("127.0.0.1", self._serving.port)

    def start(self) -> FakeJobsApi:
        self._serving.start()
        return self

    def stop(self) -> None:
        self._serving.stop()

    def __enter__(self) -> FakeJobsApi:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def fail(
        self,
        route: str,
        status: int,
        *,
        code: str | None = None,
        message: str = "injected",
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests of ``route`` with ``status`` (and the API's error shape)."""
        error = {"code": code or f"http_{status}", "message": message, "details": details or [], "request_id": "rq-1"}
        with self._lock:
            self._faults[route].extend(_Fault(status, dict(headers or {}), error) for _ in range(times))

    def requests_to(self, route: str) -> list[Seen]:
        with self._lock:
            return [seen for seen in self.seen if _route_of(seen.method, seen.path) == route]

    def api_requests(self) -> list[Seen]:
        """The requests to the API (``/v1/…``, with the API key), not those to the presigned URLs of the bucket."""
        with self._lock:
            return [seen for seen in self.seen if _strip_stage(seen.path).startswith("/v1/")]

    def image_bytes(self, job_id: str, index: int) -> bytes:
        return tiny_png(2, 2, (index % 256, (index // 256) % 256, len(job_id) % 256)) + b"\0" * self.image_padding

    # ------------------------------------------------------------------------------------------- the model
    def _outcome(self, job: FakeJob, index: int) -> str:
        return "failed" if index in job.invalid or "[fail]" in job.requests[index]["prompt"] else "succeeded"

    def image_id(self, job_id: str, index: int) -> str:
        return f"img_{hashlib.md5(f'{job_id}/{index}'.encode()).hexdigest()}"

    def _item_status(self, job: FakeJob, index: int) -> str:
        if job.cancel_from is not None and index >= job.cancel_from:
            return "canceled"  # never started; the items running when the job was canceled still finish
        done = min(job.total, job.ticks * job.per_tick)
        if index < done:
            return self._outcome(job, index)
        if job.ticks and index < done + job.per_tick:
            return "running"
        return "queued"

    def _job_status(self, statuses: list[str]) -> str:
        if all(status in {"succeeded", "failed", "canceled"} for status in statuses):
            if "canceled" in statuses:
                return "canceled"
            if all(status == "succeeded" for status in statuses):
                return "succeeded"
            return "failed" if "succeeded" not in statuses else "partially_failed"
        return "queued" if all(status == "queued" for status in statuses) else "running"

    def _item_document(self, job: FakeJob, index: int, status: str) -> dict[str, Any]:
        request = {"num_steps": 4, "width": 1024, "height": 1024, **job.requests[index]}
        document: dict[str, Any] = {"index": index, "status": status, "request": request, "error": None, "image": None}
        if status == "failed" and index in job.invalid:
            document["error"] = {"code": "invalid_request", "message": job.invalid[index]}
        elif status == "failed":
            document["error"] = {"code": "upstream_rejected", "message": "Flux Schnell refused the parameters"}
        if status == "succeeded":
            body = self.image_bytes(job.id, index)
            sha = hashlib.sha256(body + (b"x" if "[badsha]" in request["prompt"] else b"")).hexdigest()
            expires = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            document["image"] = {
                "id": self.image_id(job.id, index),
                "status": "succeeded",
                "parameters": {**request, "seed": request.get("seed") or 1000 + index},
                "image": {
                    "url": f"{self.url}/bucket/{job.id}/{index}.png?X-Amz-Expires=3600"
                    f"&X-Amz-Signature=sig{job.url_generation}",
                    "url_expires_at": expires,
                    "s3_uri": f"s3://bucket/{job.id}/{index}.png",
                    "content_type": "image/png",
                    "bytes": len(body),
                    "sha256": sha,
                    "width": request["width"],
                    "height": request["height"],
                },
                "created_at": job.created_at,
                "timings": {"upstream_ms": 1, "total_ms": 2},
            }
        return document

    def _job_document(self, job: FakeJob, offset: int | None = None, limit: int = 0) -> dict[str, Any]:
        statuses = [self._item_status(job, index) for index in range(job.total)]
        counts = {name: statuses.count(name) for name in ("queued", "running", "succeeded", "failed", "canceled")}
        status = self._job_status(statuses)
        document: dict[str, Any] = {
            "id": job.id,
            "status": status,
            "total": job.total,
            "counts": counts,
            "created_at": job.created_at,
            "completed_at": job.created_at
            if status in {"succeeded", "failed", "partially_failed", "canceled"}
            else None,
            "metadata": job.metadata,
            "webhook": {"url": job.webhook_url, "status": "pending", "attempts": 0} if job.webhook_url else None,
            "items": [],
            "next_cursor": None,
        }
        if self.results_enabled:
            document["results"] = None
            if document["completed_at"]:
                document["results"] = {
                    "url": f"{self.url}/results/{job.id}/results.jsonl?X-Amz-Signature=sig{job.url_generation}",
                    "s3_uri": f"s3://bucket/jobs/{job.id}/results.jsonl",
                    "items": job.total,
                }
        if offset is not None:
            end = min(job.total, offset + limit)
            document["items"] = [self._item_document(job, i, statuses[i]) for i in range(offset, end)]
            if end < job.total:
                document["next_cursor"] = base64.urlsafe_b64encode(f"o:{end}".encode()).decode()
        return document

    # ------------------------------------------------------------------------------------------- routes
    def handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes) -> Any:
        """(status, headers, body bytes) for one request."""
        route = _route_of(method, path)
        with self._lock:
            self.seen.append(Seen(method, path, query, headers, body))
            if route == "image":
                return self._image(path, query)
            if route == "upload_put":
                return self._put_upload(path, headers, body)
            if route == "results":
                return self._results(path)
            if route == "upload_create" and not self.uploads_enabled:
                return _error(404, "not_found", f"no route for {method} {path}")
            if route is None:
                return _error(404, "not_found", "no such route")
            if headers.get("x-api-key") != self.api_key:
                return _error(403, "invalid_api_key", "Forbidden")
            if self._faults[route]:
                fault = self._faults[route].popleft()
                return (
                    fault.status,
                    {"Content-Type": "application/json", **fault.headers},
                    _dumps({"error": fault.error}),
                )
            job_id = _strip_stage(path).removeprefix("/v1/jobs").strip("/")
            if route == "create":
                return self._create(headers.get("idempotency-key"), body)
            if route == "generate":
                return self._generate(headers.get("idempotency-key"), body)
            if route == "upload_create":
                return self._create_upload()
            if route == "image_doc":
                return self._image_document(_strip_stage(path).removeprefix("/v1/images/"))
            job = self.jobs.get(job_id)
            if job is None:
                return _error(404, "not_found", f"no job {job_id}")
            if route == "delete":
                done = min(job.total, job.ticks * job.per_tick)
                if job.cancel_from is None:
                    job.cancel_from = done + (job.per_tick if job.ticks else 0)
                return 200, {"Content-Type": "application/json"}, _dumps(self._job_document(job))
            return self._get(job, query)

    def _replay(self, key: str | None, body: bytes) -> Any:
        """The stored answer for an Idempotency-Key used before with the same body, its 422 with another body, or
        None for a new key (or none)."""
        if key is None or key not in self._idempotency:
            return None
        digest, status, answer = self._idempotency[key]
        if digest != hashlib.sha256(body).hexdigest():
            return _error(422, "idempotency_key_reused", "this Idempotency-Key was already used")
        return status, {"Content-Type": "application/json"}, answer

    def _create(self, key: str | None, body: bytes) -> Any:
        replayed = self._replay(key, body)
        if replayed is not None:
            return replayed
        try:
            request = json.loads(body)
        except ValueError:
            return _error(400, "malformed_json", "the body is not JSON")
        if not isinstance(request, dict):
            return _error(422, "validation_error", "the body must be an object")
        invalid: dict[int, str] = {}
        if "items_upload_id" in request:
            if "items" in request:
                return _error(422, "validation_error", "items and items_upload_id: give one of them")
            try:
                items, invalid = self._upload_items(request["items_upload_id"])
            except _Refused as refused:
                return refused.answer
        else:
            inline = request.get("items")
            if not isinstance(inline, list) or not 1 <= len(inline) <= 1000:
                return _error(422, "validation_error", "items: 1-1,000 items")
            items = inline
        job = FakeJob(
            id=f"job_{uuid.uuid4().hex}",
            requests=items,
            per_tick=self.items_per_tick or max(1, math.ceil(len(items) / 3)),
            metadata=request.get("metadata"),
            webhook_url=request.get("webhook_url"),
            created_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            invalid=invalid,
        )
        self.jobs[job.id] = job
        self._images.update((self.image_id(job.id, index), (job.id, index)) for index in range(job.total))
        answer = _dumps(self._job_document(job))
        if key is not None:
            self._idempotency[key] = (hashlib.sha256(body).hexdigest(), 202, answer)
        return 202, {"Content-Type": "application/json", "Location": f"/v1/jobs/{job.id}"}, answer

    def _generate(self, key: str | None, body: bytes) -> Any:
        """``POST /v1/images``: a one-item job finished at once, answered with its image document (201)."""
        replayed = self._replay(key, body)
        if replayed is not None:
            return replayed
        try:
            request = json.loads(body)
        except ValueError:
            return _error(400, "malformed_json", "the body is not JSON")
        prompt = request.get("prompt") if isinstance(request, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            detail = {"location": "body.prompt", "field": "prompt", "message": "Field required", "type": "missing"}
            error = {"code": "validation_error", "message": "the request is invalid: prompt: Field required"}
            answer = _dumps({"error": {**error, "details": [detail], "request_id": "rq-2"}})
            return 422, {"Content-Type": "application/json"}, answer
        if "[fail]" in prompt and not self.generate_async:
            return _error(400, "upstream_rejected", "Flux Schnell refused the parameters")
        if self.generate_async:  # as with Prefer: respond-async: a one-item job, followed at /v1/jobs/{id}
            job = FakeJob(
                id=f"job_{uuid.uuid4().hex}",
                requests=[request],
                per_tick=1,
                metadata=None,
                webhook_url=None,
                created_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            self.jobs[job.id] = job
            self._images[self.image_id(job.id, 0)] = (job.id, 0)
            return (
                202,
                {"Content-Type": "application/json", "Location": f"/v1/jobs/{job.id}"},
                _dumps(self._job_document(job)),
            )
        job = FakeJob(
            id=f"job_{uuid.uuid4().hex}",
            requests=[request],
            per_tick=1,
            metadata=None,
            webhook_url=None,
            created_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            ticks=1,
        )
        self.jobs[job.id] = job
        self._images[self.image_id(job.id, 0)] = (job.id, 0)
        document = self._item_document(job, 0, "succeeded")["image"]
        answer = _dumps(document)
        if key is not None:
            self._idempotency[key] = (hashlib.sha256(body).hexdigest(), 201, answer)
        return 201, {"Content-Type": "application/json", "Location": f"/v1/images/{document['id']}"}, answer

    def _create_upload(self) -> Any:
        upload_id = f"upl_{uuid.uuid4().hex}"
        self.uploads[upload_id] = None
        expires = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%SZ")
        document = {
            "id": upload_id,
            "upload_url": f"{self.url}/upload/{upload_id}?X-Amz-Expires=900&X-Amz-Signature=sig",
            "expires_at": expires,
            "max_bytes": self.upload_max_bytes,
            "max_lines": UPLOAD_MAX_LINES,
        }
        return 201, {"Content-Type": "application/json"}, _dumps(document)

    def _put_upload(self, path: str, headers: dict[str, str], body: bytes) -> Any:
        if self._faults["upload_put"]:
            fault = self._faults["upload_put"].popleft()
            return fault.status, fault.headers, b"<Error><Code>SlowDown</Code></Error>"
        if self.expire_upload_puts > 0:
            self.expire_upload_puts -= 1
            return 403, {"Content-Type": "application/xml"}, b"<Error><Code>AccessDenied</Code></Error>"
        if "content-length" not in headers:  # S3: a presigned PUT needs a Content-Length, chunked is refused
            return 501, {"Content-Type": "application/xml"}, b"<Error><Code>NotImplemented</Code></Error>"
        upload_id = path.rsplit("/", 1)[1]
        if upload_id not in self.uploads:
            return 403, {"Content-Type": "application/xml"}, b"<Error><Code>AccessDenied</Code></Error>"
        if len(body) > self.upload_max_bytes:
            return 400, {"Content-Type": "application/xml"}, b"<Error><Code>EntityTooLarge</Code></Error>"
        self.uploads[upload_id] = body
        return 200, {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}, b""

    def _upload_items(self, upload_id: Any) -> tuple[list[dict[str, Any]], dict[int, str]]:
        """``(requests, invalid lines)`` of an upload's file; ``_Refused`` with the error answer."""
        if not isinstance(upload_id, str) or upload_id not in self.uploads:
            raise _Refused(_error(404, "not_found", f"no upload {upload_id}"))
        data = self.uploads[upload_id]
        if data is None:
            raise _Refused(_error(422, "validation_error", f"nothing was uploaded to {upload_id}"))
        requests: list[dict[str, Any]] = []
        invalid: dict[int, str] = {}
        for number, line in enumerate(data.decode("utf-8").split("\n"), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                value = None
            valid = (
                isinstance(value, dict)
                and isinstance(value.get("prompt"), str)
                and bool(value["prompt"].strip())
                and set(value) <= ITEM_FIELDS
            )
            if not valid:
                invalid[len(requests)] = f"line {number}: not a valid image request"
            requests.append(value if valid else {"prompt": ""})
        if not requests:
            raise _Refused(_error(422, "validation_error", "the upload has no items"))
        if len(requests) > UPLOAD_MAX_LINES:
            raise _Refused(_error(422, "validation_error", f"at most {UPLOAD_MAX_LINES} lines"))
        return requests, invalid

    def results_lines(self, job: FakeJob) -> list[dict[str, Any]]:
        lines = []
        for index in range(job.total):
            status = self._item_status(job, index)
            item = self._item_document(job, index, status)
            image = item["image"] or {}
            info = image.get("image") or {}
            lines.append(
                {
                    "index": index,
                    "status": status,
                    "image_id": image.get("id"),
                    "s3_uri": info.get("s3_uri"),
                    "sha256": info.get("sha256"),
                    "bytes": info.get("bytes"),
                    "width": info.get("width"),
                    "height": info.get("height"),
                    "seed": (image.get("parameters") or {}).get("seed"),
                    "error": item["error"],
                }
            )
        return lines

    def _results(self, path: str) -> Any:
        if self.expire_results_fetches > 0:
            self.expire_results_fetches -= 1
            body = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
            return 403, {"Content-Type": "application/xml"}, body
        job = self.jobs.get(path.split("/")[2])
        if job is None:
            return 404, {"Content-Type": "application/xml"}, b"<Error><Code>NoSuchKey</Code></Error>"
        text = "".join(json.dumps(line) + "\n" for line in self.results_lines(job))
        return 200, self._maybe_cut({"Content-Type": "application/x-ndjson"}), text.encode("utf-8")

    def _image_document(self, image_id: str) -> Any:
        job_id, index = self._images.get(image_id, ("", -1))
        job = self.jobs.get(job_id)
        if job is None or self._item_status(job, index) != "succeeded":
            return _error(404, "not_found", f"no image {image_id}")
        job.url_generation += 1
        document = self._item_document(job, index, "succeeded")["image"]
        return 200, {"Content-Type": "application/json"}, _dumps(document)

    def _get(self, job: FakeJob, query: dict[str, str]) -> Any:
        try:
            limit = int(query.get("limit", "100"))
            offset = (
                int(base64.urlsafe_b64decode(query["cursor"]).decode().removeprefix("o:")) if "cursor" in query else 0
            )
        except (ValueError, KeyError):
            return _error(422, "validation_error", "cursor or limit is invalid")
        if not 1 <= limit <= 100:
            return _error(422, "validation_error", "limit: 1-100")
        if "cursor" not in query:
            job.ticks += 1  # a read of the first page moves the job on
        job.url_generation += 1
        document = self._job_document(job, offset, min(limit, self.max_page))
        return 200, {"Content-Type": "application/json"}, _dumps(document)

    def _image(self, path: str, query: dict[str, str]) -> Any:
        if self._faults["image"]:
            fault = self._faults["image"].popleft()
            return fault.status, fault.headers, b"<Error><Code>InternalError</Code></Error>"
        stale = query.get("X-Amz-Signature") in self.stale_signatures
        if stale or self.expire_image_fetches > 0:
            if not stale:
                self.expire_image_fetches -= 1
            body = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
            return 403, {"Content-Type": "application/xml"}, body
        _, _, job_id, name = path.split("/", 3)
        index = int(name.removesuffix(".png"))
        if job_id not in self.jobs:
            return 404, {"Content-Type": "application/xml"}, b"<Error><Code>NoSuchKey</Code></Error>"
        return 200, self._maybe_cut({"Content-Type": "image/png"}), self.image_bytes(job_id, index)

    def _maybe_cut(self, headers: dict[str, str]) -> dict[str, str]:
        """The headers of a file's 200, marked for the handler to cut its body short while ``cut_file_fetches``."""
        if self.cut_file_fetches > 0:
            self.cut_file_fetches -= 1
            return headers | {CUT_HEADER: "half"}
        return headers


def page_offset(seen: Seen) -> int | None:
    """The first item index a ``GET /v1/jobs/{id}`` asked for (its cursor decoded), None for another request."""
    if seen.method != "GET" or not _strip_stage(seen.path).startswith("/v1/jobs/"):
        return None
    cursor = seen.query.get("cursor")
    return int(base64.urlsafe_b64decode(cursor).decode().removeprefix("o:")) if cursor else 0


class _Refused(Exception):
    def __init__(self, answer: Any) -> None:
        super().__init__()
        self.answer = answer


def _strip_stage(path: str) -> str:
    return path.removeprefix("/prod")


def _route_of(method: str, path: str) -> str | None:
    path = _strip_stage(path)
    if path.startswith("/bucket/") and method == "GET":
        return "image"
    if path.startswith("/upload/") and method == "PUT":
        return "upload_put"
    if path.startswith("/results/") and method == "GET":
        return "results"
    if path == "/v1/uploads" and method == "POST":
        return "upload_create"
    if path.startswith("/v1/images/") and path.count("/") == 3 and method == "GET":
        return "image_doc"
    if path == "/v1/jobs" and method == "POST":
        return "create"
    if path == "/v1/images" and method == "POST":
        return "generate"
    if path.startswith("/v1/jobs/") and path.count("/") == 3:
        return {"GET": "get", "DELETE": "delete"}.get(method)
    return None


def _dumps(document: Any) -> bytes:
    return json.dumps(document).encode("utf-8")


def _error(status: int, code: str, message: str) -> Any:
    body = {"error": {"code": code, "message": message, "details": [], "request_id": "rq-1"}}
    return status, {"Content-Type": "application/json"}, _dumps(body)


def _handler(api: FakeJobsApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: Nagle would hold the body for an ACK

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, answer_headers, answer = api.handle(self.command, parts.path, query, headers, body)
            cut = answer_headers.pop(CUT_HEADER, None) is not None
            self.send_response(status)
            for name, value in answer_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            if cut:  # the promised length, half the bytes, then the connection closed
                self.wfile.write(answer[: len(answer) // 2])
                self.close_connection = True
                return
            self.wfile.write(answer)

        do_GET = do_POST = do_DELETE = do_PUT = _serve

    return Handler
