"""Download a job's images into a directory: verified, resumable, one manifest.

API calls: about one per 100 images, never one per image. The job is read once (its first page of 100 items);
a finished job's ``results.jsonl`` (one GET of its presigned URL, not an API call) then gives every item's outcome
and sha256, and the image URLs come from the job's item pages (``GET /v1/jobs/{id}?cursor=…``, 100 items with their
presigned URLs each), read in order and only as far as the last image still to fetch. When the images to fetch
are fewer than the pages to read to reach them (a big job with a few successes), each is asked for with
``GET /v1/images/{id}`` instead: whichever costs fewer calls. Without a results file (an older deployment, a job
not finished, a results file that cannot be read) every page is read, and its items carry the image URLs.

Each succeeded item's image is saved as ``<index:04d>-<slug of the prompt>.<ext>`` (extension from the content
type). The body goes to ``<name>.part`` while it streams, and is renamed to its final name only once complete and
matching the sha256 of the results file or job document, so a file under its final name is always whole and
verified. A re-run skips the files already there with the right sha256 (on the results path, those named by the
manifest of the earlier run need no API call at all) and fetches the rest. A URL the bucket refuses (403 when it
expired, 400 when the credentials that signed it did, 401) is renewed, at most twice, by reading the item's page
again (one call, which renews the URLs of the page's other items too), or its image document when that is how its
URL came.

Image and results URLs are fetched with their own session: the API key is never sent to the bucket.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import io
import itertools
import math
import os
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import flux_images
from flux_images.client import extension_for, parse_results, sha256_file

from flux_images_cli import api, manifest
from flux_images_cli.api import ApiClient, ApiError, RetryPolicy
from flux_images_cli.inputs import MAX_SEED
from flux_images_cli.progress import ProgressLine

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
    return f"{index:04d}-{slugify(prompt)}.{extension_for(content_type)}"


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


class _Count:
    """Images handled so far, shown on a ``ProgressLine``."""

    def __init__(self, line: ProgressLine, total: int) -> None:
        self.line, self.total, self.n = line, total, 0
        line.show(0, total, [])

    def update(self, n: int) -> None:
        self.n += n
        self.line.show(self.n, self.total, [], final=self.n >= self.total)


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

    def run(self, job_id: str, *, known_requests: Sequence[dict[str, Any]] | None = None) -> DownloadReport:
        """Download the job's images and write the manifests. ``known_requests`` (the job's item requests in index
        order, when the caller submitted it) fill in the prompts of failed items on the results-file path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        listing = self.client.iter_job_pages(job_id)
        try:
            first = next(listing)
            job = {key: value for key, value in first[1].items() if key not in {"items", "next_cursor"}}
            pages = _Pages(self.client, job_id, itertools.chain([first], listing))
            records = self._read_results(job_id, job)
            if records is not None:
                report = self._from_results(job_id, job, records, known_requests, pages)
            else:
                report = self._from_pages(job_id, job, pages)
        finally:
            listing.close()
        report.manifests = manifest.write(self.directory, report.rows)
        return report

    @contextlib.contextmanager
    def _bar(self, total: int) -> Iterator[_Count]:
        """The download's progress: a line that fits the terminal, plain periodic lines in a pipe."""
        with ProgressLine("download", enabled=self.progress) as line:
            yield _Count(line, total)

    def _from_pages(self, job_id: str, job: dict[str, Any], pages: _Pages) -> DownloadReport:
        """Every item from the job's pages (an older deployment, or a job not finished yet)."""
        report = DownloadReport(job=job, rows=[], directory=self.directory)
        with self._bar(int((job.get("counts") or {}).get("succeeded") or 0)) as bar:
            while (items := pages.next_page()) is not None:
                for item in items:
                    row = manifest.row_for(job_id, item)
                    report.rows.append(row)
                    index = item["index"]
                    info = pages.image(index)  # the page's item, with the URLs of a renewed page if it was
                    if item.get("status") == "succeeded" and info is not None:
                        self._save(
                            index, row.get("prompt") or "", info, functools.partial(pages.renew, index), row, report
                        )
                        bar.update(1)
        return report

    # ------------------------------------------------------------------------------------------- results file
    def _read_results(self, job_id: str, job: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The records of the job's ``results.jsonl``, or None when it has none or it cannot be read (then the
        caller pages through the items, as for an older deployment)."""
        results = job.get("results")
        refreshes = 0
        while isinstance(results, dict) and isinstance(results.get("url"), str):
            try:
                return _parse_results(self._get_results(str(results["url"])), results.get("items"), job.get("total"))
            except _UrlExpired:
                if refreshes >= MAX_URL_REFRESHES:
                    self.notify("the results file URL was refused even after renewing it; reading the job's items")
                    return None
                self.notify("the results file URL was refused (expired?); reading the job for a fresh one")
                results = self.client.get_job(job_id, limit=1).get("results")
                refreshes += 1
            except _ItemFailed as failure:
                self.notify(f"the results file could not be used ({failure.message}); reading the job's items")
                return None
        return None

    def _get_results(self, url: str) -> list[bytes]:
        body = io.BytesIO()  # a retry rewrites it from the start: never a broken read's lines followed by another's
        self._get_file(url, body, "results file")
        return body.getvalue().splitlines()

    def _from_results(
        self,
        job_id: str,
        job: dict[str, Any],
        records: list[dict[str, Any]],
        known_requests: Sequence[dict[str, Any]] | None,
        pages: _Pages,
    ) -> DownloadReport:
        """Every item's outcome from the results file; the image URLs from the job's pages (or image documents)."""
        report = DownloadReport(job=job, rows=[], directory=self.directory)
        previous = _previous_rows(self.directory, job_id)
        known = list(known_requests or [])
        succeeded = [record for record in records if record.get("status") == "succeeded" and record.get("image_id")]
        todo: list[tuple[dict[str, Any], dict[str, Any]]] = []
        with self._bar(len(succeeded)) as bar:
            for record in records:
                index = record["index"]
                request = _known_request(known, record)
                row = manifest.row_for_result(job_id, record, request)
                report.rows.append(row)
                if record.get("status") != "succeeded":
                    continue
                if not isinstance(record.get("image_id"), str):
                    row.update(status="download_failed", error_code="download_error", error_message="no image id")
                    report.failures.append(row)
                elif self._already_here(record, row, previous.get(index)):
                    report.present += 1
                    bar.update(1)
                else:
                    todo.append((record, row))
            pages.next_page()  # the first page, read with the job: its images cost no further call
            first_end = pages.end
            by_image = _fewer_calls_by_image([record["index"] for record, _ in todo], pages)
            for record, row in todo:
                if by_image and record["index"] > first_end:
                    self._result_by_image(record, row, report)
                else:
                    self._result_by_page(job_id, record, row, pages, report)
                bar.update(1)
        return report

    def _already_here(self, record: dict[str, Any], row: dict[str, Any], before: dict[str, Any] | None) -> bool:
        """Whether the file an earlier run's manifest names for this item is here with the right sha256 (then
        ``row`` describes it, and the item needs no API call at all)."""
        expected = str(record.get("sha256") or "").lower() or None
        name = before.get("file") if before else None
        if not (before and expected and isinstance(name, str) and name == Path(name).name):
            return False
        target = self.directory / name
        if not (target.is_file() and sha256_file(target) == expected):
            return False
        row.update({key: before.get(key) for key in ("prompt", "num_steps") if row.get(key) is None})
        row.update(file=name, sha256=expected, bytes=target.stat().st_size)
        return True

    def _result_by_page(
        self, job_id: str, record: dict[str, Any], row: dict[str, Any], pages: _Pages, report: DownloadReport
    ) -> None:
        """A succeeded item's image through its page of the job (read once for its 100 items)."""
        index = int(record["index"])
        info = pages.image(index)
        if info is None:  # the results file and the pages disagree (should not happen): ask for the image itself
            self._result_by_image(record, row, report)
            return
        listed = manifest.row_for(job_id, pages.items[index])
        for key in ("prompt", "num_steps", "seed"):
            if row.get(key) is None and listed.get(key) is not None:
                row[key] = listed[key]

        def fresh() -> dict[str, Any]:
            return _pinned(pages.renew(index), record)

        self._save(index, row.get("prompt") or "", _pinned(info, record), fresh, row, report)

    def _result_by_image(self, record: dict[str, Any], row: dict[str, Any], report: DownloadReport) -> None:
        """A succeeded item's image through ``GET /v1/images/{id}`` (when that is fewer calls than the pages)."""
        index, image_id = int(record["index"]), str(record["image_id"])
        try:
            document = self.client.get_image(image_id)
        except ApiError as exc:
            if exc.status != 404:
                raise
            row.update(status="download_failed", error_code="not_found", error_message=f"image {image_id}: 404")
            report.failures.append(row)
            return
        parameters = document.get("parameters") or {}
        for key in ("prompt", "num_steps", "seed"):
            if row.get(key) is None and parameters.get(key) is not None:
                row[key] = parameters[key]

        def fresh() -> dict[str, Any]:
            try:
                info = dict(self.client.get_image(image_id).get("image") or {})
            except ApiError as exc:
                if exc.status != 404:
                    raise
                raise _ItemFailed("url_refresh_failed", f"image {image_id} is no longer found (404)") from None
            return _pinned(info, record)

        self._save(
            index, row.get("prompt") or "", _pinned(dict(document.get("image") or {}), record), fresh, row, report
        )

    # ------------------------------------------------------------------------------------------- one item
    def _save(
        self,
        index: int,
        prompt: str,
        info: dict[str, Any],
        refresh: Callable[[], dict[str, Any]],
        row: dict[str, Any],
        report: DownloadReport,
    ) -> None:
        """Keep the file already there when its sha256 is right, else fetch it to ``.part``, verify, rename."""
        expected = (info.get("sha256") or "").lower() or None
        name = file_name(index, prompt, info.get("content_type"))
        target = self.directory / name
        if expected and target.is_file() and sha256_file(target) == expected:
            row.update(file=name, sha256=expected, bytes=target.stat().st_size)
            report.present += 1
            return
        part = target.with_name(name + ".part")
        try:
            digest, size = self._fetch_verified(index, info, refresh, part)
        except _ItemFailed as failure:
            part.unlink(missing_ok=True)
            row.update(status="download_failed", error_code=failure.code, error_message=failure.message)
            report.failures.append(row)
            return
        os.replace(part, target)
        row.update(file=name, sha256=digest, bytes=size)
        report.downloaded += 1

    def _fetch_verified(
        self, index: int, info: dict[str, Any], refresh: Callable[[], dict[str, Any]], part: Path
    ) -> tuple[str, int]:
        refreshes = 0
        while True:
            if not info.get("url") or (_expired(info) and refreshes < MAX_URL_REFRESHES):
                info = refresh()
                refreshes += 1
            try:
                digest, size = self._fetch(str(info.get("url") or ""), part)
                break
            except _UrlExpired:
                if refreshes >= MAX_URL_REFRESHES:
                    raise _ItemFailed("url_expired", "the image URL was refused even after renewing it") from None
                self.notify(f"item {index:04d}: the image URL was refused (expired?); asking for a fresh one")
                info = refresh()
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

    def _fetch(self, url: str, part: Path) -> tuple[str, int]:
        """The image at ``url`` into ``part``: its sha256 and size as written."""
        with open(part, "wb") as handle:
            self._get_file(url, handle, "image")
        return sha256_file(part), part.stat().st_size

    def _get_file(self, url: str, sink: BinaryIO, what: str) -> None:
        """A presigned URL's body into ``sink``, through the client's one checked, retried fetch
        (``flux_images.Client.fetch_file``: https, or http from a local stack's API; never a redirect followed;
        429/5xx and broken connections retried within this download's policy, each attempt from the body's start).
        ``_UrlExpired`` on 400, 401 and 403 (S3's answers to an expired URL, or to one signed with credentials that
        have since expired: renewed, at most ``MAX_URL_REFRESHES`` times, as the Python client renews them),
        ``_ItemFailed`` on any other failure."""
        try:
            status = self.client.flux.fetch_file(url, sink, what=what, retry=self.policy)
        except ValueError as exc:  # a URL the client refuses to fetch: not https, credentials in it
            raise _ItemFailed("download_error", f"the job document has no usable {what} URL: {exc}") from None
        except flux_images.NetworkError as exc:
            raise _ItemFailed("download_error", exc.message) from None
        if status in {400, 401, 403}:
            raise _UrlExpired
        if status == 404:
            raise _ItemFailed("not_found", "the URL answered 404 (the object is gone?)")
        if status != 200:
            raise _ItemFailed("download_error", f"the URL answered HTTP {status}")


