"""Queue entry point: SQS (event source mapping with ReportBatchItemFailures) → one item per message.

Thin by design: parse the SQS record, hand its body to ``FanOut`` when it is the service's own fan-out message
(a job's items object turned into item messages) or an ``Image Requested`` event from EventBridge, else to the
shared ``ItemProcessor``, and turn the outcome into the partial batch response. A retry sets the message's own
visibility timeout (its backoff or the upstream's Retry-After) and is reported failed; an ack or a reject is
acknowledged (the processor has recorded a permanent failure on the item, or moved a message nobody can read to
the dead-letter queue with the reason).
"""

import json
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import EventType, process_partial_response
from aws_lambda_powertools.utilities.typing import LambdaContext
from imagegen.batch import ConcurrentBatchProcessor, QueueRecord
from imagegen.budget import Deadline
from imagegen.observability import shared_metrics, tracer_from_env
from imagegen.retry import queue_delay
from imagegen.settings import get_settings
from imagegen.slots import UpstreamSlots, bound_upstream, no_upstream_call
from imagegen.snapstart import register_hooks
from pydantic import ValidationError

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
    from imagegen.adapters.queue import JobQueue
    from imagegen.fanout import FanOut
    from imagegen.item_processor import ItemProcessor
    from imagegen.refill import Refill
    from imagegen.settings import Settings

register_hooks()  # SnapStart only (EnableSnapStart): each restored environment re-seeds and rebuilds
logger = Logger()
tracer = tracer_from_env()
metrics = shared_metrics()


def item_processor() -> "ItemProcessor":
    """The service's pieces, built on the first batch (boto3, requests and the adapters load then, not at import)."""
    from imagegen.wiring import item_processor as build_once

    return build_once()


def fan_out() -> "FanOut":
    from imagegen.wiring import fan_out as build_once

    return build_once()


def job_queue() -> "JobQueue":
    from imagegen.wiring import job_queue as build_once

    return build_once()


class RetryLater(Exception):
    """Reported as a batch item failure: the message comes back after its (adjusted) visibility timeout."""


def _fan_out(record: QueueRecord, body: dict[str, Any]) -> None:
    """A fan-out message of the service's own, or an ``Image Requested`` event: both safe to replay whole. On
    its last receive a failure is not retried (SQS would dead-letter it with the job's items never written):
    the fan-out gives up, failing what it never fanned out, and the job completes."""
    from imagegen.fanout import FanoutIncomplete, InvalidEvent, event_job_id, is_eventbridge_envelope
    from imagegen.models import FanoutMessage  # the domain models load with the first message, not at import

    receive_count = int(record.attributes.ApproximateReceiveCount)
    message: FanoutMessage | None = None
    try:
        if is_eventbridge_envelope(body):
            if isinstance(body.get("id"), str) and body["id"]:
                message = FanoutMessage(job_id=event_job_id(body["id"]))  # its job, if it was created
            fan_out().from_event(body)
        else:
            message = FanoutMessage.model_validate(body)
            fan_out().handle(message)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "message"
        why = f"not a fan-out message: {where}: {first.get('msg', 'invalid')}"
        job_queue().dead_letter(record.body, why, record.messageId)
    except InvalidEvent as exc:
        metrics.add_metric(name="InvalidMessages", unit=MetricUnit.Count, value=1)
        logger.warning("invalid event", message_id=record.messageId, reason=str(exc)[:300])
        job_queue().dead_letter(record.body, f"invalid Image Requested event: {exc}", record.messageId)
    except Exception as exc:
        last_receive = message is not None and receive_count >= get_settings().max_receive_count
        # give_up is None without a job to settle (an event that never became one): the DLQ keeps it for a redrive
        if last_receive and message is not None and fan_out().give_up(message, receive_count) is not None:
            logger.exception("fan-out failed on its last receive; given up", message_id=record.messageId)
            return
        if not isinstance(exc, FanoutIncomplete):  # logged before anything else can fail
            logger.exception("fan-out failed; the message will be redelivered", message_id=record.messageId)
        # Back after the same jittered backoff as an item's (imagegen.retry.QUEUE_RETRY), growing with the receives
        job_queue().delay(record.receiptHandle, queue_delay(receive_count))
        if isinstance(exc, FanoutIncomplete):
            raise RetryLater(str(exc)) from None
        raise


def _handle(record: QueueRecord, processor: "ItemProcessor", deadline: Deadline) -> None:
    try:
        body = json.loads(record.body)
    except ValueError:
        body = None
    if isinstance(body, dict) and ("kind" in body or "detail-type" in body):
        no_upstream_call()  # the refill need not wait for it to reach a slot
        _fan_out(record, body)
        return
    outcome = processor.handle(
        record.body,
        message_id=record.messageId,
        receive_count=int(record.attributes.ApproximateReceiveCount),
        deadline=deadline,
    )
    if outcome.retries:
        job_queue().delay(record.receiptHandle, outcome.after_s)
        raise RetryLater(outcome.why)
    # ack, or reject (already recorded on its item or moved to the dead-letter queue by the processor): done


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> "PartialItemFailureResponse":
    settings = get_settings()
    deadline = Deadline.from_context(context, cap_s=900, reserve_s=settings.worker_reserve_s)
    processor = item_processor()
    batch = ConcurrentBatchProcessor(EventType.SQS, model=QueueRecord, max_workers=settings.worker_items_in_flight)
    if not (settings.worker_refill and settings.jobs_queue_url):
        with bound_upstream(UpstreamSlots(settings.worker_threads)):  # this invocation's slots (imagegen.slots)
            return process_partial_response(
                event=event,
                record_handler=lambda record: _handle(record, processor, deadline),
                processor=batch,
                context=context,
            )
    refill = _refill(processor, deadline, settings)
    with bound_upstream(refill.slots):
        refill.expect(len(event.get("Records") or ()))
        refill.start()
        try:
            return process_partial_response(
                event=event,
                record_handler=lambda record: refill.track(lambda: _handle(record, processor, deadline)),
                processor=batch,
                context=context,
            )
        finally:
            refill.batch_ended()
            refill.finish()  # the messages it took are all handled before the invocation ends
            if refill.taken:
                metrics.add_metric(name="RefilledMessages", unit=MetricUnit.Count, value=refill.taken)
                logger.info("refill", taken=refill.taken, deleted=refill.deleted)


def _refill(processor: "ItemProcessor", deadline: Deadline, settings: "Settings") -> "Refill":
    """The invocation's refill (imagegen.refill): more messages from the jobs queue while its slots would wait."""
    from imagegen.refill import Refill

    def handle(raw: dict[str, Any]) -> None:
        _handle(QueueRecord.model_validate(raw), processor, deadline)

    def on_error(what: str, exc: BaseException) -> None:
        if isinstance(exc, RetryLater):
            return  # its visibility timeout is set: it comes back then, as a delivered message's retry does
        logger.warning("refill: %s failed", what, error=type(exc).__name__, reason=str(exc)[:300])

    return Refill(
        job_queue(),
        handle,
        slots=UpstreamSlots(settings.worker_threads),
        deadline=deadline,
        reserve_s=settings.worker_refill_until_s,
        lookahead=settings.worker_threads,
        max_items=settings.worker_items_in_flight,
        on_error=on_error,
    )
