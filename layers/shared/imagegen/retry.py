"""One retry policy for every retry loop of the service.

A ``RetryPolicy`` says how hard a call tries: ``attempts`` (the first included), exponential backoff from
``base_s`` up to ``cap_s`` with full jitter (uniform in ``[floor_s, min(cap_s, base_s·2^(n-1))]``), a
``Retry-After`` honoured but clamped (to ``retry_after_cap_s``, else ``cap_s``), ``reserve_s`` (the time the next
attempt needs: a wait is never started unless that much is left after it) and ``deadline_s`` (all attempts and
waits of one call together).

``Retrying`` runs one call under a policy::

    retrying = Retrying(policy, sleep=..., clock=..., rng=..., remaining=deadline.remaining)
    for attempt in retrying:
        try:
            return do(attempt)
        except Transient as exc:
            if not retrying.wait(exc.retry_after):
                raise Unavailable(...) from exc   # attempts or time ran out: raise, never a partial result

``wait`` never sleeps after the last attempt, nor into the deadline; it returns False instead, and the caller
raises. ``RetryPolicy.backoff`` alone gives the delay for retries that wait outside the process (an SQS
message's visibility). The sleep, the clock and the random source are arguments, so tests record the waits
instead of waiting.

Hand-written, not tenacity or backoff: neither is a dependency of the layer (each would add a package to the
artefact and to its cold start), and every call site decides per attempt from what the attempt returned (the
upstream's ``Retry-After``, a DynamoDB batch's unprocessed items, a key refresh that is not an attempt), which
these libraries express through callbacks as long as this module. AWS calls keep botocore's own retries
(``standard`` mode) for throttling and 5xx; this policy covers what botocore does not retry: unprocessed batch
items, canceled transactions, partial SendMessageBatch and PutEvents failures.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

Sleep = Callable[[float], None]
Clock = Callable[[], float]


# The longest a retry can wait outside the process: an SQS message is put back for at most 12 h from its receive
# (its visibility timeout), less a margin for the time the receive has already spent. A longer wait (an upstream's
# Retry-After of a day) is cut to this: the message comes back then and the item tries again.
MAX_QUEUE_DELAY_S = 12 * 3600 - 900
MAX_QUEUE_BACKOFF_S = 900


class Uniform(Protocol):
    """What the policy draws its jitter from: ``random`` itself or a (seeded) ``random.Random``."""

    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int
    base_s: float
    cap_s: float
    floor_s: float = 0.0
    retry_after_cap_s: float | None = None
    retry_after_jitter_s: float = 0.0
    reserve_s: float = 0.0
    deadline_s: float | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        waits = (self.base_s, self.cap_s, self.floor_s, self.retry_after_jitter_s, self.reserve_s)
        if min(waits) < 0 or (self.retry_after_cap_s is not None and self.retry_after_cap_s < 0):
            raise ValueError("waits must not be negative")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError("deadline_s must be more than 0 (or None)")

    def ceiling(self, attempt: int) -> float:
        """The longest backoff after attempt ``attempt`` (1-based): ``min(cap_s, base_s·2^(attempt-1))``."""
        exponent = min(max(0, attempt - 1), 64)  # 2**64 · base is past any cap; a huge exponent would overflow
        return min(self.cap_s, self.base_s * 2.0**exponent)

    def backoff(self, attempt: int, rng: Uniform = random) -> float:
        """Full jitter: uniform in ``[floor_s, ceiling(attempt)]`` (the floor never above the ceiling)."""
        ceiling = self.ceiling(attempt)
        return rng.uniform(min(self.floor_s, ceiling), ceiling)

    def delay(self, attempt: int, retry_after: float | None = None, rng: Uniform = random) -> float:
        """The wait after attempt ``attempt``: the server's ``Retry-After`` when it gave one (clamped to
        ``retry_after_cap_s``, else ``cap_s``, plus up to ``retry_after_jitter_s`` so callers told the same
        moment do not all come back at once), otherwise ``backoff``."""
        if retry_after is None:
            return self.backoff(attempt, rng)
        cap = self.cap_s if self.retry_after_cap_s is None else self.retry_after_cap_s
        wait = min(max(0.0, retry_after), cap)
        if self.retry_after_jitter_s:
            wait += rng.uniform(0, self.retry_after_jitter_s)
        return wait


# Retries the queue waits out (a message made invisible until then): a job item's, a fan-out message's. 5 s
# doubling to 15 min, full jitter, at least 1 s (a 0 would bring the message straight back); a server's
# Retry-After as given, up to the longest the queue can hold a message back. ``attempts`` is not used: the
# queue's maxReceiveCount bounds the receives.
QUEUE_RETRY = RetryPolicy(
    attempts=1, base_s=5, cap_s=MAX_QUEUE_BACKOFF_S, floor_s=1, retry_after_cap_s=MAX_QUEUE_DELAY_S
)


def queue_delay(receive_count: int, retry_after: float | None = None) -> int:
    """Whole seconds until a failed message comes back, after its ``receive_count``-th receive (``QUEUE_RETRY``):
    ``retry_after`` (clamped) when the server gave one, else the jittered backoff."""
    return int(QUEUE_RETRY.delay(receive_count, retry_after))


class Retrying:
    """The attempts of one call under a policy: iterate for the attempt numbers (1, 2, …), ``wait`` between them.

    ``remaining`` (optional) tells the time left of a deadline the caller already has (``Deadline.remaining``);
    ``policy.deadline_s`` counts from this object's creation on ``clock``. The tighter of the two applies.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
        rng: Uniform = random,
        remaining: Callable[[], float] | None = None,
    ) -> None:
        self.policy = policy
        self._sleep = sleep
        self._clock = clock
        self._rng = rng
        self._remaining = remaining
        self._started = clock()
        self.attempt = 0
        self.why_not = ""

    def __iter__(self) -> Retrying:
        return self

    def __next__(self) -> int:
        if self.attempt >= self.policy.attempts:
            raise StopIteration
        self.attempt += 1
        return self.attempt

    @property
    def last(self) -> bool:
        """Whether the current attempt is the last one the policy allows."""
        return self.attempt >= self.policy.attempts

    def time_left(self) -> float | None:
        """Seconds left before the tighter deadline; None without one."""
        left: list[float] = []
        if self._remaining is not None:
            left.append(self._remaining())
        if self.policy.deadline_s is not None:
            left.append(self.policy.deadline_s - (self._clock() - self._started))
        return min(left) if left else None

    def next_delay(self, retry_after: float | None = None) -> float | None:
        """The wait before the next attempt, or None when there is none (``why_not`` says why): this was the
        last attempt, or the wait plus ``reserve_s`` would end past the deadline."""
        if self.last:
            self.why_not = f"gave up after {self.attempt} attempts"
            return None
        delay = self.policy.delay(self.attempt, retry_after, self._rng)
        left = self.time_left()
        if left is not None and delay + self.policy.reserve_s > left:
            self.why_not = f"gave up after {self.attempt} attempts: the next would pass the deadline"
            return None
        return delay

    def wait(self, retry_after: float | None = None) -> bool:
        """Sleep before the next attempt and return True; return False, without sleeping, when there is none."""
        delay = self.next_delay(retry_after)
        if delay is None:
            return False
        self._sleep(delay)
        return True