class _Pages:
    """The job's item pages, read in index order as the download needs them: one API call per page (100 items).
    Only the current page is kept; ``renew`` reads it again (one call) for fresh URLs, which every item of the
    page then uses."""

    def __init__(self, client: ApiClient, job_id: str, pages: Iterator[tuple[str | None, dict[str, Any]]]) -> None:
        self.client, self.job_id, self._pages = client, job_id, pages
        self.cursor: str | None = None
        self.items: dict[int, dict[str, Any]] = {}
        self.end = -1  # the highest index read so far
        self.read = 0  # pages read

    def next_page(self) -> list[dict[str, Any]] | None:
        """The items of the next page (those with an index), or None after the last page."""
        try:
            cursor, page = next(self._pages)
        except StopIteration:
            return None
        self.read += 1
        return self._load(cursor, page)

    def _load(self, cursor: str | None, page: dict[str, Any]) -> list[dict[str, Any]]:
        items = [item for item in page.get("items") or [] if isinstance(item, dict) and type(item.get("index")) is int]
        self.cursor = cursor
        self.items = {item["index"]: item for item in items}
        self.end = max([self.end, *self.items])
        return items

    def image(self, index: int) -> dict[str, Any] | None:
        """The image info (``url``, ``sha256``, …) of succeeded item ``index``, reading the pages up to it; None
        when the item is not there or not succeeded."""
        while index > self.end and self.next_page() is not None:
            pass
        return _image_info(self.items.get(index))

    def renew(self, index: int) -> dict[str, Any]:
        """Item ``index``'s image info with a fresh URL: its page (the current one: a download goes in index
        order) read again, one call."""
        if index not in self.items:
            raise _ItemFailed("url_refresh_failed", f"item {index} is not on the page being downloaded")
        try:
            page = self.client.get_job(self.job_id, cursor=self.cursor, limit=api.PAGE_LIMIT)
        except ApiError as exc:
            raise _ItemFailed(
                "url_refresh_failed", f"reading the item's page again failed: HTTP {exc.status} {exc.code}"
            ) from None
        end = self.end
        self._load(self.cursor, page)
        self.end = max(self.end, end)
        found = _image_info(self.items.get(index))
        if found is None:
            raise _ItemFailed("url_refresh_failed", "the item is no longer succeeded in the job, or not found")
        return found


