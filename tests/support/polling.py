"""The one polling helper of the suite: wait until something is true, or fail saying what was awaited.

Every test that waits for another thread, process or server (a job to finish, a webhook to arrive, a queue to
drain, a log line to be forwarded) waits with ``eventually``; nothing polls with a hand-written ``sleep`` loop.
A test never depends on speed: the timeout is a bound that a broken implementation hits, never a budget a working
one must beat, and the condition is checked as soon as it can be.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually[T](
    condition: Callable[[], T],
    timeout_s: float,
    what: str | Callable[[], str],
    interval_s: float = 0.05,
) -> T:
    """Call ``condition`` until it returns something truthy and return that; fail after ``timeout_s`` seconds.

    ``what`` names what the test waited for ("job 42 to finish"); a callable is asked only on failure, for details
    known only then (the queue's counters, the tail of a log). The last sleep ends at the deadline and the condition is
    checked once more after it, so a state reached during that sleep does not fail.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if interval_s <= 0:
        raise ValueError(f"interval_s must be positive, got {interval_s}")
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        left = deadline - time.monotonic()
        if left <= 0:  # checked after the last sleep: a state reached during it counts
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s} s waiting for {described} (last seen: {result!r})")
        time.sleep(min(interval_s, left))
