"""``Client``: the image service's API over HTTP, with typed results, automatic Idempotency-Keys and bounded retries.

Retries: 429 (except ``quota_exceeded``, which waiting cannot cure), 502, 503, 504 and ``409
idempotency_in_progress`` honour ``Retry-After``; connection errors and timeouts back off with full jitter; both
within ``RetryPolicy`` (attempts, the longest wait accepted, a deadline), and never a sleep after the last attempt.
A ``POST`` is retried only when it carries an Idempotency-Key (every ``POST`` the client makes to create something
does) or repeating it is harmless (``POST /v1/uploads``: a repeat at worst leaves an unused upload that expires).

The API key travels only in the ``x-api-key`` header of requests to ``base_url``: redirects are not followed (a
redirect to another host would carry the header along), presigned URLs are fetched by a session without the key,
and no message or exception text ever contains it.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

import requests

from flux_images import idempotency
from flux_images.errors import ApiError, DownloadError, NetworkError, WaitTimeout
from flux_images.models import Image, JobItem, JobState, Upload
from flux_images.retry import Attempts, RetryPolicy, describe_exception, parse_retry_after

DEFAULT_TIMEOUT = 30.0
PAGE_LIMIT = 100
RETRY_STATUSES = frozenset({429, 502, 503, 504})
NOT_RETRYABLE_CODES = frozenset({"quota_exceeded"})  # the usage plan's quota is used up for its period
URL_RENEW_MARGIN_S = 60.0
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/jpg": "jpg", "image/webp": "webp"}
RESULT_STATUSES = frozenset({"succeeded", "failed", "canceled"})

Progress = Callable[[JobState], None]


def check_base_url(url: str) -> str:
    """The API base URL without a trailing slash; ValueError when it is not a plain http(s) URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"base_url: {url!r} is not an http(s) URL (e.g. http://127.0.0.1:3000)")
    if parts.username or parts.password:
        raise ValueError("base_url: must not carry credentials; pass the key as api_key")
    if parts.query or parts.fragment:
        raise ValueError("base_url: must not have a query or fragment")
    return url.strip().rstrip("/")


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in {"localhost", "::1"} or host.startswith("127.")


def printable(text: str, limit: int = 500) -> str:
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def user_agent() -> str:
    try:
        from importlib.metadata import version

        return f"flux-images/{version('flux-image-service')}"
    except Exception:  # noqa: BLE001 - not installed as a distribution (running from a checkout)
        return "flux-images"


def api_error(response: requests.Response, context: str) -> ApiError:
    """The ``ApiError`` of a non-2xx answer: the API's error shape, or API Gateway's ``{"message"}``."""
    code, message, details, request_id = f"http_{response.status_code}", "", [], None
    try:
        document = response.json()
    except ValueError:
        document = None
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or code)
        message = str(error.get("message") or "")
        raw_details = error.get("details")
        details = [d for d in raw_details if isinstance(d, dict)] if isinstance(raw_details, list) else []
        request_id = error.get("request_id") if isinstance(error.get("request_id"), str) else None
    elif isinstance(document, dict) and isinstance(document.get("message"), str):
        message = document["message"]  # API Gateway's own default shape: {"message": "Forbidden"}
    return ApiError(
        response.status_code,
        code,
        printable(message or response.reason or "no message"),
        details=details,
        request_id=request_id or response.headers.get("x-amzn-RequestId"),
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
        error_type=(response.headers.get("x-amzn-ErrorType") or "").split(":")[0] or None,
        context=context,
    )


