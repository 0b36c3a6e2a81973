"""The HTTP client of the bulk-job API (docs/jobs.md): the ``x-api-key`` header, the error shape, bounded retries.

429 and 503 (and the gateway's 502/504) are retried honouring ``Retry-After``; connection errors and timeouts are
retried with exponential backoff and full jitter. Every retry is bounded, both in attempts and in the longest wait
the client agrees to. Every request the client makes is safe to repeat: reads, ``DELETE``, and ``POST /v1/jobs``
always carries an ``Idempotency-Key``; a repeated ``POST /v1/uploads`` at worst leaves an unused upload behind, which
expires.

The API key travels only in the ``x-api-key`` header of requests to the API URL: redirects are not followed (a
redirect to another host would carry the header along), and no message or exception text ever contains it.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import requests

DEFAULT_TIMEOUT = 30.0
PAGE_LIMIT = 100
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# 429s that waiting a few seconds cannot cure: the usage plan's quota is used up for its period.
NOT_RETRYABLE_CODES = frozenset({"quota_exceeded"})


def _sleep(seconds: float) -> None:
    """Every wait of the client goes through here (tests replace it to record the waits)."""
    time.sleep(seconds)


class CliError(Exception):
    """An error that ends the command with ``exit_code`` and a message for the user."""

    exit_code = 3

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def render(self) -> str:
        return self.message


class UsageError(CliError):
    """Bad command line, configuration or input file: exit code 2."""

    exit_code = 2


class NetworkError(CliError):
    """The API could not be reached (after the bounded retries): exit code 3."""


class ApiError(CliError):
    """A non-2xx answer of the API, in its ``{"error": {"code", "message", "details", "request_id"}}`` shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        context: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details or []
        self.request_id = request_id
        self.retry_after = retry_after
        self.context = context
        self.error_type: str | None = None  # API Gateway's own x-amzn-ErrorType, when it answered itself
        # Filled in by callers that can point at the input behind a detail (``body.items.3`` → ``prompts.csv:5``).
        self.detail_labels: Callable[[dict[str, Any]], str | None] | None = None

    @classmethod
    def from_response(cls, response: requests.Response, context: str) -> ApiError:
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
        if not message:
            message = response.reason or "no message"
        error = cls(
            response.status_code,
            code,
            _printable(message),
            details=details,
            request_id=request_id or response.headers.get("x-amzn-RequestId"),
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            context=context,
        )
        error.error_type = (response.headers.get("x-amzn-ErrorType") or "").split(":")[0] or None
        return error

    @property
    def no_such_route(self) -> bool:
        """The deployment has no such route: the API's 404, or API Gateway's 403 for a resource it does not know
        (``x-amzn-ErrorType: MissingAuthenticationTokenException``), told apart by type, not by message."""
        return self.status == 404 or self.error_type == "MissingAuthenticationTokenException"

    def render(self) -> str:
        head = f"{self.context}: " if self.context else ""
        lines = [f"{head}HTTP {self.status} {self.code}: {self.message}"]
        for detail in self.details[:20]:
            where = detail.get("location") or detail.get("field") or "?"
            label = self.detail_labels(detail) if self.detail_labels else None
            suffix = f" ({label})" if label else ""
            lines.append(f"  - {where}{suffix}: {_printable(str(detail.get('message', '')))}")
        if len(self.details) > 20:
            lines.append(f"  … and {len(self.details) - 20} more")
        if self.status == 403 and self.code in {"invalid_api_key", "http_403"}:
            lines.append("  check --api-key / FLUX_IMAGES_API_KEY and that --api-url points at the right stage")
        if self.request_id:
            lines.append(f"  request id: {self.request_id}")
        return "\n".join(lines)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of the retries: attempts per request, and the longest single wait the client accepts."""

    max_attempts: int = 6
    max_wait_s: float = 60.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 10.0

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base·2^(attempt-1))]."""
        return random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 1)))  # noqa: S311


