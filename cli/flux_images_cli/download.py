"""Download a job's images into a directory: verified, resumable, one manifest.

Each succeeded item's image (the presigned ``image.image.url`` of its image document) is saved as
``<index:04d>-<slug of the prompt>.<ext>`` (extension from the content type). The body goes to ``<name>.part``
while it streams, and is renamed to its final name only once complete and matching the document's sha256, so a
file under its final name is always whole and verified. A re-run skips the files already there with the right
sha256 and fetches the rest. An expired URL (403, or S3's 400 ``ExpiredToken``) is renewed by reading the job
page again, which answers with fresh URLs.

Image URLs are fetched with their own session: the API key is never sent to the bucket.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import sys
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import requests
from tqdm import tqdm

from flux_images_cli import api, manifest
from flux_images_cli.api import ApiClient, ApiError, RetryPolicy, describe_exception

CHUNK_BYTES = 1 << 20
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/jpg": "jpg", "image/webp": "webp"}
SLUG_CHARS = 48
MAX_URL_REFRESHES = 2
EXPIRY_MARGIN_S = 30


def slugify(text: str, limit: int = SLUG_CHARS) -> str:
    """Lowercase ASCII words joined by ``-``, at most ``limit`` characters, cut at a word; ``image`` when empty."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if len(slug) > limit:
        cut = slug[: limit + 1]
        slug = cut[: cut.rfind("-")] if "-" in cut[1:] else slug[:limit]
        slug = slug.strip("-")
    return slug or "image"


def file_name(index: int, prompt: str, content_type: str | None) -> str:
    extension = EXTENSIONS.get((content_type or "image/png").split(";")[0].strip().lower(), "png")
    return f"{index:04d}-{slugify(prompt)}.{extension}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def copy_body(response: requests.Response, handle: BinaryIO) -> tuple[str, int]:
    """Stream the body into ``handle``: ``(sha256 hex, bytes)``."""
    digest = hashlib.sha256()
    size = 0
    for chunk in response.iter_content(CHUNK_BYTES):
        handle.write(chunk)
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


class _UrlExpired(Exception):
    pass


class _ItemFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class DownloadReport:
    job: dict[str, Any]
    rows: list[dict[str, Any]]
    directory: Path
    downloaded: int = 0
    present: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    manifests: tuple[Path, Path] | None = None


def _expired(info: dict[str, Any]) -> bool:
    value = info.get("url_expires_at")
    if not isinstance(value, str):
        return False
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp() - EXPIRY_MARGIN_S <= dt.datetime.now(dt.UTC).timestamp()