def _known_request(known: Sequence[dict[str, Any]], record: dict[str, Any]) -> dict[str, Any] | None:
    """The submitted request a results line comes from: its ``request_index`` in a job with requests of several
    images (its seed then the request's plus ``image_index``), else its own index."""
    position = record.get("request_index", record["index"])
    if not isinstance(position, int) or not 0 <= position < len(known):
        return None
    request = known[position]
    offset = record.get("image_index") or 0
    if offset and isinstance(request.get("seed"), int):
        request = {**request, "seed": (request["seed"] + offset) % (MAX_SEED + 1)}
    return request


def _image_info(item: dict[str, Any] | None) -> dict[str, Any] | None:
    """A job item's image info (url, sha256, bytes, content type…), when it succeeded with one."""
    image = item.get("image") if item else None
    if item and item.get("status") == "succeeded" and isinstance(image, dict) and isinstance(image.get("image"), dict):
        return dict(image["image"])
    return None


def _pinned(info: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """Image info whose sha256 and size are the results file's (what the worker stored), when it has them."""
    expected = str(record.get("sha256") or "").lower() or None
    return {**info, "sha256": expected or info.get("sha256"), "bytes": record.get("bytes") or info.get("bytes")}


def _fewer_calls_by_image(indexes: list[int], pages: _Pages) -> bool:
    """Whether asking for each image beyond the page already read (``GET /v1/images/{id}``, one call each) costs
    fewer calls than reading the pages up to the last of them: a big job with a few successes far apart."""
    beyond = [index for index in indexes if index > pages.end]
    if not beyond:
        return False
    per_page = max(1, len(pages.items))  # the size of the first page: the API's 100, or what it caps pages at
    return len(beyond) < math.ceil((max(beyond) - pages.end) / per_page)


def _parse_results(lines: list[bytes], items: Any, total: Any) -> list[dict[str, Any]]:
    """The records of ``results.jsonl``, checked (``flux_images.client.parse_results``); else ``_ItemFailed``."""
    try:
        return parse_results(lines, items, total)
    except ValueError as exc:
        raise _ItemFailed("bad_results", str(exc)) from None


def _previous_rows(directory: Path, job_id: str) -> dict[int, dict[str, Any]]:
    """The rows of the manifest an earlier run left in ``directory`` for this job, by index (empty if none)."""
    try:
        rows = manifest.read_jsonl(directory / manifest.JSONL_NAME)
    except (OSError, ValueError):
        return {}
    return {
        row["index"]: row
        for row in rows
        if isinstance(row, dict) and row.get("job_id") == job_id and isinstance(row.get("index"), int)
    }
