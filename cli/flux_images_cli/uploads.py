"""Large jobs from an uploaded file: ``POST /v1/uploads``, a ``PUT`` of the JSONL to its presigned URL, then one
``POST /v1/jobs {"items_upload_id": …}`` per file of at most 100,000 lines.

The file is never built in memory: ``JsonlBody`` encodes the validated items line by line as the connection asks
for bytes, with its length known beforehand (S3 refuses chunked uploads). The PUT goes through its own session,
without the API key. A 403 from S3 means the upload URL expired: a new upload is created (a bounded number of times).

The job's Idempotency-Key is derived from the content, so it is the same on every run; but the job's body names the
upload, which is new on every run, and the same key with another body is ``422 idempotency_key_reused``. So the
upload a job was created from is remembered locally (``UploadLedger``, per API URL and key): a re-run sends the
same body again and gets the same job back, without uploading the file again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

from flux_images_cli import api
from flux_images_cli.api import ApiClient, ApiError, CliError, NetworkError, RetryPolicy, describe_exception
from flux_images_cli.inputs import UploadPlan, jsonl_line

CONTENT_TYPE = "application/x-ndjson"
MAX_UPLOADS_PER_FILE = 3  # a new upload after each expired URL, this many times at most
LEDGER_MAX_AGE = dt.timedelta(days=30)
# The answers to a job from a remembered upload that mean "that upload is not usable any more": upload again.
STALE_UPLOAD_STATUSES = frozenset({400, 404, 409, 410, 422})


class UploadsUnsupported(Exception):
    """``POST /v1/uploads`` does not exist on this deployment (an older version): submit inline jobs instead."""


class _UrlExpired(Exception):
    pass


class JsonlBody:
    """A file-like request body: the items' JSONL, encoded as it is read; ``len()`` is the size in bytes."""

    def __init__(self, plan: UploadPlan, on_read: Callable[[int], object] | None = None) -> None:
        self._length = plan.file_bytes
        self._items = iter(plan.items)
        self._buffer = bytearray()
        self._on_read = on_read or (lambda count: None)

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            item = next(self._items, None)
            if item is None:
                break
            self._buffer += jsonl_line(item.request)
        count = len(self._buffer) if size < 0 else min(size, len(self._buffer))
        chunk = bytes(self._buffer[:count])
        del self._buffer[:count]
        self._on_read(len(chunk))
        return chunk


