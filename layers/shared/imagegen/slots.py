"""Upstream slots: how many calls to the Flux API one worker invocation may have in flight at once.

The worker runs more of its batch's items at once than it has slots (``Settings.worker_items_in_flight``), and an
item holds a slot only while the upstream is answering it: it takes one just before an HTTP attempt and gives it
back as soon as that attempt's answer is read, so it mirrors the image into S3 and records it while the next item
calls the upstream. A retry's backoff holds no slot either.

One ``UpstreamSlots`` per invocation, never per process: each Lambda execution environment runs one invocation
at a time and shares no memory with the others, so the fleet-wide bound on concurrent upstream calls is exactly
``WorkerMaxConcurrency`` (the event source mapping's ``MaximumConcurrency``) x ``WorkerThreads``, with nothing
to coordinate. The local stack runs several invocations in one process: a per-process semaphore would bound them
together, which Lambda never does; a per-invocation one behaves the same in both places.

The slots travel in a context variable, set by the worker's handler for the length of an invocation
(``bound_upstream``) and copied into each record's thread by ``ConcurrentBatchProcessor``; ``FluxClient`` takes
one around every attempt (``upstream_slot``). Outside a bound (the synchronous API) a call takes no slot.

Light on purpose (no requests, no boto3): the worker's handler imports it at cold start.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from imagegen.budget import Deadline
from imagegen.errors import UpstreamTimeoutError

_SLOTS: ContextVar[UpstreamSlots | None] = ContextVar("upstream_slots", default=None)
# Called once, the first time an item asks for a slot (``on_first_request``): the worker's refill counts the items
# that have not reached the upstream yet.
_FIRST_REQUEST: ContextVar[Callable[[], None] | None] = ContextVar("first_slot_request", default=None)


class UpstreamSlots:
    """At most ``size`` holders at once among the threads that share it; a waiter gives up at its deadline."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"an invocation needs at least one upstream slot, got {size!r}")
        self.size = size
        self._free = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._in_use = 0
        self._waiting = 0
        self._release_listeners: list[Callable[[], None]] = []

    def acquire(self, timeout_s: float, *, waiting: Callable[[], None] | None = None) -> bool:
        """Take a slot within ``timeout_s``; ``waiting()`` runs once the caller counts in ``demand``."""
        with self._lock:
            self._waiting += 1
        if waiting is not None:
            waiting()
        taken = self._free.acquire(timeout=max(0.0, timeout_s))
        with self._lock:
            self._waiting -= 1
            if taken:
                self._in_use += 1
        return taken

    def release(self) -> None:
        with self._lock:
            self._in_use -= 1
        self._free.release()
        for listener in self._release_listeners:
            listener()

    def add_release_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` after every release (the worker's refill looks again when a slot comes free)."""
        self._release_listeners.append(listener)

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def demand(self) -> int:
        """Calls in flight plus callers waiting for a slot."""
        with self._lock:
            return self._in_use + self._waiting


@contextmanager
def bound_upstream(slots: UpstreamSlots) -> Iterator[UpstreamSlots]:
    """Upstream calls made in this context, and in the threads that run in copies of it, share ``slots``."""
    token = _SLOTS.set(slots)
    try:
        yield slots
    finally:
        _SLOTS.reset(token)


def current_slots() -> UpstreamSlots | None:
    return _SLOTS.get()


def _take_first_request() -> Callable[[], None] | None:
    """The current item's first-request callback, if it has one not yet called; it is called once at most."""
    first_request = _FIRST_REQUEST.get()
    if first_request is not None:
        _FIRST_REQUEST.set(None)
    return first_request


def no_upstream_call() -> None:
    """The current item will not call the upstream (a fan-out or control message): what waits for its first slot
    request (the worker's refill) stops waiting now."""
    first_request = _take_first_request()
    if first_request is not None:
        first_request()


def on_first_request(callback: Callable[[], None]) -> None:
    """Call ``callback`` when the current context (one item's) first asks for a slot. Set it inside the item's
    own context copy: a context variable set there reaches only that item."""
    _FIRST_REQUEST.set(callback)


@contextmanager
def upstream_slot(deadline: Deadline, *, reserve_s: float = 0.0) -> Iterator[None]:
    """Hold one of the current slots for the ``with`` block (nothing outside a ``bound_upstream``).

    Waits at most until ``reserve_s`` before the deadline (an attempt needs time to run once it has its slot):
    then ``UpstreamTimeoutError``, retryable, so the item goes back to the queue for an invocation with time.
    """
    first_request = _take_first_request()
    slots = _SLOTS.get()
    if slots is None:
        if first_request is not None:
            first_request()
        yield
        return
    # Counted as waiting before it stops counting as not arrived: the refill never sees the item in neither
    if not slots.acquire(deadline.remaining() - reserve_s, waiting=first_request):
        raise UpstreamTimeoutError("no upstream slot came free within the request budget")
    try:
        yield
    finally:
        slots.release()
