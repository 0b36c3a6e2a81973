"""EventBridge: "Image Generated", "Image Failed" and "Job Completed", for workflows that react to results."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import BotoCoreError, ClientError

from imagegen.observability import shared_metrics
from imagegen.retry import Retrying, RetryPolicy

SOURCE = "flux-image-service"
logger = Logger(child=True)
metrics = shared_metrics()


class EventPublisher:
    def __init__(self, client: Any, bus_name: str, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._client = client
        self._bus = bus_name
        self._sleep = sleep

    def publish(self, detail_type: str, detail: dict[str, Any], attempts: int = 3) -> bool:
        """Publish one event, retrying transient failures. A final failure is logged and counted, not raised:
        the result itself is already recorded and readable through the API."""
        entry = {"Source": SOURCE, "DetailType": detail_type, "Detail": json.dumps(detail), "EventBusName": self._bus}
        # botocore already retried a throttled or failed call; this covers an entry PutEvents answered as failed
        # (200 ms doubling, full jitter, no wait after the last attempt).
        policy = RetryPolicy(attempts=attempts, base_s=0.2, cap_s=0.2 * 2 ** (attempts - 1))
        retrying = Retrying(policy, sleep=self._sleep)
        for attempt in retrying:
            try:
                answer = self._client.put_events(Entries=[entry])
            except (ClientError, BotoCoreError):
                logger.warning("could not publish event", detail_type=detail_type, attempt=attempt)
            else:
                if not answer.get("FailedEntryCount"):
                    return True
                failure = answer["Entries"][0]
                logger.warning(
                    "event rejected",
                    detail_type=detail_type,
                    code=failure.get("ErrorCode"),
                    reason=failure.get("ErrorMessage"),
                )
            if not retrying.wait():
                break
        metrics.add_metric(name="EventsLost", unit=MetricUnit.Count, value=1)
        logger.error("event lost after retries", detail_type=detail_type)
        return False