class UploadLedger:
    """Which upload each (API URL, Idempotency-Key and content) was submitted with: one small JSON file each under
    ``$XDG_CACHE_HOME/flux-images/uploads`` (``~/.cache`` by default). Best effort: a cache that cannot be read or
    written only costs a re-run its upload."""

    def __init__(self, api_url: str, directory: Path | None = None) -> None:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        self.directory = directory or Path(cache) / "flux-images" / "uploads"
        self.api_url = api_url

    def _path(self, key: str) -> Path:
        name = hashlib.sha256(f"{self.api_url}\n{key}".encode()).hexdigest()[:40]
        return self.directory / f"{name}.json"

    def get(self, key: str) -> str | None:
        try:
            document = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        upload_id = document.get("upload_id") if isinstance(document, dict) else None
        return upload_id if isinstance(upload_id, str) and upload_id.startswith("upl_") else None

    def save(self, key: str, upload_id: str) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self._path(key)
            part = path.with_name(path.name + ".part")
            part.write_text(json.dumps({"upload_id": upload_id, "saved_at": _now().isoformat()}), encoding="utf-8")
            os.replace(part, path)
            self._prune()
        except OSError:
            pass

    def forget(self, key: str) -> None:
        with contextlib.suppress(OSError):
            self._path(key).unlink(missing_ok=True)

    def _prune(self) -> None:
        oldest = (_now() - LEDGER_MAX_AGE).timestamp()
        for path in self.directory.glob("*.json"):
            if path.stat().st_mtime < oldest:
                path.unlink(missing_ok=True)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Uploader:
    """Submits ``UploadPlan``s: ``submit(plan)`` returns the ``POST /v1/jobs`` answer (the job document)."""

    client: ApiClient
    ledger: UploadLedger
    progress: bool = True
    notify: Callable[[str], None] = lambda message: None
    policy: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_attempts=4))

    def submit(self, plan: UploadPlan) -> dict[str, Any]:
        # The content too: under the same --idempotency-key, other content must not find the earlier upload.
        key = f"{plan.idempotency_key}\n{plan.content_key}"
        remembered = self.ledger.get(key)
        if remembered is not None:
            try:
                return self._create_job(plan, remembered)
            except ApiError as exc:
                if exc.status not in STALE_UPLOAD_STATUSES or exc.code == "idempotency_key_reused":
                    raise
                self.ledger.forget(key)
                self.notify(f"the upload of an earlier run was refused ({exc.code}); uploading the file again")
        upload_id = self._upload(plan)
        self.ledger.save(key, upload_id)
        return self._create_job(plan, upload_id)

    def _create_job(self, plan: UploadPlan, upload_id: str) -> dict[str, Any]:
        try:
            return self.client.create_job(plan.body(upload_id), plan.idempotency_key)
        except ApiError as exc:
            if exc.code == "idempotency_key_reused":
                exc.message += (
                    " (a job was already created under this key from another upload: this content uploaded by a run "
                    "this machine does not remember, or other content under the same --idempotency-key; find the "
                    "job id in that run's output, or pass a new --idempotency-key to create another job)"
                )
            raise

    def _upload(self, plan: UploadPlan) -> str:
        for _ in range(MAX_UPLOADS_PER_FILE):
            try:
                upload = self.client.create_upload()
            except ApiError as exc:
                if exc.no_such_route:
                    raise UploadsUnsupported from None
                raise
            upload_id, url = upload.get("id"), upload.get("upload_url")
            if (
                not isinstance(upload_id, str)
                or not isinstance(url, str)
                or not url.startswith(("https://", "http://"))
            ):
                raise ApiError(201, "bad_response", "the answer has no upload id or URL", context="POST /v1/uploads")
            _check_limits(plan, upload)
            try:
                self._put(url, plan)
                return upload_id
            except _UrlExpired:
                self.notify(f"the upload URL of {upload_id} was refused (expired?); getting a new upload")
        raise CliError(f"the upload URL was refused {MAX_UPLOADS_PER_FILE} times in a row (403); try again later")

    def _put(self, url: str, plan: UploadPlan) -> None:
        """PUT the file to the presigned URL (no API key); 429/5xx and connection errors retried, bounded."""
        policy = self.policy
        session = requests.Session()
        session.headers["User-Agent"] = api.user_agent()
        bar = tqdm(
            total=plan.file_bytes,
            desc="upload",
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            disable=not self.progress or not sys.stderr.isatty(),  # in a pipe: no \r lines, the notes say enough
            dynamic_ncols=True,
        )
        try:
            attempts = api.attempts(policy)
            for attempt in attempts:
                bar.reset(total=plan.file_bytes)
                body = JsonlBody(plan, on_read=bar.update)
                try:
                    response = session.put(
                        url,
                        data=body,
                        headers={"Content-Type": CONTENT_TYPE},
                        timeout=self.client.timeout,
                        allow_redirects=False,
                    )
                except requests.RequestException as exc:
                    reason = describe_exception(exc)  # never the URL: its query string is a credential
                    delay = attempts.backoff()
                    if not attempts.allows(delay):
                        raise NetworkError(f"PUT upload: {reason} ({attempts.why_not})") from None
                    self.notify(f"PUT upload: {reason}; retrying in {delay:.1f} s (attempt {attempt + 1})")
                    attempts.wait_before_next(delay)
                    continue
                status = response.status_code
                if 200 <= status < 300:
                    return
                if status in {401, 403} or (status == 400 and b"expired" in response.content.lower()):
                    raise _UrlExpired
                if status == 429 or status >= 500:
                    retry_after = api.parse_retry_after(response.headers.get("Retry-After"))
                    delay = retry_after if retry_after is not None else attempts.backoff()
                    if not attempts.allows(delay):
                        raise NetworkError(f"PUT upload: HTTP {status} ({attempts.why_not})")
                    self.notify(f"PUT upload: HTTP {status}; retrying in {delay:.1f} s (attempt {attempt + 1})")
                    attempts.wait_before_next(delay)
                    continue
                raise ApiError(status, "upload_failed", f"the upload URL answered HTTP {status}", context="PUT upload")
        finally:
            bar.close()
            session.close()
        raise AssertionError("unreachable")  # pragma: no cover


def _check_limits(plan: UploadPlan, upload: dict[str, Any]) -> None:
    max_lines, max_bytes = upload.get("max_lines"), upload.get("max_bytes")
    if isinstance(max_lines, int) and plan.images > max_lines:
        raise CliError(f"{plan.images:,} items, but the service takes at most {max_lines:,} items per upload")
    if isinstance(max_bytes, int) and plan.file_bytes > max_bytes:
        raise CliError(
            f"the items make {plan.file_bytes:,} bytes of JSONL, but the service takes at most {max_bytes:,} bytes "
            "per upload: split the input into smaller files"
        )
