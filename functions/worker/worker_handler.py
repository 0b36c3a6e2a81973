"""Queue entry point: SQS (event source mapping with ReportBatchItemFailures) → one item per message.

Thin by design: parse, hand each message to the shared ``ItemProcessor``, and turn its outcome into the
partial batch response. A retryable failure sets the message's own visibility timeout (its backoff or the
upstream's Retry-After) and is reported failed; a permanent one is acknowledged with the failure recorded on
the item; a message nobody can read goes to the dead-letter queue with the reason, without blocking its batch.
"""

import json
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import EventType, process_partial_response
from aws_lambda_powertools.utilities.typing import LambdaContext
from imagegen.batch import ConcurrentBatchProcessor, QueueRecord
from imagegen.budget import Deadline
from imagegen.models import ItemError, JobMessage
from imagegen.observability import tracer_from_env
from imagegen.settings import get_settings
from imagegen.slots import UpstreamSlots, bound_upstream
from imagegen.snapstart import register_hooks
from pydantic import ValidationError

if TYPE_CHECKING:
    from imagegen.adapters.jobs_table import JobRepository
    from imagegen.adapters.queue import JobQueue
    from imagegen.jobs import ItemProcessor

register_hooks()  # SnapStart only (EnableSnapStart): each restored environment re-seeds and rebuilds
logger = Logger()
tracer = tracer_from_env()
metrics = Metrics()


def item_processor() -> "ItemProcessor":
    """The service's pieces, built on the first batch (boto3, requests and the adapters load then, not at import)."""
    from imagegen.wiring import item_processor as build_once

    return build_once()


def job_queue() -> "JobQueue":
    from imagegen.wiring import job_queue as build_once

    return build_once()


def job_repository() -> "JobRepository":
    from imagegen.wiring import job_repository as build_once

    return build_once()


class RetryLater(Exception):
    """Reported as a batch item failure: the message comes back after its (adjusted) visibility timeout."""


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "message"
    return f"{where}: {first.get('msg', 'invalid')}"


def _reject(record: QueueRecord, reason: str) -> None:
    """A message that cannot be processed, ever: record the failure on its item when it names one, else DLQ."""
    metrics.add_metric(name="InvalidMessages", unit=MetricUnit.Count, value=1)
    logger.warning("invalid message", message_id=record.messageId, reason=reason[:300])
    try:
        raw = json.loads(record.body)
    except ValueError:
        raw = None
    job_id = raw.get("job_id") if isinstance(raw, dict) else None
    index = raw.get("index") if isinstance(raw, dict) else None
    if isinstance(job_id, str) and isinstance(index, int) and not isinstance(index, bool):
        repository = job_repository()
        item = repository.get_item(job_id, index) if 0 <= index < 10_000 else None
        if item is not None and item.status in ("queued", "running"):
            error = ItemError(code="invalid_message", message=reason[:500])
            if repository.transition(item, "failed", error=error):
                item_processor().announce(job_id)
            return
    job_queue().dead_letter(record.body, reason, record.messageId)


def _handle(record: QueueRecord, processor: "ItemProcessor", deadline: Deadline) -> None:
    try:
        message = JobMessage.model_validate_json(record.body)
    except ValidationError as exc:
        _reject(record, f"the message does not match the job message schema: {_first_error(exc)}")
        return
    outcome = processor.process(
        message,
        message_id=record.messageId,
        receive_count=int(record.attributes.ApproximateReceiveCount),
        deadline=deadline,
    )
    if outcome.ack:
        return
    if outcome.reason == "unknown_item":
        _reject(record, f"job {message.job_id} has no item {message.index}")
        return
    job_queue().delay(record.receiptHandle, outcome.delay_s)
    raise RetryLater(outcome.reason)


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings = get_settings()
    deadline = Deadline.from_context(context, cap_s=900, reserve_s=settings.worker_reserve_s)
    processor = item_processor()
    batch = ConcurrentBatchProcessor(EventType.SQS, model=QueueRecord, max_workers=settings.worker_items_in_flight)
    with bound_upstream(UpstreamSlots(settings.worker_threads)):  # this invocation's slots (imagegen.slots)
        return process_partial_response(
            event=event,
            record_handler=lambda record: _handle(record, processor, deadline),
            processor=batch,
            context=context,
        )
