"""The worker's upstream slots under moto + the emulator: one invocation never has more upstream calls in flight
than WORKER_THREADS, and an item gives its slot back before it mirrors its image (the order of events, never
their timing)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from devstack.lambda_context import make_context
from imagegen import slots as slots_module
from imagegen.settings import get_settings
from support.stack_fixtures import make_job, messages, s3_keys, sqs_event

ITEMS = 12
SLOTS = 3


@pytest.fixture
def three_slots(worker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """WORKER_THREADS=3 for the worker's next invocations (the settings are parsed once per container)."""
    settings = get_settings().model_copy(update={"worker_threads": SLOTS})
    monkeypatch.setattr(worker, "get_settings", lambda: settings)


@pytest.fixture
def slow_upstream(emulator: Any) -> Any:
    """Generations take a moment, so the batch's items overlap."""
    before = emulator.latency_s
    emulator.set_latency(0.2)
    yield emulator
    emulator.set_latency(before)


def test_worker_keeps_upstream_calls_within_its_slots_and_frees_a_slot_before_mirroring(
    worker, repository, stack, slow_upstream, three_slots, monkeypatch
):
    # Given a job of twelve items, a worker with three upstream slots (twelve threads), and a log of what each
    # thread does: take a slot, give it back, start mirroring
    job_id = make_job(repository, [f"slot {i}" for i in range(ITEMS)])
    log: list[tuple[str, int]] = []
    lock = threading.Lock()
    sizes: list[int] = []

    def note(event: str) -> None:
        with lock:
            log.append((event, threading.get_ident()))

    real_acquire, real_release = slots_module.UpstreamSlots.acquire, slots_module.UpstreamSlots.release

    def acquire(self: Any, timeout_s: float, **kwargs: Any) -> bool:
        taken = real_acquire(self, timeout_s, **kwargs)
        if taken:
            sizes.append(self.size)
            note("slot taken")
        return taken

    def release(self: Any) -> None:
        note("slot given back")
        real_release(self)

    monkeypatch.setattr(slots_module.UpstreamSlots, "acquire", acquire)
    monkeypatch.setattr(slots_module.UpstreamSlots, "release", release)
    mirror = worker.item_processor()._images._mirror
    real_mirror = mirror.mirror

    def mirroring(*args: Any, **kwargs: Any) -> Any:
        note("mirror")
        return real_mirror(*args, **kwargs)

    monkeypatch.setattr(mirror, "mirror", mirroring)

    # When one invocation gets the whole batch
    answer = worker.lambda_handler(sqs_event(messages(job_id, ITEMS)), make_context("WorkerFunction", 120))

    # Then every item succeeded once, with one upstream call each
    assert answer == {"batchItemFailures": []}
    assert slow_upstream.calls == ITEMS
    assert all(len(s3_keys(stack, job_id, index)) == 1 for index in range(ITEMS))
    # ... never more than three calls in flight at once (the emulator counts them), from the invocation's slots
    assert slow_upstream.max_in_flight <= SLOTS
    assert sizes == [SLOTS] * ITEMS
    # ... and on each thread, every mirror came after that item's slot was given back: take, give back, mirror
    threads = {ident for _, ident in log}
    for ident in threads:
        events = [event for event, who in log if who == ident]
        assert events == ["slot taken", "slot given back", "mirror"] * (len(events) // 3), events
    assert sum(event == "mirror" for event, _ in log) == ITEMS
