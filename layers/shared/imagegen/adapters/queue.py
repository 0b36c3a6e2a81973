"""The jobs queue: batched sends (up to ten SendMessageBatch calls at once, their partial failures retried),
visibility changes for per-message backoff, and the dead-letter queue for messages that cannot be understood."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel

from imagegen.models import ControlMessage
from imagegen.retry import MAX_QUEUE_DELAY_S, Retrying, RetryPolicy

SEND_BATCH = 10  # SendMessageBatch's limit
# SendMessageBatch calls in flight at once when a send needs several (a fan-out chunk's 100 items: 10 calls). One
# after another, a chunk's last message reached the queue ten round trips after its first, and its items' slots
# waited for them.
SEND_THREADS = 10


def message_body(message: BaseModel) -> str:
    """A message as the queue carries it: compact JSON without the fields left unset (null)."""
    return message.model_dump_json(exclude_none=True)


class JobQueue:
    def __init__(
        self,
        client: Any,
        queue_url: str,
        dlq_url: str | None = None,
        *,
        attempts: int = 4,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._url = queue_url
        self._dlq_url = dlq_url
        # botocore retries a throttled or failed call; the entries a SendMessageBatch answer lists as failed it
        # does not: those are sent again under this policy (100 ms doubling to 1 s, full jitter).
        self._policy = RetryPolicy(attempts=attempts, base_s=0.1, cap_s=1.0)
        self._sleep = sleep

    def send(self, messages: Sequence[BaseModel]) -> list[int]:
        """Send every message; return the positions that could not be enqueued after the retries."""
        batches = [
            list(range(start, min(start + SEND_BATCH, len(messages)))) for start in range(0, len(messages), SEND_BATCH)
        ]
        send = functools.partial(self._send_batch, messages)
        if len(batches) <= 1:
            return [position for batch in batches for position in send(batch)]
        with ThreadPoolExecutor(max_workers=min(SEND_THREADS, len(batches)), thread_name_prefix="sqs-send") as pool:
            return [position for not_sent in pool.map(send, batches) for position in not_sent]

    def _send_batch(self, messages: Sequence[BaseModel], positions: list[int]) -> list[int]:
        pending = positions
        permanent: list[int] = []  # sender faults of every attempt: each is reported, none forgotten on a retry
        retrying = Retrying(self._policy, sleep=self._sleep)
        for _ in retrying:
            entries = [{"Id": str(position), "MessageBody": message_body(messages[position])} for position in pending]
            try:
                answer = self._client.send_message_batch(QueueUrl=self._url, Entries=entries)
            except (ClientError, BotoCoreError):  # a timeout too: a duplicate message is harmless (claims reject it)
                answer = {"Failed": [{"Id": entry["Id"], "SenderFault": False} for entry in entries]}
            # Sender faults (a malformed entry) will fail again: only the others are worth another try.
            retry = [int(f["Id"]) for f in answer.get("Failed", []) if not f.get("SenderFault")]
            permanent.extend(int(f["Id"]) for f in answer.get("Failed", []) if f.get("SenderFault"))
            pending = retry
            if not pending or not retrying.wait():
                break
        # Never a partial success reported as a whole one: every position returned is one not enqueued.
        return pending + permanent

    def send_control(self, message: ControlMessage) -> None:
        """One control message for the worker (cancel a job's items, announce a completion)."""
        self._client.send_message(QueueUrl=self._url, MessageBody=message_body(message))

    def receive(self, max_messages: int, wait_s: int = 0) -> list[dict[str, Any]]:
        """Up to ``max_messages`` (1–10) messages, with the receive count the worker reads (the refill's pull)."""
        answer = self._client.receive_message(
            QueueUrl=self._url,
            MaxNumberOfMessages=max(1, min(max_messages, SEND_BATCH)),
            WaitTimeSeconds=wait_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return list(answer.get("Messages", []))

    def delete(self, receipt_handles: Sequence[str]) -> int:
        """Acknowledge up to 10 messages the worker took itself (the event source mapping deletes the ones it
        delivers); returns how many SQS did not delete (they come back, and their items' claims make that a no-op)."""
        if not receipt_handles:
            return 0
        entries = [{"Id": str(n), "ReceiptHandle": handle} for n, handle in enumerate(receipt_handles[:SEND_BATCH])]
        answer = self._client.delete_message_batch(QueueUrl=self._url, Entries=entries)
        return len(answer.get("Failed", []))

    def delay(self, receipt_handle: str, seconds: int) -> None:
        """Make a failed message reappear after ``seconds`` (its own backoff) instead of the queue default."""
        self._client.change_message_visibility(
            QueueUrl=self._url, ReceiptHandle=receipt_handle, VisibilityTimeout=max(0, min(seconds, MAX_QUEUE_DELAY_S))
        )

    def dead_letter(self, body: str, reason: str, message_id: str) -> None:
        """Move an unreadable message to the DLQ with the reason, so it is neither retried nor lost."""
        if not self._dlq_url:
            raise RuntimeError("no dead-letter queue configured")
        self._client.send_message(
            QueueUrl=self._dlq_url,
            MessageBody=body,
            MessageAttributes={
                "reason": {"DataType": "String", "StringValue": reason[:1000]},
                "original_message_id": {"DataType": "String", "StringValue": message_id},
            },
        )