class Client:
    """The image service's API. ``Client(base_url, api_key)``; use it as a context manager or ``close()`` it.

    ``sleep`` and ``clock`` are what every wait and deadline go through (tests pass their own); ``on_retry`` gets a
    one-line message before each retry's wait.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.base_url = check_base_url(base_url)
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("api_key: empty")
        if not api_key.isascii() or not api_key.isprintable():
            raise ValueError("api_key: has characters that cannot be sent in a header (check for stray quotes)")
        if not timeout > 0:
            raise ValueError("timeout: must be more than 0 seconds")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.clock = clock
        self.on_retry = on_retry or (lambda message: None)
        self.session = requests.Session()
        self.session.headers.update({"x-api-key": api_key, "Accept": "application/json", "User-Agent": user_agent()})
        self._files = requests.Session()  # presigned URLs: their query string is the authorization, no API key
        self._files.headers["User-Agent"] = user_agent()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"  # never the key

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()
        self._files.close()

    # ------------------------------------------------------------------------------------------- images
    def generate(
        self,
        prompt: str,
        *,
        num_steps: int | None = None,
        seed: int | None = None,
        width: int | None = None,
        height: int | None = None,
        idempotency_key: str | None = None,
    ) -> Image:
        """``POST /v1/images``: one image, generated while you wait (the API's time budget is under 29 s)."""
        body = _image_request(prompt, num_steps=num_steps, seed=seed, width=width, height=height)
        document, response = self.request(
            "POST", "/v1/images", body=body, idempotency_key=idempotency_key or idempotency.new_key()
        )
        if response.status_code == 202:  # queued as a one-item job instead: follow it to its image
            job = Job(self, _id_of(document, "POST /v1/images"))
            state = job.wait()
            item = next(job.items(), None)
            if item is None or item.image is None:
                error = item.error if item else None
                raise ApiError(
                    200,
                    error.code if error else "generation_failed",
                    error.message if error else f"the job ended {state.status} without an image",
                    context=f"job {job.id}",
                )
            return item.image
        return Image.from_json(document)

    def image(self, image_id: str) -> Image:
        """``GET /v1/images/{id}``: the image document, with a fresh presigned URL."""
        return Image.from_json(self.request("GET", f"/v1/images/{quote(image_id, safe='')}")[0])

    # ------------------------------------------------------------------------------------------- jobs
    def submit(
        self,
        items: Sequence[str | Mapping[str, Any]] | None = None,
        *,
        items_upload_id: str | None = None,
        webhook_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """``POST /v1/jobs``: 1–1,000 ``items`` (a prompt, or a dict of ``POST /v1/images`` fields), or the
        ``items_upload_id`` of an uploaded file. The job runs in the background: ``Job.wait()`` follows it."""
        if (items is None) == (items_upload_id is None):
            raise ValueError("submit: give either items or items_upload_id")
        body: dict[str, Any] = {}
        if items is not None:
            if isinstance(items, str | bytes) or not items:
                raise ValueError("submit: items must be a non-empty list of prompts or requests")
            body["items"] = [{"prompt": item} if isinstance(item, str) else dict(item) for item in items]
        else:
            body["items_upload_id"] = items_upload_id
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        if metadata is not None:
            body["metadata"] = dict(metadata)
        document, _ = self.request(
            "POST", "/v1/jobs", body=body, idempotency_key=idempotency_key or idempotency.new_key()
        )
        state = JobState.from_json(document)
        return Job(self, _id_of(document, "POST /v1/jobs"), state)

    def job(self, job_id: str) -> Job:
        """A handle on an existing job (nothing is requested until it is used)."""
        return Job(self, job_id)

    def get_job(self, job_id: str, *, cursor: str | None = None, limit: int | None = None) -> JobState:
        """``GET /v1/jobs/{id}``: one page of the job (``limit`` items from ``cursor``)."""
        params: dict[str, Any] = {}
        if cursor:
            params["cursor"] = cursor
        if limit is not None:
            params["limit"] = limit
        return JobState.from_json(self.request("GET", f"/v1/jobs/{quote(job_id, safe='')}", params=params)[0])

    def job_pages(self, job_id: str, limit: int = PAGE_LIMIT) -> Generator[tuple[str | None, JobState], None, None]:
        """Every page of the job: ``(cursor used, page)``; the cursor lets a caller fetch that page again."""
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            page = self.get_job(job_id, cursor=cursor, limit=limit)
            yield cursor, page
            cursor = page.next_cursor
            if not cursor:
                return
            if cursor in seen:  # a server bug would otherwise loop forever
                raise ApiError(200, "bad_response", f"the API returned the cursor {cursor!r} twice", context="GET job")
            seen.add(cursor)

    def cancel_job(self, job_id: str) -> JobState:
        """``DELETE /v1/jobs/{id}``: items not started yet end ``canceled``; running ones finish."""
        return JobState.from_json(self.request("DELETE", f"/v1/jobs/{quote(job_id, safe='')}")[0])

    def create_upload(self) -> Upload:
        """``POST /v1/uploads``: a presigned URL to PUT a JSONL file of up to 100,000 items to."""
        document, _ = self.request("POST", "/v1/uploads", body={}, repeatable=True)
        return Upload.from_json(document)

    # ------------------------------------------------------------------------------------------- transport
    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        idempotency_key: str | None = None,
        repeatable: bool = False,
    ) -> tuple[dict[str, Any], requests.Response]:
        """One API call with the retries: ``(JSON object answered, response)``, or ``ApiError`` / ``NetworkError``.

        A ``POST`` is retried only with an ``idempotency_key`` or when the caller declares it ``repeatable``.
        """
        context = f"{method} {path}"
        headers: dict[str, str] = {}
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")  # UTF-8, not \u escapes: a third the size
            headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency.check_key(idempotency_key)
        safe = method != "POST" or idempotency_key is not None or repeatable
        attempts = Attempts(self.retry if safe else RetryPolicy(max_attempts=1), sleep=self.sleep, clock=self.clock)
        for attempt in attempts:
            try:
                response = self.session.request(
                    method,
                    self.base_url + path,
                    params=params,
                    data=data,
                    headers=headers,
                    timeout=self.timeout,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                reason = describe_exception(exc)
                delay = attempts.backoff()
                if not attempts.allows(delay):
                    why = attempts.why_not if safe else "not retried: a POST without an Idempotency-Key"
                    raise NetworkError(
                        f"{context}: cannot reach {self.base_url}: {reason} ({why})", reason=reason, attempts=attempt
                    ) from None
                self.on_retry(f"{context}: {reason}; retrying in {delay:.1f} s (attempt {attempt + 1})")
                attempts.wait_before_next(delay)
                continue

            if 200 <= response.status_code < 300:
                try:
                    document = response.json()
                except ValueError:
                    document = None
                if not isinstance(document, dict):
                    raise ApiError(
                        response.status_code, "bad_response", "the answer is not a JSON object", context=context
                    )
                return document, response
            if 300 <= response.status_code < 400:
                raise ApiError(
                    response.status_code,
                    "redirect",
                    f"the API answered with a redirect to {response.headers.get('Location', '?')!r}; check the base "
                    "URL (redirects are not followed so the API key cannot travel elsewhere)",
                    context=context,
                )
            error = api_error(response, context)
            retryable = (response.status_code in RETRY_STATUSES and error.code not in NOT_RETRYABLE_CODES) or (
                response.status_code == 409 and error.code == "idempotency_in_progress"
            )
            if not retryable:
                raise error
            delay = error.retry_after if error.retry_after is not None else attempts.backoff()
            if not attempts.allows(delay):
                error.note = attempts.why_not if safe else "not retried: a POST without an Idempotency-Key"
                raise error
            status = f"HTTP {response.status_code} {error.code}"
            self.on_retry(f"{context}: {status}; retrying in {delay:.1f} s (attempt {attempt + 1})")
            attempts.wait_before_next(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------------------------------- presigned URLs
    def check_file_url(self, url: str) -> str:
        """A presigned URL the client agrees to fetch: https, or http only when the API itself is plain http on
        this machine (the local stack); never with credentials in it. ValueError otherwise (without the query)."""
        parts = urlsplit(url)
        local_http = parts.scheme == "http" and self.base_url.startswith("http://") and is_loopback(self.base_url)
        if not parts.hostname or not (parts.scheme == "https" or local_http):
            raise ValueError(f"refusing to fetch {parts.scheme}://{parts.hostname or '?'}/…: not an https URL")
        if parts.username or parts.password:
            raise ValueError("refusing to fetch a URL that carries credentials")
        return url

    def fetch_file(self, url: str, sink: BinaryIO, *, what: str = "image", retry: RetryPolicy | None = None) -> int:
        """GET a presigned URL (checked: ``check_file_url``; no API key, no redirects) and stream its body into
        ``sink``; 429/5xx and connection errors retried within ``retry`` (the client's policy by default). Each
        attempt writes the body from its start: ``sink`` is rewound and truncated first, so a body cut short by a
        broken connection is replaced by the retry's, never followed by it. Returns the HTTP status: 200, or the
        refusal (403 when the URL expired, 404) for the caller to act on; ``NetworkError`` (``GET <what>: …``) when
        the retries run out, ``ValueError`` for a URL it refuses to fetch."""
        self.check_file_url(url)
        attempts = Attempts(retry or self.retry, sleep=self.sleep, clock=self.clock)
        for attempt in attempts:
            sink.seek(0)
            sink.truncate()
            try:
                with self._files.get(url, stream=True, timeout=self.timeout, allow_redirects=False) as response:
                    status = response.status_code
                    if status == 200:
                        for chunk in response.iter_content(64 * 1024):
                            sink.write(chunk)
                        return status
                    if status != 429 and status < 500:
                        return status
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    delay = retry_after if retry_after is not None else attempts.backoff()
                    if not attempts.wait_before_next(delay):
                        raise NetworkError(f"GET {what}: HTTP {status} ({attempts.why_not})", attempts=attempt)
            except requests.RequestException as exc:
                reason = describe_exception(exc)  # never the URL: its query string is a credential
                if not attempts.wait_before_next(attempts.backoff()):
                    raise NetworkError(f"GET {what}: {reason} ({attempts.why_not})", reason=reason) from None
        raise AssertionError("unreachable")  # pragma: no cover


def _image_request(prompt: str, **fields: int | None) -> dict[str, Any]:
    return {"prompt": prompt} | {name: value for name, value in fields.items() if value is not None}


def _id_of(document: dict[str, Any], context: str) -> str:
    value = document.get("id")
    if not isinstance(value, str) or not value:
        raise ApiError(202, "bad_response", "the answer has no id", context=context)
    return value


class Job:
    """A bulk job: ``wait()`` for it, read its ``results()``, ``download()`` its images, or ``cancel()`` it."""

    def __init__(self, client: Client, job_id: str, state: JobState | None = None) -> None:
        self.client = client
        self.id = job_id
        self.state = state  # the last state seen

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def refresh(self) -> JobState:
        """The job's status and counts now (one request)."""
        self.state = self.client.get_job(self.id, limit=1)
        return self.state

    def wait(
        self,
        *,
        progress: Progress | None = None,
        poll_interval: float = 2.0,
        max_poll_interval: float = 30.0,
        timeout: float | None = None,
    ) -> JobState:
        """Poll until the job is finished and return its final state; ``progress(state)`` after every poll.

        Polls come every ``poll_interval`` seconds while the counts move and back off (×1.5, up to
        ``max_poll_interval``) while they do not, so a long job does not eat the usage plan's quota. ``timeout``:
        ``WaitTimeout`` (with the last state) instead of a poll that would start after it. Nothing is canceled.
        """
        clock, started = self.client.clock, self.client.clock()
        state = self.refresh()
        delay, previous = poll_interval, None
        while True:
            if progress is not None:
                progress(state)
            if state.done:
                return state
            delay = (
                min(delay * 1.5, max(poll_interval, max_poll_interval)) if state.counts == previous else poll_interval
            )
            previous = state.counts
            if timeout is not None and clock() - started + delay > timeout:
                raise WaitTimeout(
                    f"job {self.id} is still {state.status} ({state.finished}/{state.total} finished) "
                    f"after {timeout:g} s",
                    state,
                )
            self.client.sleep(delay)
            state = self.refresh()

    def items(self, page_size: int = PAGE_LIMIT) -> Iterator[JobItem]:
        """Every item of the job, in index order, read page by page."""
        for _, page in self.client.job_pages(self.id, page_size):
            self.state = page
            yield from page.items

    def results(self) -> list[JobItem]:
        """Every item with its outcome: ``image`` for the succeeded ones, ``error`` for the others."""
        return list(self.items())

    def cancel(self) -> JobState:
        """Cancel the job: items not started yet end ``canceled``; a finished job is left as it is."""
        self.state = self.client.cancel_job(self.id)
        return self.state

    def download(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Save every succeeded image as ``<index:04d>.<ext>`` in ``directory``, each checked against its sha256.

        API calls: about one per 100 images, never one per image. The job's first page (100 items) is read; a
        finished job's results file (from the bucket, not an API call) then gives every image's sha256, so the
        files already there cost nothing, and the pages are read on only as far as the last image still to fetch
        (their items carry the presigned URLs). Without a results file every page is read. A file is written as
        ``.part`` and renamed only once verified. An expired URL is renewed once by reading its page again (one
        call, which renews the URLs of the page's other images too). Returns the files in index order;
        ``DownloadError`` (with the files that were saved) when some failed.
        """
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        saved: dict[int, Path] = {}
        failures: dict[int, str] = {}
        pages = self.client.job_pages(self.id)
        try:
            first = next(pages)
            self.state = first[1]
            wanted = self._missing(first[1], target, saved)  # None: no results file, every page is read
            last = max(wanted, default=-1) if wanted is not None else None
            for cursor, state in itertools.chain([first], pages):
                if last == -1:
                    break  # every image is already here: no page beyond the first
                self.state = state
                page = _Page(self.client, self.id, cursor, state)
                for item in state.items:
                    if item.status != "succeeded" or item.image is None:
                        continue
                    if wanted is not None and item.index not in wanted:
                        continue
                    try:
                        saved[item.index] = self._save(item.index, page, target)
                    except (ApiError, NetworkError, ValueError) as exc:
                        failures[item.index] = str(exc)
                if last is not None and any(item.index >= last for item in state.items):
                    break  # the pages after the last image still to fetch are not read
        finally:
            pages.close()
        files = [saved[index] for index in sorted(saved)]
        if failures:
            first_ones = ", ".join(f"{index}: {why}" for index, why in sorted(failures.items())[:3])
            raise DownloadError(
                f"{len(failures)} image(s) of job {self.id} not downloaded ({first_ones})",
                files=files,
                failures=failures,
            )
        return files

    def _missing(self, state: JobState, directory: Path, saved: dict[int, Path]) -> set[int] | None:
        """The succeeded items whose file is not in ``directory`` with the sha256 of the job's results file (those
        that are go into ``saved``, without any API call); None when there is no results file to read."""
        records = self._results_records(state)
        if records is None:
            return None
        missing: set[int] = set()
        for record in records:
            if record["status"] != "succeeded":
                continue
            index, expected = record["index"], str(record.get("sha256") or "").lower()
            found = [directory / f"{index:04d}.{extension}" for extension in sorted(set(EXTENSIONS.values()))]
            present = [path for path in found if expected and path.is_file() and sha256_file(path) == expected]
            if present:
                saved[index] = present[0]
            else:
                missing.add(index)
        return missing

    def _results_records(self, state: JobState) -> list[dict[str, Any]] | None:
        """The lines of the job's results file, checked; None when it has none, or it cannot be fetched or used
        (then the pages are read, as for a deployment without results files). An expired URL is renewed once
        (``GET /v1/jobs/{id}?limit=1``)."""
        results = state.results
        for renewed in (False, True):
            if results is None or not results.url:
                return None
            body = io.BytesIO()
            try:
                status = self.client.fetch_file(results.url, body, what="results file")
            except (ValueError, NetworkError):
                return None
            if status == 200:
                try:
                    return parse_results(body.getvalue().splitlines(), results.items, state.total)
                except ValueError:
                    return None
            if status not in {400, 401, 403} or renewed:
                return None
            results = self.client.get_job(self.id, limit=1).results
        return None  # pragma: no cover

    def _save(self, index: int, page: _Page, directory: Path) -> Path:
        image = page.image(index)
        extension = extension_for(image.file.content_type)
        path = directory / f"{index:04d}.{extension}"
        expected = image.sha256
        if expected and path.is_file() and sha256_file(path) == expected:
            return path
        if _expiring(image):
            image = page.renew(index)
        partial = path.with_name(path.name + ".part")
        for renewed in (False, True):
            with partial.open("wb") as out:
                status = self.client.fetch_file(image.url, out)
            if status == 200:
                break
            if status in {400, 401, 403} and not renewed:  # S3's answer to an expired presigned URL
                image = page.renew(index)
                continue
            partial.unlink(missing_ok=True)
            raise ValueError(f"the image URL answered HTTP {status}")
        # of the file as written: the attempt that completed
        if expected and (got := sha256_file(partial)) != expected:
            partial.unlink(missing_ok=True)
            raise ValueError(f"sha256 mismatch: got {got[:12]}…, the API says {expected[:12]}…")
        partial.replace(path)
        return path


class _Page:
    """One page of a job's items while its images download. ``renew`` reads the page again (one call) for fresh
    presigned URLs, which the page's later images then use too: a page whose URLs all expired costs one call."""

    def __init__(self, client: Client, job_id: str, cursor: str | None, state: JobState) -> None:
        self.client, self.job_id, self.cursor = client, job_id, cursor
        self.images = _images_of(state)

    def image(self, index: int) -> Image:
        return self.images[index]

    def renew(self, index: int) -> Image:
        self.images = _images_of(self.client.get_job(self.job_id, cursor=self.cursor, limit=PAGE_LIMIT))
        image = self.images.get(index)
        if image is None:
            raise ValueError("the item is no longer succeeded in the job, or not found, when renewing its URL")
        return image


def parse_results(lines: Iterable[bytes], *counts: Any) -> list[dict[str, Any]]:
    """The records of a job's ``results.jsonl``, checked: one per item, indexes 0…n-1 in order, as many as each
    int in ``counts`` (the results document's ``items``, the job's ``total``). ValueError saying what is wrong."""
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ValueError(f"line {number} is not JSON") from None
        if (
            not isinstance(record, dict)
            or record.get("index") != len(records)
            or record.get("status") not in RESULT_STATUSES
        ):
            raise ValueError(f"line {number} is not the record of item {len(records)}")
        records.append(record)
    for expected in counts:
        if isinstance(expected, int) and expected != len(records):
            raise ValueError(f"{len(records):,} records for {expected:,} items")
    return records


def _images_of(state: JobState) -> dict[int, Image]:
    return {item.index: item.image for item in state.items if item.status == "succeeded" and item.image is not None}


def _expiring(image: Image) -> bool:
    expires = image.file.url_expires_at
    return expires is not None and expires.timestamp() - URL_RENEW_MARGIN_S <= time.time()


def extension_for(content_type: str | None) -> str:
    """The file extension of an image's content type (parameters and case ignored); ``png`` when unknown."""
    return EXTENSIONS.get((content_type or "image/png").split(";")[0].strip().lower(), "png")


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read 1 MB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
