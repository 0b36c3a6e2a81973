"""Powertools ``BatchProcessor`` whose records run concurrently, on a bounded thread pool.

Powertools processes a batch one record after another; an image takes seconds of waiting on the upstream, so a
batch of ten would take ten times as long as it needs. Records are independent (each is its own item, with its
own conditional state transitions), so they run side by side; Powertools still builds the partial batch
response (``batchItemFailures``) from the successes and failures, which it collects in lists (appends are
atomic in CPython). The records run through the inherited ``_process_record``: despite its underscore, it is the
extension point Powertools documents for custom processors ("Create your own partial processor" in its batch
utility's documentation); ``tests/unit/test_upstream_slots.py`` and the worker's tests fail if it changes.

``QueueRecord`` is the part of an SQS record the worker reads, validated at the edge (``model=QueueRecord``).
Powertools' ``SqsRecordModel`` would do, but importing it imports every one of Powertools' ~40 parser models
(and ``importlib.metadata``, ``email``): ~160 ms of the worker's cold start for four fields.

Import order matters here: Powertools' batch utility imports those parser models itself when pydantic is already
loaded at its own import (``batch/types.py``), so this module imports it before anything imports pydantic
(``tests/artefact`` checks the worker never loads the parser models).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextvars import Context, copy_context
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from pydantic import BaseModel, ConfigDict


class QueueAttributes(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)

    ApproximateReceiveCount: str


class QueueRecord(BaseModel):
    """An SQS record as the event source mapping delivers it (field names as in the event and Powertools' model).
    Its validator is built on the first batch, as the other models' are (``defer_build``)."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)

    messageId: str
    receiptHandle: str
    body: str
    attributes: QueueAttributes


class ConcurrentBatchProcessor(BatchProcessor):
    def __init__(self, event_type: EventType, model: Any = None, *, max_workers: int = 8) -> None:
        # A batch whose every item is being retried (a rate-limit storm) is not a function error: the partial
        # response already reports each message, so no BatchProcessingError (it would trip the error alarm).
        super().__init__(event_type=event_type, model=model, raise_on_entire_batch_failure=False)
        self.max_workers = max_workers

    def process(self) -> list[tuple]:  # type: ignore[override]
        if len(self.records) <= 1 or self.max_workers <= 1:
            return super().process()
        # Each record runs in a copy of the caller's context: the invocation's upstream slots (imagegen.slots)
        # reach every thread. Copied here, in the caller's thread: a pool thread's own context is empty.
        contexts = [copy_context() for _ in self.records]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(self.records))) as pool:
            return list(pool.map(self._process_in, contexts, self.records))

    def _process_in(self, context: Context, record: Any) -> tuple:
        return context.run(self._process_record, record)
