"""Client of the Flux Schnell text-to-image API (docs/upstream.md states the contract).

One ``requests.Session`` per container (connection reuse across warm invocations), explicit connect/read
timeouts, bounded retries with exponential backoff and full jitter that honour ``Retry-After`` and never run past
the caller's deadline. Inside a worker invocation each attempt holds one of the invocation's upstream slots
(``imagegen.slots``), and only for as long as the upstream takes to answer. Understands both the documented
``{"error": ...}`` bodies and Azure API Management's ``{"statusCode", "message"}`` bodies. The subscription key
travels only in the request header: it is never part of a log line or an exception message.
"""

from __future__ import annotations

import email.utils
import json
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from aws_lambda_powertools import Logger

from imagegen.adapters.http import (
    BodyTooLargeError,
    DeadlineExceededError,
    IncompleteBodyError,
    read_body,
)
from imagegen.budget import Deadline
from imagegen.errors import (
    ImageRejectedError,
    UpstreamAuthError,
    UpstreamBadResponseError,
    UpstreamError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from imagegen.models import GenerationParameters
from imagegen.retry import Retrying, RetryPolicy
from imagegen.slots import upstream_slot

MAX_JSON_BYTES = 64 * 1024
MAX_RETRY_AFTER_S = 86_400.0
MIN_ATTEMPT_S = 1.0  # no attempt starts with less time than this left: it could not finish
_APIM_RETRY_IN = re.compile(r"try again in (\d+) seconds?", re.IGNORECASE)
_QUOTA_REPLENISHED_IN = re.compile(r"replenished in (?:(\d+)\.)?(\d+):(\d{2}):(\d{2})")  # .NET: [d.]hh:mm:ss
DEFAULT_QUOTA_RETRY_AFTER_S = 3600
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})

KeyProvider = Callable[[bool], str]
logger = Logger(child=True)


@dataclass(frozen=True)
class UpstreamResult:
    output_url: str
    attempts: int
    elapsed_ms: int
    key_refreshed: bool