class Downloader:
    def __init__(
        self,
        client: ApiClient,
        directory: Path,
        *,
        progress: bool = True,
        notify: Callable[[str], None] | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.client = client
        self.directory = directory
        self.progress = progress
        self.notify = notify or (lambda message: None)
        self.policy = policy or RetryPolicy(max_attempts=4)
        self.images = requests.Session()  # no x-api-key: a presigned URL carries its own authorization
        self.images.headers["User-Agent"] = api.user_agent()

    def run(self, job_id: str) -> DownloadReport:
        self.directory.mkdir(parents=True, exist_ok=True)
        report: DownloadReport | None = None
        bar: tqdm[Any] | None = None
        try:
            for cursor, page in self.client.iter_job_pages(job_id):
                if report is None:
                    job = {key: value for key, value in page.items() if key not in {"items", "next_cursor"}}
                    report = DownloadReport(job=job, rows=[], directory=self.directory)
                    succeeded = int((job.get("counts") or {}).get("succeeded") or 0)
                    bar = tqdm(
                        total=succeeded,
                        desc="download",
                        unit="img",
                        file=sys.stderr,
                        disable=not self.progress,
                        dynamic_ncols=True,
                    )
                for item in page.get("items") or []:
                    row = manifest.row_for(job_id, item)
                    report.rows.append(row)
                    if item.get("status") == "succeeded" and isinstance(item.get("image"), dict):
                        self._item(job_id, cursor, item, row, report)
                        if bar is not None:
                            bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            self.images.close()
        assert report is not None
        report.manifests = manifest.write(self.directory, report.rows)
        return report

    # ------------------------------------------------------------------------------------------- one item
    def _item(
        self, job_id: str, cursor: str | None, item: dict[str, Any], row: dict[str, Any], report: DownloadReport
    ) -> None:
        index = int(item["index"])
        info = dict(item["image"].get("image") or {})
        expected = (info.get("sha256") or "").lower() or None
        name = file_name(index, row.get("prompt") or "", info.get("content_type"))
        target = self.directory / name
        if expected and target.is_file() and sha256_file(target) == expected:
            row.update(file=name, sha256=expected, bytes=target.stat().st_size)
            report.present += 1
            return
        part = target.with_name(name + ".part")
        try:
            digest, size = self._fetch_verified(job_id, cursor, index, info, part)
        except _ItemFailed as failure:
            part.unlink(missing_ok=True)
            row.update(status="download_failed", error_code=failure.code, error_message=failure.message)
            report.failures.append(row)
            return
        os.replace(part, target)
        row.update(file=name, sha256=digest, bytes=size)
        report.downloaded += 1

    def _fetch_verified(
        self, job_id: str, cursor: str | None, index: int, info: dict[str, Any], part: Path
    ) -> tuple[str, int]:
        refreshes = 0
        while True:
            if not info.get("url") or (_expired(info) and refreshes < MAX_URL_REFRESHES):
                info = self._refresh(job_id, cursor, index)
                refreshes += 1
            try:
                digest, size = self._fetch(str(info.get("url") or ""), part)
                break
            except _UrlExpired:
                if refreshes >= MAX_URL_REFRESHES:
                    raise _ItemFailed(
                        "url_expired", "the image URL was refused even after renewing it by reading the job again"
                    ) from None
                self.notify(f"item {index:04d}: the image URL was refused (expired?); reading the job for a fresh one")
                info = self._refresh(job_id, cursor, index)
                refreshes += 1
        expected = (info.get("sha256") or "").lower() or None
        if expected and digest != expected:
            raise _ItemFailed(
                "sha256_mismatch",
                f"the downloaded {size:,} bytes have sha256 {digest[:16]}…, the job document says {expected[:16]}…; "
                "the file was not kept",
            )
        if not expected and isinstance(info.get("bytes"), int) and info["bytes"] != size:
            raise _ItemFailed("size_mismatch", f"downloaded {size:,} bytes, the job document says {info['bytes']:,}")
        return digest, size

    def _refresh(self, job_id: str, cursor: str | None, index: int) -> dict[str, Any]:
        """The item's image info with a fresh URL: its page read again, or (if the cursor is refused) every page."""
        try:
            page = self.client.get_job(job_id, cursor=cursor, limit=api.PAGE_LIMIT)
            found = _find(page, index)
        except ApiError:
            found = None
        if found is None:
            for _, page in self.client.iter_job_pages(job_id):
                found = _find(page, index)
                if found is not None:
                    break
        if found is None:
            raise _ItemFailed("url_refresh_failed", "the item is no longer succeeded in the job, or not found")
        return found

    def _fetch(self, url: str, part: Path) -> tuple[str, int]:
        if not url.startswith(("https://", "http://")):
            raise _ItemFailed("download_error", "the job document has no usable image URL")
        policy = self.policy
        for attempt in range(1, policy.max_attempts + 1):
            last = attempt == policy.max_attempts
            try:
                with self.images.get(url, stream=True, timeout=self.client.timeout) as response:
                    status = response.status_code
                    if status in {401, 403}:
                        raise _UrlExpired
                    if status == 400 and b"expired" in response.content.lower():
                        raise _UrlExpired
                    if status == 404:
                        raise _ItemFailed("not_found", "the image URL answered 404 (the object is gone?)")
                    if status == 429 or status >= 500:
                        if last:
                            raise _ItemFailed("download_error", f"HTTP {status} (gave up after {attempt} attempts)")
                        retry_after = api.parse_retry_after(response.headers.get("Retry-After"))
                        delay = min(
                            retry_after if retry_after is not None else policy.backoff(attempt), policy.max_wait_s
                        )
                        api._sleep(delay)
                        continue
                    if status != 200:
                        raise _ItemFailed("download_error", f"the image URL answered HTTP {status}")
                    with open(part, "wb") as handle:
                        return copy_body(response, handle)
            except requests.RequestException as exc:
                reason = describe_exception(exc)  # never the URL: its query string is a credential
                if last:
                    raise _ItemFailed("download_error", f"{reason} (gave up after {attempt} attempts)") from None
                api._sleep(policy.backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover


def _find(page: dict[str, Any], index: int) -> dict[str, Any] | None:
    for item in page.get("items") or []:
        if item.get("index") == index:
            image = item.get("image")
            if item.get("status") == "succeeded" and isinstance(image, dict) and isinstance(image.get("image"), dict):
                return dict(image["image"])
            return None
    return None
