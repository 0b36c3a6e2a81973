"""Refill: a worker invocation takes more messages from the jobs queue itself while its upstream slots would wait.

The event source mapping hands an invocation one batch; when the batch's last item has made its upstream call,
the invocation's slots sit idle while that item mirrors and records, and again until the mapping delivers the
next batch to a new invocation (its receive, its first claim). Once per batch, on every slot of the fleet: that
is what kept bulk jobs well above items / slots x the call time. With a refill, an invocation keeps its slots
busy: whenever fewer of its items are calling or waiting for a slot than it has slots plus ``lookahead``, it
receives just enough messages to make up the difference and runs them like the batch's own. So the slots idle
only when the queue is empty, and an invocation never holds more than ``lookahead`` messages beyond what its
slots can start, so no message waits in one invocation while another has nothing to do.

The fleet-wide bound does not change: the slots are the invocation's (``imagegen.slots``), so at most
``WorkerMaxConcurrency`` x ``WorkerThreads`` upstream calls are in flight. A message the refill took is handled
exactly as a delivered one (``handle``) and ends the same way: deleted when handled (an ack or a recorded
rejection; ten to a DeleteMessageBatch, the rest when the refill ends); left for its visibility timeout when the
handler set one (a retry) or failed (the queue redelivers it, then dead-letters it after ``maxReceiveCount``
receives, as for a delivered message). The refill stops
taking messages when the queue answers none, when less than ``reserve_s`` of the invocation is left (the worker
sets it to at least one whole upstream call and its mirror, so a taken item is never cut short), or when the
queue cannot be read; it then waits for the items it
took, so the invocation ends with nothing of its own in flight.

Not here: what an item does (``imagegen.item_processor``), the slots themselves (``imagegen.slots``), the batch's
partial response (Powertools, in the worker's entry point).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from dataclasses import dataclass
from typing import Any, Protocol

from imagegen.budget import Deadline
from imagegen.slots import UpstreamSlots, on_first_request

RECEIVE_MAX = 10  # ReceiveMessage's limit
IDLE_CHECK_S = 0.25  # the longest the refill sleeps without a slot or an item telling it something changed


class RefillQueue(Protocol):
    def receive(self, max_messages: int, wait_s: int = 0) -> list[dict[str, Any]]: ...

    def delete(self, receipt_handles: Sequence[str]) -> int: ...


@dataclass(frozen=True)
class Taken:
    """One message the refill received, in the shape the worker reads from a delivered record."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> Taken:
        attributes = message.get("Attributes") or {}
        return cls(
            message_id=str(message["MessageId"]),
            receipt_handle=str(message["ReceiptHandle"]),
            body=str(message.get("Body", "")),
            receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
        )

    def as_record(self) -> dict[str, Any]:
        """The SQS record fields ``imagegen.batch.QueueRecord`` validates."""
        return {
            "messageId": self.message_id,
            "receiptHandle": self.receipt_handle,
            "body": self.body,
            "attributes": {"ApproximateReceiveCount": str(self.receive_count)},
        }


