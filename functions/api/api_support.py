"""What the API's route modules share: its logger, metrics and tracer, the deployment's HTTP settings, the
services (built on first use), and the few steps that turn a domain answer into an HTTP answer (links behind
the stage, the Idempotency-Key replay, the 202 of a queued job).

Here, not in the ``imagegen`` layer: all of it is HTTP and only the API function runs it (the worker imports the
layer too, and would pay for it at cold start). Not here: the routes (``routes/``), the OpenAPI response
documentation (``api_openapi``), the error mapping (``api_errors``), and no business logic (the layer's).
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, cast

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Header
from imagegen.idempotency import KEY_PATTERN, MAX_KEY_LENGTH
from imagegen.models import JobDocument
from imagegen.observability import shared_metrics, tracer_from_env
from imagegen.settings import load_http_settings

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent
    from imagegen.jobs import JobService
    from imagegen.service import ImageService

logger = Logger()
tracer = tracer_from_env()
metrics = shared_metrics()
# Read once per execution environment. Routes read it as ``api_support.http_settings`` at request time (a test
# swaps it to turn the docs or the console off).
http_settings = load_http_settings()


def image_service() -> "ImageService":
    """The service, built on first use (the adapters load then, not at cold start)."""
    from imagegen.wiring import image_service as build_once

    return build_once()


def job_service() -> "JobService":
    from imagegen.wiring import job_service as build_once

    return build_once()


IDEMPOTENCY_KEY_DESCRIPTION = (
    "1-255 printable ASCII characters. "
    "Retrying with the same key (per API key) returns the original answer, marked `Idempotent-Replayed: true`, "
    "and creates nothing new; "
    "the same key with a different body is refused (422 idempotency_key_reused)."
)
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        pattern=KEY_PATTERN,  # the one rule (imagegen.idempotency), published in the spec
        description=IDEMPOTENCY_KEY_DESCRIPTION,
    ),
]


def answer(outcome: dict[str, Any]) -> Response:
    """``{"status", "body", "headers"?}`` (what the idempotency layer stores and replays) as a JSON Response."""
    return Response(
        status_code=outcome["status"],
        content_type=content_types.APPLICATION_JSON,
        body=outcome["body"],
        headers=outcome.get("headers"),
    )


def rest_event(router: Router) -> "APIGatewayProxyEvent":
    """The request being answered: a REST API proxy event (the app is an ``APIGatewayRestResolver``; a Router's
    ``current_event`` is typed as the base class of every resolver's event)."""
    return cast("APIGatewayProxyEvent", router.current_event)


def public_link(router: Router, path: str) -> str:
    """``path`` as the caller reaches it: behind the stage (``/prod``) or a custom domain's base path, which
    ``requestContext.path`` carries in front of the resource path."""
    event = rest_event(router)
    public = event.request_context.path or event.path
    prefix = public[: -len(event.path)] if event.path and public.endswith(event.path) else ""
    return prefix + path


def keyed(
    router: Router, operation: str, idempotency_key: str | None, body: Any, execute: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run ``execute`` once per Idempotency-Key (scoped to the caller's API key), or plainly without one."""
    if idempotency_key is None:
        return execute()
    from imagegen.wiring import idempotent_runner

    identity = rest_event(router).request_context.identity
    scope = identity.api_key_id or identity.api_key or "anonymous"
    return idempotent_runner()(
        scope=scope,
        operation=operation,
        key=idempotency_key,
        body=body,
        execute=execute,
        lambda_context=router.lambda_context,
    )


def accepted(router: Router, document: JobDocument) -> dict[str, Any]:
    """The 202 of a queued job, pointing at it."""
    return {
        "status": 202,
        "body": document.model_dump(mode="json"),
        "headers": {"Location": public_link(router, f"/v1/jobs/{document.id}")},
    }
