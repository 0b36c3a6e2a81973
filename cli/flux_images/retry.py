"""Bounded retries: attempts, the longest wait accepted, full-jitter backoff, ``Retry-After``, a deadline.

One helper for every HTTP call of the client (API routes and presigned URLs). The sleep and the clock are
arguments, so tests record the waits instead of waiting.
"""

from __future__ import annotations

import email.utils
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one call tries.

    - ``max_attempts``: attempts per call, the first included; never a sleep after the last one.
    - ``max_wait_s``: the longest single wait accepted. A ``Retry-After`` above it ends the call at once (the
      error says when the API asks to come back) instead of blocking for an hour.
    - ``backoff_base_s``, ``backoff_cap_s``: exponential backoff with full jitter when there is no ``Retry-After``.
    - ``deadline_s``: all attempts and waits of one call together; a wait that would end past it is not started.
    """

    max_attempts: int = 6
    max_wait_s: float = 60.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 10.0
    deadline_s: float | None = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.max_wait_s < 0 or self.backoff_base_s < 0 or self.backoff_cap_s < 0:
            raise ValueError("waits must not be negative")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError("deadline_s must be more than 0 (or None)")

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base·2^(attempt-1))]."""
        return random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 1)))  # noqa: S311


NO_RETRY = RetryPolicy(max_attempts=1)

_SECONDS = re.compile(r"\d{1,10}(?:\.\d{1,6})?", re.ASCII)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from ``Retry-After`` (delta-seconds, fractions tolerated, or an HTTP-date; never negative); None when
    absent or unreadable."""
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


class Attempts:
    """The attempts of one call under a policy: ``for attempt in Attempts(...)``, then ``wait_before_next``.

    ``allows(delay)`` is False when there is no next attempt: after the last one, when ``delay`` is above
    ``max_wait_s``, or when the wait would end past the deadline (``why_not`` then says which), and
    ``wait_before_next(delay)`` sleeps only when it is True.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._sleep = sleep
        self._clock = clock
        self._started = clock()
        self.attempt = 0
        self.why_not = ""

    def __iter__(self) -> Attempts:
        return self

    def __next__(self) -> int:
        if self.attempt >= self.policy.max_attempts:
            raise StopIteration
        self.attempt += 1
        return self.attempt

    @property
    def last(self) -> bool:
        return self.attempt >= self.policy.max_attempts

    def backoff(self) -> float:
        return self.policy.backoff(self.attempt)

    def allows(self, delay: float) -> bool:
        """Whether a next attempt after waiting ``delay`` is allowed; ``why_not`` says why when it is not."""
        if self.last:
            self.why_not = f"gave up after {self.attempt} attempts"
            return False
        if delay > self.policy.max_wait_s:
            self.why_not = f"the server asks to retry in {delay:.0f} s; try again later"
            return False
        deadline = self.policy.deadline_s
        if deadline is not None and self._clock() - self._started + max(0.0, delay) > deadline:
            self.why_not = f"gave up after {self.attempt} attempts: the next would pass the {deadline:g} s deadline"
            return False
        return True

    def wait_before_next(self, delay: float) -> bool:
        """Sleep ``delay`` (at least 0) when ``allows(delay)``; False, without sleeping, when not."""
        if not self.allows(delay):
            return False
        self._sleep(max(0.0, delay))
        return True
