"""Content moderation with Amazon Bedrock Guardrails (``bedrock-runtime`` ``ApplyGuardrail``).

One guardrail (defined in template.yaml) screens both sides: the prompt as ``source=INPUT`` text, the generated
image as ``source=OUTPUT`` image bytes. The guardrail's content filters and their strengths decide; this adapter
only reads the verdict (``action == GUARDRAIL_INTERVENED``) and names the categories that blocked.

It fails closed: a throttled, failing or unreachable service raises ``ModerationUnavailableError`` (503, retryable),
never "allowed"; an image the guardrail cannot screen (not PNG/JPEG, over 4 MB, not covered by the answer) is
refused, never stored unchecked. botocore's errors are translated here (``raise ... from``).

The boto3 client is built on first use (never at import), once, and can be injected.
``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` (read by boto3 itself) points it at the local stack's stand-in
(``local/devstack/moderation_standin.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from threading import Lock
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.exceptions import SchemaValidationError
from botocore.exceptions import BotoCoreError, ClientError

from imagegen.errors import (
    ConfigurationError,
    ContentBlockedError,
    ImageRejectedError,
    ModerationUnavailableError,
)
from imagegen.observability import shared_metrics

logger = Logger(child=True)
metrics = shared_metrics()

# What ApplyGuardrail accepts for an image (Bedrock Guardrails' documented limits).
MAX_IMAGE_BYTES = 4 * 1024 * 1024
MAX_IMAGE_SIDE = 8000
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg"}

THROTTLED = {"ThrottlingException", "ServiceQuotaExceededException", "TooManyRequestsException"}
UNAVAILABLE = {"ServiceUnavailableException", "InternalServerException", "ModelTimeoutException"}
THROTTLED_RETRY_AFTER_S = 2
UNAVAILABLE_RETRY_AFTER_S = 5


def blocked_categories(answer: dict[str, Any]) -> list[str]:
    """The categories an intervening answer blocked on, from every policy a guardrail can carry."""
    found: list[str] = []
    for assessment in answer.get("assessments") or []:
        for item in (assessment.get("contentPolicy") or {}).get("filters") or []:
            if item.get("action") == "BLOCKED":
                found.append(str(item.get("type", "CONTENT")))
        for item in (assessment.get("topicPolicy") or {}).get("topics") or []:
            if item.get("action") == "BLOCKED":
                found.append(f"TOPIC:{item.get('name', '')}")
        words = assessment.get("wordPolicy") or {}
        if any(item.get("action") == "BLOCKED" for item in words.get("customWords") or []):
            found.append("CUSTOM_WORDS")
        for item in words.get("managedWordLists") or []:
            if item.get("action") == "BLOCKED":
                found.append(str(item.get("type", "MANAGED_WORDS")))
    return sorted(set(found)) or ["UNSPECIFIED"]


def _count_block(target: str, categories: list[str]) -> None:
    """One ``ContentBlocked`` datapoint per category, with the category and target as dimensions (dashboard)."""
    try:
        for category in categories:
            with single_metric(name="ContentBlocked", unit=MetricUnit.Count, value=1) as metric:
                metric.add_dimension(name="target", value=target)
                metric.add_dimension(name="category", value=category)
    except SchemaValidationError:  # no POWERTOOLS_METRICS_NAMESPACE: a lost datapoint, never a lost verdict
        logger.warning("could not emit the ContentBlocked metric (no metrics namespace)")


class GuardrailModerator:
    """Screens prompts and images with one Bedrock guardrail."""

    def __init__(
        self,
        guardrail_id: str,
        guardrail_version: str = "DRAFT",
        *,
        client: Any = None,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self._guardrail_id = guardrail_id
        self._version = guardrail_version
        self._client = client
        self._factory = client_factory
        self._lock = Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    if self._factory is None:
                        import boto3  # built on first use only

                        self._client = boto3.client("bedrock-runtime")
                    else:
                        self._client = self._factory()
        return self._client

    def check_prompt(self, prompt: str) -> None:
        """Raise ``ContentBlockedError`` (target ``prompt``) when the guardrail intervenes."""
        answer = self._apply("prompt", "INPUT", [{"text": {"text": prompt}}])
        if answer.get("action") == "GUARDRAIL_INTERVENED":
            self._blocked("prompt", answer)

    def check_image(self, data: bytes, content_type: str, width: int | None = None, height: int | None = None) -> None:
        """Raise ``ContentBlockedError`` (target ``image``) when the guardrail intervenes; ``ImageRejectedError``
        when the image cannot be screened at all (refused rather than handed out unchecked)."""
        image_format = IMAGE_FORMATS.get(content_type)
        if image_format is None:
            raise ImageRejectedError(
                f"the image cannot be screened by content moderation ({content_type}; PNG or JPEG only): refused"
            )
        if len(data) > MAX_IMAGE_BYTES:
            raise ImageRejectedError(
                f"the image cannot be screened by content moderation ({len(data)} bytes; at most "
                f"{MAX_IMAGE_BYTES} bytes): refused"
            )
        if (width or 0) > MAX_IMAGE_SIDE or (height or 0) > MAX_IMAGE_SIDE:
            raise ImageRejectedError(
                f"the image cannot be screened by content moderation ({width}x{height}; at most "
                f"{MAX_IMAGE_SIDE} pixels a side): refused"
            )
        answer = self._apply("image", "OUTPUT", [{"image": {"format": image_format, "source": {"bytes": data}}}])
        if answer.get("action") == "GUARDRAIL_INTERVENED":
            self._blocked("image", answer)
        coverage = (answer.get("guardrailCoverage") or {}).get("images") or {}
        if coverage and coverage.get("guarded", 0) < coverage.get("total", 1):
            raise ImageRejectedError("content moderation did not screen the image (no image filter): refused")

    def _blocked(self, target: str, answer: dict[str, Any]) -> None:
        categories = blocked_categories(answer)
        _count_block(target, categories)
        logger.info("content blocked", target=target, categories=categories)
        raise ContentBlockedError(target, categories)

    def _apply(self, target: str, source: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        started = time.monotonic()
        try:
            answer: dict[str, Any] = self.client.apply_guardrail(
                guardrailIdentifier=self._guardrail_id,
                guardrailVersion=self._version,
                source=source,
                content=content,
                outputScope="INTERVENTIONS",
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            metrics.add_metric(name="ModerationErrors", unit=MetricUnit.Count, value=1)
            logger.warning("moderation call failed", target=target, error_code=code, http_status=status)
            if code in THROTTLED or status == 429:
                raise ModerationUnavailableError(
                    "content moderation is throttling requests; try again later",
                    retry_after=THROTTLED_RETRY_AFTER_S,
                ) from exc
            if code in UNAVAILABLE or status >= 500:
                raise ModerationUnavailableError(
                    "content moderation is unavailable; try again later", retry_after=UNAVAILABLE_RETRY_AFTER_S
                ) from exc
            if target == "image" and code == "ValidationException":
                raise ImageRejectedError("content moderation could not read the image: refused") from exc
            # Access denied, unknown guardrail, a refused request: the deployment's fault, and not retried.
            raise ConfigurationError(f"content moderation refused the call ({code or status})") from exc
        except BotoCoreError as exc:  # connection refused or reset, timeouts
            metrics.add_metric(name="ModerationErrors", unit=MetricUnit.Count, value=1)
            logger.warning("moderation unreachable", target=target, error=type(exc).__name__)
            raise ModerationUnavailableError(
                "content moderation is unreachable; try again later", retry_after=UNAVAILABLE_RETRY_AFTER_S
            ) from exc
        elapsed_ms = (time.monotonic() - started) * 1000
        metrics.add_metric(name="ModerationLatency", unit=MetricUnit.Milliseconds, value=elapsed_ms)
        return answer