class Refill:
    """Keeps ``slots`` supplied from ``queue`` for one invocation; see the module docstring.

    ``handle(record)`` runs one item (a dict as ``Taken.as_record`` builds it) and returns normally when the message
    is done with (it is then deleted); it raises when the message must come back (it is left as it is).
    The delivered batch is announced with ``expect`` and each of its items run through ``track``, so the refill
    takes nothing while they still wait; ``batch_ended`` forgets any the batch processor never ran.
    """

    def __init__(
        self,
        queue: RefillQueue,
        handle: Callable[[dict[str, Any]], None],
        *,
        slots: UpstreamSlots,
        deadline: Deadline,
        reserve_s: float,
        lookahead: int,
        max_items: int,
        on_error: Callable[[str, BaseException], None] = lambda what, exc: None,
    ) -> None:
        self._queue = queue
        self._handle = handle
        self._slots = slots
        self._deadline = deadline
        self._reserve_s = reserve_s
        self._target = slots.size + max(0, lookahead)
        self._max_items = max(1, max_items)
        self._on_error = on_error
        self._changed = threading.Condition()
        self._expected = 0  # delivered items not started yet
        self._before_slot = 0  # items started here or delivered, that have not asked for a slot nor ended
        self._running = 0  # items the refill took that have not ended
        self._stopped = False
        self.taken = 0
        self.deleted = 0
        self._handled: list[str] = []  # receipt handles to delete, 10 at a time (DeleteMessageBatch)
        self._thread: threading.Thread | None = None
        slots.add_release_listener(self.notify)  # a slot came free: look again at once

    @property
    def slots(self) -> UpstreamSlots:
        return self._slots

    def notify(self) -> None:
        """Something changed (a slot came free, an item reached its slot or ended): look again."""
        with self._changed:
            self._changed.notify_all()

    def expect(self, count: int) -> None:
        """The delivered batch's size, before its items start: they come first."""
        with self._changed:
            self._expected += count

    def batch_ended(self) -> None:
        with self._changed:
            self._expected = 0
            self._changed.notify_all()

    def track(self, run: Callable[[], Any]) -> Any:
        """Run one delivered item, counted as waiting for the upstream until it first asks for a slot or ends."""
        with self._changed:
            self._expected = max(0, self._expected - 1)
            self._before_slot += 1
        reached = self._arrival_callback()
        try:
            return run()
        finally:
            reached()

    def start(self) -> None:
        # In a copy of the caller's context: the invocation's slots reach the items the refill starts.
        self._thread = threading.Thread(target=copy_context().run, args=(self._loop,), name="refill", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        """Wait for the refill to stop taking messages and for every item it took to end."""
        if self._thread is not None:
            self._thread.join()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    # -- the loop ---------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            self._take_and_run()
        finally:  # whatever ended the loop, what was handled is deleted
            self._delete_handled(everything=True)

    def _take_and_run(self) -> None:
        with ThreadPoolExecutor(max_workers=self._max_items, thread_name_prefix="refill-item") as pool:
            while True:
                wanted = self._wait_for_room()
                if wanted <= 0:
                    break
                try:
                    # A short poll: an empty queue ends the refill at once. SQS answers a short poll from a sample
                    # of its servers, so a queue with few messages may answer none; the event source mapping
                    # delivers those, as it would without a refill.
                    messages = self._queue.receive(min(wanted, RECEIVE_MAX), wait_s=0)
                except Exception as exc:  # noqa: BLE001 - the queue's own redelivery carries on without the refill
                    self._on_error("receive", exc)
                    break
                if not messages:
                    break
                for message in messages:
                    taken = Taken.from_message(message)
                    with self._changed:
                        self._before_slot += 1
                        self._running += 1
                    self.taken += 1
                    pool.submit(copy_context().run, self._run, taken)
        # the pool's exit waited for every item taken

    def _wait_for_room(self) -> int:
        """How many messages to take now (0: stop), waiting while the invocation has enough to do."""
        with self._changed:
            while True:
                if self._stopped or self._deadline.remaining() < self._reserve_s:
                    return 0
                room = min(self._target - self._demand(), self._max_items - self._running)
                if room > 0:
                    return room
                self._changed.wait(IDLE_CHECK_S)

    def _demand(self) -> int:
        return self._expected + self._before_slot + self._slots.demand

    def _arrival_callback(self) -> Callable[[], None]:
        """Counts this item out of ``_before_slot`` exactly once: when it first asks for a slot, or when it ends
        without asking (a canceled job's item, a duplicate, a refusal before the call)."""
        done = threading.Event()

        def reached() -> None:
            if done.is_set():
                return
            done.set()
            with self._changed:
                self._before_slot -= 1
                self._changed.notify_all()

        on_first_request(reached)
        return reached

    def _run(self, taken: Taken) -> None:
        reached = self._arrival_callback()
        try:
            self._handle(taken.as_record())
        except Exception as exc:  # noqa: BLE001 - as a delivered message's failure: it comes back later
            self._on_error("item", exc)
        else:
            with self._changed:
                self._handled.append(taken.receipt_handle)
            self._delete_handled()
        finally:
            reached()
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    def _delete_handled(self, *, everything: bool = False) -> None:
        """Delete what was handled, a full batch of 10 at a time (all of it at the end): one call per ten messages,
        as the event source mapping deletes. A message handled but not yet deleted when the invocation dies comes
        back, and its settled item acknowledges it without another upstream call."""
        while True:
            with self._changed:
                if not self._handled or (len(self._handled) < RECEIVE_MAX and not everything):
                    return
                batch, self._handled = self._handled[:RECEIVE_MAX], self._handled[RECEIVE_MAX:]
            try:
                failed = self._queue.delete(batch)
            except Exception as exc:  # noqa: BLE001 - delivered again; their claims make the duplicates no-ops
                self._on_error("delete", exc)
                continue
            if failed:  # they come back; their settled items acknowledge them without another upstream call
                self._on_error("delete", RuntimeError(f"{failed} of {len(batch)} messages not deleted"))
            with self._changed:
                self.deleted += len(batch) - failed