_SECONDS = re.compile(r"\d{1,10}(?:\.\d{1,6})?", re.ASCII)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from ``Retry-After`` (delta-seconds, fractions tolerated, or an HTTP-date); None when unreadable."""
    if not value:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def describe_exception(exc: BaseException) -> str:
    """A short reason for a requests exception, without the URL (a presigned URL's query is a credential)."""
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection broken while reading the answer"
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if match:
        return match.group(1).strip().lower()
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "connection closed by the server"
    if "NameResolutionError" in text or "getaddrinfo" in text:
        return "host name not resolved"
    return f"connection failed ({type(exc).__name__})"


def _printable(text: str, limit: int = 500) -> str:
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def user_agent() -> str:
    try:
        from importlib.metadata import version

        return f"flux-images/{version('flux-image-service')}"
    except Exception:  # noqa: BLE001 - not installed as a distribution (running from a checkout)
        return "flux-images"


def check_api_url(url: str) -> str:
    """The API base URL without a trailing slash; a usage error when it is not an http(s) URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise UsageError(f"--api-url: {url!r} is not an http(s) URL (e.g. http://127.0.0.1:3000)")
    if parts.username or parts.password:
        raise UsageError("--api-url: must not carry credentials; pass the key with --api-key / FLUX_IMAGES_API_KEY")
    if parts.query or parts.fragment:
        raise UsageError("--api-url: must not have a query or fragment")
    return url.strip().rstrip("/")


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in {"localhost", "::1"} or host.startswith("127.")


class ApiClient:
    """The jobs API. Methods return the parsed JSON document or raise ``ApiError`` / ``NetworkError``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        policy: RetryPolicy | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.base_url = check_api_url(base_url)
        self.timeout = timeout
        self.policy = policy or RetryPolicy()
        self.on_retry = on_retry or (lambda message: None)
        self.session = requests.Session()
        self.session.headers.update(
            {"x-api-key": api_key, "Accept": "application/json", "User-Agent": user_agent()},
        )

    def close(self) -> None:
        self.session.close()

    # ------------------------------------------------------------------------------------------- operations
    def create_job(self, body: dict[str, Any], idempotency_key: str) -> tuple[dict[str, Any], requests.Response]:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")  # UTF-8, not \u escapes: a third of the size
        headers = {"Idempotency-Key": idempotency_key, "Content-Type": "application/json"}
        return self._request("POST", "/v1/jobs", data=data, headers=headers)

    def create_upload(self) -> dict[str, Any]:
        """``POST /v1/uploads``: ``{"id", "upload_url", "expires_at", "max_bytes", "max_lines"}``."""
        headers = {"Content-Type": "application/json"}
        return self._request("POST", "/v1/uploads", data=b"{}", headers=headers)[0]

    def get_image(self, image_id: str) -> dict[str, Any]:
        """``GET /v1/images/{id}``: the image document, with a fresh presigned URL."""
        return self._request("GET", f"/v1/images/{quote(image_id, safe='')}")[0]

    def get_job(self, job_id: str, *, cursor: str | None = None, limit: int | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if cursor:
            params["cursor"] = cursor
        if limit is not None:
            params["limit"] = limit
        return self._request("GET", f"/v1/jobs/{quote(job_id, safe='')}", params=params)[0]

    def iter_job_pages(
        self, job_id: str, limit: int = PAGE_LIMIT
    ) -> Generator[tuple[str | None, dict[str, Any]], None, None]:
        """Every page of the job: ``(cursor used, page)``; the cursor lets a caller fetch that page again."""
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            page = self.get_job(job_id, cursor=cursor, limit=limit)
            yield cursor, page
            cursor = page.get("next_cursor") or None
            if not cursor:
                return
            if cursor in seen:  # a server bug would otherwise loop forever
                raise ApiError(200, "bad_response", f"the API returned the cursor {cursor!r} twice", context="GET job")
            seen.add(cursor)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/jobs/{quote(job_id, safe='')}")[0]

    # ------------------------------------------------------------------------------------------- transport
    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[dict[str, Any], requests.Response]:
        context = f"{method} {path}"
        url = self.base_url + path
        policy = self.policy
        for attempt in range(1, policy.max_attempts + 1):
            last = attempt == policy.max_attempts
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    headers=headers,
                    timeout=self.timeout,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                reason = describe_exception(exc)
                if last:
                    raise NetworkError(
                        f"{context}: cannot reach {self.base_url}: {reason} (gave up after {attempt} attempts)"
                    ) from None
                delay = policy.backoff(attempt)
                self.on_retry(f"{context}: {reason}; retrying in {delay:.1f} s (attempt {attempt + 1})")
                _sleep(delay)
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
                    f"the API answered with a redirect to {response.headers.get('Location', '?')!r}; "
                    "check --api-url (redirects are not followed so the API key cannot travel elsewhere)",
                    context=context,
                )

            error = ApiError.from_response(response, context)
            retryable = (response.status_code in RETRY_STATUSES and error.code not in NOT_RETRYABLE_CODES) or (
                response.status_code == 409 and error.code == "idempotency_in_progress"
            )
            if not retryable or last:
                if retryable:
                    error.message += f" (gave up after {attempt} attempts)"
                raise error
            delay = error.retry_after if error.retry_after is not None else policy.backoff(attempt)
            if delay > policy.max_wait_s:
                error.message += f" (the API asks to retry in {delay:.0f} s; try again later)"
                raise error
            self.on_retry(
                f"{context}: HTTP {response.status_code} {error.code}; "
                f"retrying in {delay:.1f} s (attempt {attempt + 1})"
            )
            _sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


def dumps_compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
