"""The jobs queue as an in-memory fake for the fan-out tests: what the API, the fan-out and the item processor sent,
in order, for the test to deliver to the worker by hand (moto's SQS takes ~0.4 s a batch on a loaded machine, and
a 1,000-item fan-out sends 100 batches)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


class RecordingQueue:
    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.sends = 0  # SendMessageBatch calls the real adapter would make (10 messages each)

    def send(self, messages: Any) -> list[int]:
        self.sends += -(-len(messages) // 10)
        self.bodies += [message.model_dump_json(exclude_none=True) for message in messages]
        return []

    def send_control(self, message: Any) -> None:
        self.bodies.append(message.model_dump_json(exclude_none=True))

    def take(self) -> list[str]:
        bodies, self.bodies = self.bodies, []
        return bodies

    def receive(self, max_messages: int, wait_s: int = 0) -> list[dict[str, Any]]:
        return []  # the worker's refill takes nothing: the test delivers every message by hand

    def delete(self, receipt_handles: Any) -> int:
        return 0

    def delay(self, receipt_handle: str, seconds: int) -> None:
        pass

    def dead_letter(self, body: str, reason: str, message_id: str) -> None:
        raise AssertionError(f"dead-lettered: {reason}")


@pytest.fixture
def side_queue(stack: Any, worker: Any) -> Iterator[RecordingQueue]:
    """Every sender of the local stack's functions sends to one ``RecordingQueue`` for this test.

    The stack's event source mappings stop for the test and start again after it: they invoke the same functions in
    this process, so a message an earlier test left on the real queue would otherwise be handled meanwhile and its
    sends recorded here (seen under pytest-xdist, where a worker's stack outlives the tests that used it)."""
    from imagegen import wiring

    for poller in stack.pollers:
        poller.stop()
    try:
        queue = RecordingQueue()
        with pytest.MonkeyPatch.context() as patch:  # undone before the mappings start again
            patch.setattr(wiring.job_service(), "_queue", queue)
            patch.setattr(wiring.fan_out(), "_queue", queue)
            patch.setattr(wiring.item_processor(), "_queue", queue)
            patch.setattr(worker, "job_queue", lambda: queue)
            yield queue
    finally:
        for poller in stack.pollers:
            poller.start()
