"""The one place where an exception becomes an HTTP answer: one ``exception_handler`` per exception type, each
answering the service's error body (``ErrorResponse``: code, message, details, request id). Error types are
mapped, never message text; the status, code and Retry-After of a domain error come from the error itself
(``imagegen.errors.ServiceError``).

A Powertools ``Router`` of its own, included by the entry point like the route modules: its handlers apply to
every route. Here, not in the ``imagegen`` layer: only the API answers HTTP (the worker maps the same errors to
retry or give up). Not here: the domain errors themselves (``imagegen.errors``), raising them (the layer and the
routes), documenting the statuses (``api_openapi``).
"""

from typing import Any

from api_support import logger, metrics, rest_event
from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
    ResponseValidationError,
)
from aws_lambda_powertools.metrics import MetricUnit
from imagegen.errors import ConfigurationError, ServiceError, UnsupportedMediaTypeError
from imagegen.models import ErrorDetail, ErrorInfo, ErrorResponse

router = Router()
DEPENDENCY_RETRY_AFTER_S = 2  # botocore already retried for ~1-3 s: come back after a short pause
INTERNAL_ERROR = "an unexpected error occurred; quote the request_id when reporting it"


def error_answer(
    status: int,
    code: str,
    message: str,
    details: list[ErrorDetail] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The service's error body, with the request id the caller can quote."""
    request_id = rest_event(router).request_context.request_id
    body = ErrorResponse(error=ErrorInfo(code=code, message=message, details=details or [], request_id=request_id))
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=body.model_dump(mode="json"),
        headers=headers or None,
    )


def _internal_error() -> Response:
    metrics.add_metric(name="InternalErrors", unit=MetricUnit.Count, value=1)
    return error_answer(500, "internal_error", INTERNAL_ERROR)


def _error_location(loc: tuple[Any, ...]) -> tuple[str, str | None]:
    parts = [str(part) for part in loc]
    field = ".".join(parts[1:]) if len(parts) > 1 else None
    return ".".join(parts), field


@router.exception_handler(ResponseValidationError)
def handle_response_validation_error(exc: ResponseValidationError) -> Response:
    """Our answer broke our own schema: a bug on our side, never the caller's 422."""
    logger.error("response failed validation", errors=exc.errors())
    return _internal_error()


@router.exception_handler(RequestValidationError)
def handle_validation_error(exc: RequestValidationError) -> Response:
    errors = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        reason = next((error.get("ctx", {}).get("error") for error in errors if error.get("ctx")), None)
        return error_answer(400, "malformed_json", f"the request body is not valid JSON ({reason or 'decode error'})")
    details = []
    for error in errors:
        location, field = _error_location(tuple(error.get("loc", ())))
        details.append(
            ErrorDetail(
                location=location,
                field=field,
                message=str(error.get("msg", "invalid")).removeprefix("Value error, "),
                type=error.get("type", "invalid"),
            )
        )
    summary = "; ".join(f"{detail.field or detail.location}: {detail.message}" for detail in details)
    return error_answer(422, "validation_error", f"the request is invalid: {summary}", details)


@router.exception_handler(RequestUnsupportedContentType)
def handle_unsupported_content_type(exc: RequestUnsupportedContentType) -> Response:
    """Powertools' own refusal of a media type (``api_json_body`` refuses them first): the same 415."""
    return handle_service_error(UnsupportedMediaTypeError("the request body must be application/json"))


@router.exception_handler([RecursionError, UnicodeDecodeError])
def handle_undecodable_body(exc: Exception) -> Response:
    """json.loads recurses on nesting ("[[[[…"), and a body may not be UTF-8: both are the caller's bad JSON."""
    return error_answer(400, "malformed_json", "the request body is not valid JSON (too deeply nested or not UTF-8)")


@router.exception_handler(ConfigurationError)
def handle_configuration_error(exc: ConfigurationError) -> Response:
    """A deployment problem: the operator gets the reason and its cause in the log, the caller a request id."""
    logger.error("configuration error", reason=exc.message, exc_info=exc)
    return _internal_error()


@router.exception_handler(ServiceError)
def handle_service_error(exc: ServiceError) -> Response:
    if exc.status >= 500:
        logger.warning("request failed", error_code=exc.code, status=exc.status, reason=exc.message)
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    details = [ErrorDetail.model_validate(detail) for detail in exc.details]
    return error_answer(exc.status, exc.code, exc.message, details, headers)


@router.exception_handler(NotFoundError)  # what app.not_found registers: no route, or a route's own 404
def handle_not_found(_: Exception) -> Response:
    event = rest_event(router)
    return error_answer(404, "not_found", f"no route for {event.http_method} {event.path}")


@router.exception_handler(Exception)
def handle_unexpected(exc: Exception) -> Response:
    from imagegen.adapters.aws_errors import aws_unavailable

    if aws_unavailable(exc):  # DynamoDB, S3 or SQS slow or throttled after botocore's own retries: not a bug
        logger.warning("an AWS service was unavailable", error=type(exc).__name__)
        metrics.add_metric(name="DependencyUnavailable", unit=MetricUnit.Count, value=1)
        message = "a service the API stores jobs and images in is slow or unavailable; retry after Retry-After seconds"
        return error_answer(503, "service_unavailable", message, headers={"Retry-After": str(DEPENDENCY_RETRY_AFTER_S)})
    logger.exception("unexpected error")
    return _internal_error()