class _Retry(Exception):
    """An attempt failed in a way worth retrying."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() alone accepts "²", which float() refuses
        return min(float(value[:12]), MAX_RETRY_AFTER_S)  # "999…9" (400 digits) must not become inf
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, when.timestamp() - (time.time() if now is None else now)))


def error_message(body: bytes, secret: str | None = None) -> str:
    """The human message of an upstream error body, in either documented shape; short and printable. ``secret``
    is blanked out of the whole body first (an echoing gateway must not hand the key back to our callers)."""
    text = body.decode("utf-8", errors="replace")
    if secret:
        text = text.replace(secret, "[redacted]")
    message = text
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict):
        for field in ("error", "message", "msg"):
            value = document.get(field)
            if isinstance(value, str) and value.strip():
                message = value
                break
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                message = value["message"]
                break
    elif isinstance(document, str):
        message = document
    printable = "".join(ch if ch.isprintable() else " " for ch in message).strip()
    return printable[:300] or "no message"


class FluxClient:
    def __init__(
        self,
        url: str,
        key_provider: KeyProvider,
        *,
        session: requests.Session | None = None,
        connect_timeout_s: float = 3.05,
        read_timeout_s: float = 60.0,
        max_attempts: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        allow_http_output: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self._key_provider = key_provider
        self._session = session or requests.Session()
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._policy = RetryPolicy(
            attempts=max_attempts,
            base_s=backoff_base_s,
            cap_s=backoff_max_s,
            retry_after_cap_s=MAX_RETRY_AFTER_S,
            retry_after_jitter_s=0.25,
            reserve_s=MIN_ATTEMPT_S,
        )
        self._output_schemes = ("https", "http") if allow_http_output else ("https",)
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def generate(self, params: GenerationParameters, deadline: Deadline) -> UpstreamResult:
        """Ask for one image; return the upstream's (short-lived) output URL."""
        started = time.monotonic()
        payload = json.dumps(
            {
                "prompt": params.prompt,
                "num_steps": params.num_steps,
                "seed": params.seed,
                "height": params.height,
                "width": params.width,
            }
        ).encode("utf-8")
        key = self._key_provider(False)
        key_refreshed = False
        last: _Retry | None = None
        waited_s = 0.0  # for a free upstream slot
        retrying = Retrying(self._policy, sleep=self._sleep, rng=self._rng, remaining=deadline.remaining)
        for attempt in retrying:
            while True:  # a second pass only with a re-read key after a 401/403: the same attempt, not a retry
                if deadline.remaining() < MIN_ATTEMPT_S:
                    if last is None:
                        raise UpstreamTimeoutError(
                            "no time left to call the Flux Schnell API within the request budget"
                        )
                    raise self._unavailable(last)
                try:
                    # One of the invocation's upstream slots for this attempt only: given back once the answer is
                    # read (before the image is mirrored) and during the backoff below (imagegen.slots).
                    asked = time.monotonic()
                    with upstream_slot(deadline, reserve_s=MIN_ATTEMPT_S):
                        waited_s += time.monotonic() - asked  # not the upstream's time: kept out of elapsed_ms
                        url = self._attempt(payload, key, deadline)
                    elapsed_ms = int((time.monotonic() - started - waited_s) * 1000)
                    return UpstreamResult(url, attempt, elapsed_ms, key_refreshed)
                except UpstreamAuthError:
                    if key_refreshed:
                        raise
                    # The key may have been rotated: re-read the secret once, bypassing the cache, and retry.
                    key = self._key_provider(True)
                    key_refreshed = True
                except _Retry as retry:
                    last = retry
                    break
            # Retry-After (clamped to MAX_RETRY_AFTER_S) plus up to 250 ms, or full-jitter backoff; never after
            # the last attempt, never a wait that leaves less than one attempt's time before the deadline.
            if not retrying.wait(last.retry_after):
                raise self._unavailable(last)
        raise AssertionError("not reached: the last attempt's wait() is False")  # pragma: no cover

    def _attempt(self, payload: bytes, key: str, deadline: Deadline) -> str:
        read_timeout = min(self._read_timeout_s, deadline.remaining())
        headers = {
            "Content-Type": "application/json",
            "Cache-Control": "no-cache",
            "Ocp-Apim-Subscription-Key": key,
        }
        try:
            response = self._session.post(
                self.url,
                data=payload,
                headers=headers,
                timeout=(min(self._connect_timeout_s, read_timeout), read_timeout),
                stream=True,
                allow_redirects=False,
            )
        except requests.exceptions.ConnectTimeout as exc:
            raise _Retry("connect timeout") from exc
        except requests.exceptions.ReadTimeout as exc:
            raise UpstreamTimeoutError("the Flux Schnell API did not answer within the request budget") from exc
        except requests.exceptions.ConnectionError as exc:
            raise _Retry("connection error") from exc
        except requests.exceptions.RequestException:
            # e.g. InvalidHeader, whose message would quote the header value (the key): no chained cause here.
            raise UpstreamError("could not call the Flux Schnell API") from None
        with response:
            try:
                body = read_body(response, deadline, MAX_JSON_BYTES)
            except DeadlineExceededError as exc:
                raise UpstreamTimeoutError("the Flux Schnell API did not answer within the request budget") from exc
            except IncompleteBodyError as exc:
                raise _Retry("connection broke while reading the answer") from exc
            except BodyTooLargeError as exc:
                raise UpstreamBadResponseError("the Flux Schnell API answered with an oversized body") from exc
            return self._interpret(response, body, key)

    def _interpret(self, response: requests.Response, body: bytes, key: str) -> str:
        status = response.status_code
        if status == 200:
            return self._output_url(body)
        # Upstream text reaches our callers: never let it carry the key back (an echoing gateway, a debug page).
        message = error_message(body, secret=key)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status in _RETRYABLE_STATUS:
            if retry_after is None and (match := _APIM_RETRY_IN.search(message)):
                retry_after = min(float(match.group(1)[:12]), MAX_RETRY_AFTER_S)
            raise _Retry(f"HTTP {status}", retry_after)
        if status == 400:
            raise UpstreamRejectedError(f"the Flux Schnell API rejected the request: {message}")
        if status == 403 and "quota" in message.lower():
            match = _QUOTA_REPLENISHED_IN.search(message)
            if match:
                days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
                wait = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
            else:
                wait = math.ceil(retry_after) if retry_after else DEFAULT_QUOTA_RETRY_AFTER_S
            raise UpstreamUnavailableError(
                "the Flux Schnell subscription is out of call volume quota",
                code="upstream_quota_exhausted",
                retry_after=max(1, wait),
            )
        if status in (401, 403):
            raise UpstreamAuthError("the Flux Schnell API refused the subscription key")
        # 3xx, 404, 405, 413, ...: our configuration or their contract changed; their text stays in our logs.
        logger.warning("unexpected upstream status", status=status, upstream_message=message)
        raise UpstreamError(f"the Flux Schnell API answered an unexpected HTTP {status}", code="upstream_bad_response")

    def _output_url(self, body: bytes) -> str:
        """The output URL of a 200. Two kinds of failure, told apart by whether another paid call could succeed:
        no usable output at all (not JSON, no ``output``, not a string, not a URL) is a bad response, worth one more
        try; a URL we refuse (a scheme other than https, credentials in it) is an image refusal, permanent: the
        upstream answered as it meant to, and asking again would only pay for the same refusal."""
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        output = document.get("output") if isinstance(document, dict) else None
        parts = urlsplit(output.strip()) if isinstance(output, str) else None
        if parts is None or not parts.scheme or not parts.hostname:
            raise UpstreamBadResponseError("the Flux Schnell API answered 200 without a usable output URL")
        if parts.scheme not in self._output_schemes:
            allowed = " or ".join(self._output_schemes)
            raise ImageRejectedError(f"the upstream's output URL scheme {parts.scheme!r} is refused ({allowed} only)")
        if parts.username or parts.password:
            raise ImageRejectedError("the upstream's output URL must not carry credentials")
        return str(output).strip()

    def _unavailable(self, last: _Retry) -> UpstreamUnavailableError:
        retry_after = last.retry_after if last.retry_after is not None else self._policy.base_s
        return UpstreamUnavailableError(
            f"the Flux Schnell API is unavailable ({last.reason}); retry later",
            retry_after=max(1, math.ceil(retry_after)),
        )
