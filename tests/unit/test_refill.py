"""The worker's refill (imagegen.refill) with an in-memory queue and items that call a fake upstream through the real
slots: what it takes and when, what it deletes and what it leaves, and when it stops. Calls are held and released
by the test (events, never timing), so every assertion is about order and counts."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import copy_context
from typing import Any

import pytest
from imagegen.budget import Deadline
from imagegen.refill import Refill, Taken
from imagegen.slots import UpstreamSlots, bound_upstream, no_upstream_call, upstream_slot
from support.polling import eventually

WAIT_S = 10.0  # the longest any step here may take before the test fails (never reached when it passes)


class FakeQueue:
    """A list of message bodies behind ReceiveMessage/DeleteMessage, recording every call."""

    def __init__(self, bodies: list[str], *, fail_receive: bool = False) -> None:
        self._waiting = [
            {"MessageId": f"m{index}", "ReceiptHandle": f"r{index}", "Body": body, "Attributes": {}}
            for index, body in enumerate(bodies)
        ]
        self.receives: list[int] = []
        self.deleted: list[str] = []
        self.delete_calls = 0
        self.fail_receive = fail_receive
        self._lock = threading.Lock()

    def receive(self, max_messages: int, wait_s: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            self.receives.append(max_messages)
            if self.fail_receive:
                raise ConnectionError("the queue is unreachable")
            taken, self._waiting = self._waiting[:max_messages], self._waiting[max_messages:]
            return taken

    def delete(self, receipt_handles: list[str]) -> int:
        with self._lock:
            assert 1 <= len(receipt_handles) <= 10
            self.deleted.extend(receipt_handles)
            self.delete_calls += 1
            return 0

    @property
    def left(self) -> int:
        return len(self._waiting)


class Upstream:
    """Each item takes a slot and 'calls' until the test releases it; records the most calls in flight."""

    def __init__(self) -> None:
        self.calling: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.done: list[str] = []
        self._lock = threading.Condition()
        self._released: set[str] = set()
        self.release_all = False

    def call(self, body: str) -> None:
        with upstream_slot(Deadline.after(WAIT_S)), self._lock:
            self.calling.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._lock.notify_all()
            assert self._lock.wait_for(lambda: self.release_all or body in self._released, WAIT_S)
            self.in_flight -= 1
        with self._lock:
            self.done.append(body)
            self._lock.notify_all()

    def release(self, *bodies: str, everything: bool = False) -> None:
        with self._lock:
            self._released.update(bodies)
            self.release_all = self.release_all or everything
            self._lock.notify_all()

    def wait_calling(self, count: int) -> None:
        with self._lock:
            assert self._lock.wait_for(lambda: len(self.calling) >= count, WAIT_S), self.calling


def make_refill(
    queue: FakeQueue,
    handle: Callable[[dict[str, Any]], None],
    *,
    slots: int = 1,
    lookahead: int = 1,
    reserve_s: float = 0.0,
    deadline_s: float = 60.0,
    errors: list[tuple[str, BaseException]] | None = None,
) -> Refill:
    return Refill(
        queue,
        handle,
        slots=UpstreamSlots(slots),
        deadline=Deadline.after(deadline_s),
        reserve_s=reserve_s,
        lookahead=lookahead,
        max_items=4 * slots,
        on_error=lambda what, exc: (errors if errors is not None else []).append((what, exc)),
    )


def run(refill: Refill) -> None:
    with bound_upstream(refill.slots):
        refill.start()
        refill.finish()


def test_takes_only_what_its_slots_can_start_and_handles_every_message_once():
    # Given ten messages, one slot and a lookahead of one, and an upstream the test holds
    queue = FakeQueue([f"item {i}" for i in range(10)])
    upstream = Upstream()
    refill = make_refill(queue, lambda record: upstream.call(record["body"]))
    with bound_upstream(refill.slots):
        refill.start()
        # When the first item is calling
        upstream.wait_calling(1)
        # Then one more was taken to wait for the slot, and no more: eight stay on the queue for other invocations
        eventually(lambda: refill.slots.demand == 2, WAIT_S, "one call and one waiter on the slot", 0.01)
        assert queue.left == 8
        assert upstream.max_in_flight == 1
        # When the upstream answers everything
        upstream.release(everything=True)
        refill.finish()
    # Then each message was handled once, deleted once, and there were never two calls in flight on one slot
    assert sorted(upstream.done) == sorted(f"item {i}" for i in range(10))
    assert sorted(queue.deleted) == sorted(f"r{i}" for i in range(10))
    assert upstream.max_in_flight == 1
    assert refill.taken == refill.deleted == 10
    assert all(wanted <= 2 for wanted in queue.receives)  # never more than slots + lookahead at once


def test_a_failed_item_is_left_on_the_queue_and_reported():
    # Given three messages of which the second fails in its handler
    queue = FakeQueue(["ok 1", "boom", "ok 2"])
    errors: list[tuple[str, BaseException]] = []

    def handle(record: dict[str, Any]) -> None:
        if record["body"] == "boom":
            raise RuntimeError("retry me")

    # When the refill runs them
    run(make_refill(queue, handle, errors=errors))
    # Then the two handled ones are deleted and the failed one is not (it comes back after its visibility timeout)
    assert sorted(queue.deleted) == ["r0", "r2"]
    assert [(what, str(exc)) for what, exc in errors] == [("item", "retry me")]


def test_takes_nothing_when_less_than_its_reserve_is_left():
    # Given an invocation with 5 s left and a refill reserve of 30 s
    queue = FakeQueue(["late"])
    handled: list[str] = []
    refill = make_refill(queue, lambda record: handled.append(record["body"]), reserve_s=30.0, deadline_s=5.0)
    # When the refill runs
    run(refill)
    # Then it never asks the queue, and the message stays for an invocation with time
    assert queue.receives == []
    assert handled == [] and queue.left == 1


def test_stops_at_an_empty_queue_and_when_the_queue_cannot_be_read():
    # Given an empty queue, then an unreachable one
    empty = FakeQueue([])
    run(make_refill(empty, lambda record: None))
    # Then one receive each, and the refill ended (finish returned); the failure is reported, not raised
    assert empty.receives == [2]
    errors: list[tuple[str, BaseException]] = []
    broken = FakeQueue(["x"], fail_receive=True)
    run(make_refill(broken, lambda record: None, errors=errors))
    assert broken.receives == [2]
    assert [what for what, _ in errors] == ["receive"]


def test_the_delivered_batch_comes_first():
    # Given a delivered batch of two items announced before they start, and messages waiting on the queue
    queue = FakeQueue([f"queued {i}" for i in range(4)])
    upstream = Upstream()
    refill = make_refill(queue, lambda record: upstream.call(record["body"]))
    with bound_upstream(refill.slots):
        refill.expect(2)
        refill.start()
        # (each in a copy of this context, as the batch processor runs them: the slots reach them)
        delivered = [
            threading.Thread(target=copy_context().run, args=(refill.track, lambda body=body: upstream.call(body)))
            for body in ("delivered 0", "delivered 1")
        ]
        for thread in delivered:
            thread.start()
        # When one delivered item calls and the other waits for the slot
        upstream.wait_calling(1)
        eventually(lambda: refill.slots.demand == 2, WAIT_S, "one delivered item calling, one waiting", 0.01)
        refill.notify()
        # Then the refill took nothing: the batch's two items fill its one slot and its lookahead
        assert upstream.calling[0].startswith("delivered")
        assert queue.receives == [] and queue.left == 4
        # When the delivered items end, the refill takes the queued ones
        upstream.release(everything=True)
        for thread in delivered:
            thread.join(WAIT_S)
        refill.batch_ended()
        refill.finish()
    assert sorted(upstream.done) == ["delivered 0", "delivered 1"] + [f"queued {i}" for i in range(4)]
    assert sorted(queue.deleted) == [f"r{i}" for i in range(4)]


def test_an_item_that_ends_before_the_upstream_counts_out():
    # Given items that end without asking for a slot (a canceled job's items, duplicates)
    queue = FakeQueue([f"skipped {i}" for i in range(7)])
    # When the refill runs them
    refill = make_refill(queue, lambda record: None)
    run(refill)
    # Then it goes on taking (an item that ends frees its place) until the queue is empty
    assert queue.left == 0
    assert len(queue.deleted) == 7


@pytest.mark.parametrize("slots", [1, 3])
def test_never_more_calls_in_flight_than_slots_with_many_messages(slots):
    # Given forty messages and an upstream answering as soon as the test lets it
    queue = FakeQueue([f"bulk {i}" for i in range(40)])
    upstream = Upstream()
    upstream.release(everything=True)
    # When the refill runs them on `slots` slots
    refill = make_refill(queue, lambda record: upstream.call(record["body"]), slots=slots, lookahead=slots)
    run(refill)
    # Then all were handled and deleted, and the upstream never saw more than `slots` at once
    assert len(upstream.done) == 40 and len(queue.deleted) == 40
    assert upstream.max_in_flight <= slots


def test_taken_reads_the_receive_count_and_builds_the_record_the_worker_validates():
    from imagegen.batch import QueueRecord

    taken = Taken.from_message(
        {"MessageId": "id-1", "ReceiptHandle": "rh", "Body": "{}", "Attributes": {"ApproximateReceiveCount": "3"}}
    )
    record = QueueRecord.model_validate(taken.as_record())
    assert (record.messageId, record.receiptHandle, record.body) == ("id-1", "rh", "{}")
    assert record.attributes.ApproximateReceiveCount == "3"


def test_deletes_ten_at_a_time_and_the_rest_at_the_end():
    # Given 25 messages handled at once
    queue = FakeQueue([f"m{i}" for i in range(25)])
    run(make_refill(queue, lambda record: None, slots=3, lookahead=3))
    # Then all were deleted, in three calls (10, 10, 5) rather than 25
    assert sorted(queue.deleted) == sorted(f"r{i}" for i in range(25))
    assert queue.delete_calls == 3


def test_a_message_that_will_not_call_the_upstream_does_not_hold_up_the_refill():
    # Given a first message that is not an item (a fan-out: it says so, then works for a while) and items behind it
    queue = FakeQueue(["fan-out"] + [f"item {i}" for i in range(3)])
    fan_out_done = threading.Event()
    upstream = Upstream()
    upstream.release(everything=True)

    def handle(record: dict[str, Any]) -> None:
        if record["body"] == "fan-out":
            no_upstream_call()
            assert fan_out_done.wait(WAIT_S)
        else:
            upstream.call(record["body"])

    refill = make_refill(queue, handle, lookahead=0)  # one slot, nothing beyond it: a waiting fan-out would fill it
    with bound_upstream(refill.slots):
        refill.start()
        # When the fan-out is still working, Then the items behind it are taken and generated meanwhile
        eventually(lambda: len(upstream.done) == 3, WAIT_S, "the items behind the fan-out", 0.01)
        fan_out_done.set()
        refill.finish()
    assert len(queue.deleted) == 4


def test_a_loop_that_fails_still_deletes_what_was_handled():
    # Given a queue whose second answer is unreadable (no MessageId), after ten messages were handled
    queue = FakeQueue([f"m{i}" for i in range(3)])
    real_receive = queue.receive
    answers = iter([lambda n: real_receive(n), lambda n: [{"ReceiptHandle": "broken"}]])

    def receive(max_messages: int, wait_s: int = 0) -> list[dict[str, Any]]:
        return next(answers, lambda n: [])(max_messages)

    queue.receive = receive  # type: ignore[method-assign]
    refill = make_refill(queue, lambda record: None, slots=3, lookahead=0)
    # When the refill runs, Then the malformed answer ends it with an error, and what it handled is still deleted
    with bound_upstream(refill.slots), pytest.raises(KeyError):
        refill._loop()
    assert sorted(queue.deleted) == ["r0", "r1", "r2"]
