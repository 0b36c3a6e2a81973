"""The jobs queue as an in-memory fake for the fan-out tests: what the API, the fan-out and the item processor sent,
in order, for the test to deliver to the worker by hand (moto's SQS takes ~0.4 s a batch on a loaded machine, and
a 1,000-item fan-out sends 100 batches)."""

from __future__ import annotations

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

    def delay(self, receipt_handle: str, seconds: int) -> None:
        pass

    def dead_letter(self, body: str, reason: str, message_id: str) -> None:
        raise AssertionError(f"dead-lettered: {reason}")


@pytest.fixture
def side_queue(worker: Any, monkeypatch: pytest.MonkeyPatch) -> RecordingQueue:
    """Every sender of the local stack's functions sends to one ``RecordingQueue`` for this test."""
    from imagegen import wiring

    queue = RecordingQueue()
    monkeypatch.setattr(wiring.job_service(), "_queue", queue)
    monkeypatch.setattr(wiring.fan_out(), "_queue", queue)
    monkeypatch.setattr(wiring.item_processor(), "_queue", queue)
    monkeypatch.setattr(worker, "job_queue", lambda: queue)
    return queue
