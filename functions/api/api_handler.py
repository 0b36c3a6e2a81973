"""HTTP entry point: API Gateway (REST, proxy integration) → Powertools APIGatewayRestResolver.

Thin by design: routing, validation at the edge, and the ONE place where errors become HTTP answers.
The work lives in the shared layer (``imagegen``). No ``from __future__ import annotations`` here:
Powertools reads the route signatures at run time to validate and to build the OpenAPI schema.
"""

import pathlib
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, CORSConfig, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError as RouteNotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Body, Path
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from imagegen.budget import Deadline
from imagegen.errors import ServiceError
from imagegen.models import (
    IMAGE_ID_PATTERN,
    ErrorDetail,
    ErrorInfo,
    ErrorResponse,
    ImageDocument,
    ImageRequest,
)
from imagegen.observability import tracer_from_env
from imagegen.settings import get_settings, load_http_settings

if TYPE_CHECKING:
    from imagegen.service import ImageService

logger = Logger()
tracer = tracer_from_env()
metrics = Metrics()

ALLOWED_HEADERS = ["Content-Type", "X-Api-Key", "Idempotency-Key", "Prefer"]
EXPOSED_HEADERS = ["Location", "Retry-After"]


def image_service() -> "ImageService":
    """The service, built on first use (the adapters load then, not at cold start)."""
    from imagegen.wiring import image_service as build_once

    return build_once()


def _cors(origins: list[str]) -> CORSConfig | None:
    if not origins:
        return None
    return CORSConfig(
        allow_origin=origins[0],
        extra_origins=origins[1:],
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )


http_settings = load_http_settings()
app = APIGatewayRestResolver(enable_validation=True, cors=_cors(http_settings.cors_allowed_origins))
API_KEY_SECURITY = [{"apiKey": []}]
API_TITLE = "Flux image service"
API_VERSION = "1.0.0"
API_DESCRIPTION = "Text-to-image generation (Flux Schnell) with durable, private copies of every image."


def _error_content(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"model": ErrorResponse}}}


COMMON_ERRORS: dict[int, Any] = {
    403: _error_content("Missing or invalid API key (answered by API Gateway)."),
    429: _error_content("Usage plan throttle or quota exceeded (answered by API Gateway)."),
    500: _error_content("Unexpected error; the body carries the request id."),
}
GENERATION_ERRORS: dict[int, Any] = {
    400: _error_content("Malformed JSON, or the upstream refused the parameters."),
    422: _error_content("Validation failed: `details` lists every failing field."),
    502: _error_content("The upstream answered something unusable, refused our key, or pointed at a bad image."),
    503: _error_content("The upstream is rate limiting or unavailable; see Retry-After."),
    504: _error_content("The upstream did not answer within the request's time budget."),
}


@app.post(
    "/v1/images",
    summary="Generate an image",
    description="Generates one image synchronously and answers with its document and a presigned URL.",
    responses={
        201: {
            "description": "The image was generated and stored.",
            "content": {"application/json": {"model": ImageDocument}},
        },
        **GENERATION_ERRORS,
        **COMMON_ERRORS,
    },
    security=API_KEY_SECURITY,
    tags=["images"],
)
@tracer.capture_method
def create_image(request: Annotated[ImageRequest, Body()]) -> Response[ImageDocument]:
    settings = get_settings()
    deadline = Deadline.from_context(
        app.lambda_context, cap_s=settings.api_budget_s, reserve_s=settings.response_reserve_s
    )
    document = image_service().generate(request, deadline)
    return Response(
        status_code=201,
        content_type=content_types.APPLICATION_JSON,
        body=document.model_dump(mode="json"),
        headers={"Location": f"/v1/images/{document.id}"},
    )


@app.get(
    "/v1/images/<image_id>",
    summary="Get an image",
    description="The image's document with a fresh presigned URL (presigned URLs expire: fetch again to renew).",
    responses={
        200: {"description": "The image.", "content": {"application/json": {"model": ImageDocument}}},
        404: _error_content("No image with this id."),
        422: _error_content("The id is not a valid image id."),
        **COMMON_ERRORS,
    },
    security=API_KEY_SECURITY,
    tags=["images"],
)
@tracer.capture_method
def get_image(image_id: Annotated[str, Path(pattern=IMAGE_ID_PATTERN)]) -> ImageDocument:
    return image_service().get(image_id)


# The OpenAPI models and the Swagger UI cost ~200 ms to import: they load when the docs are asked for, not at
# cold start (so no app.configure_openapi/enable_swagger at import; these two routes do what enable_swagger does).
@lru_cache(maxsize=1)
def openapi_spec() -> str:
    from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn

    return app.get_openapi_json_schema(
        title=API_TITLE,
        version=API_VERSION,
        description=API_DESCRIPTION,
        security_schemes={"apiKey": APIKey(name="x-api-key", in_=APIKeyIn.header)},
    )


@app.get("/openapi.json", include_in_schema=False)
def openapi_json():  # no return annotation: Powertools would try to model the bare Response
    if not http_settings.enable_docs:
        raise RouteNotFoundError()
    return Response(status_code=200, content_type=content_types.APPLICATION_JSON, body=openapi_spec())


@app.get("/docs", include_in_schema=False)
def swagger_ui():
    if not http_settings.enable_docs:
        raise RouteNotFoundError()
    from aws_lambda_powertools.event_handler.openapi import swagger_ui as swagger_ui_assets
    from aws_lambda_powertools.event_handler.openapi.swagger_ui import generate_swagger_html

    assets = pathlib.Path(swagger_ui_assets.__file__).parent
    spec = openapi_spec().replace("</", "<\\/")  # keep "</script>" inside the spec from closing the tag
    body = generate_swagger_html(
        spec,
        (assets / "swagger-ui-bundle.min.js").read_text(encoding="utf-8"),
        (assets / "swagger-ui.min.css").read_text(encoding="utf-8"),
        "",
        None,
    )
    return Response(status_code=200, content_type="text/html", body=body)


# ------------------------------------------------------------------------------------------- error mapping
def _error(status: int, code: str, message: str, details: list[ErrorDetail] | None = None, **headers: str) -> Response:
    request_id = app.current_event.request_context.request_id
    body = ErrorResponse(error=ErrorInfo(code=code, message=message, details=details or [], request_id=request_id))
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=body.model_dump(mode="json"),
        headers=headers or None,
    )


def _location(loc: tuple[Any, ...]) -> tuple[str, str | None]:
    parts = [str(part) for part in loc]
    field = ".".join(parts[1:]) if len(parts) > 1 else None
    return ".".join(parts), field


@app.exception_handler(RequestValidationError)
def handle_validation_error(exc: RequestValidationError) -> Response:
    errors = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        reason = next((error.get("ctx", {}).get("error") for error in errors if error.get("ctx")), None)
        return _error(400, "malformed_json", f"the request body is not valid JSON ({reason or 'decode error'})")
    details = []
    for error in errors:
        location, field = _location(tuple(error.get("loc", ())))
        details.append(
            ErrorDetail(
                location=location,
                field=field,
                message=str(error.get("msg", "invalid")).removeprefix("Value error, "),
                type=error.get("type", "invalid"),
            )
        )
    summary = "; ".join(f"{detail.field or detail.location}: {detail.message}" for detail in details)
    return _error(422, "validation_error", f"the request is invalid: {summary}", details)


@app.exception_handler(ServiceError)
def handle_service_error(exc: ServiceError) -> Response:
    if exc.status >= 500:
        logger.warning("request failed", error_code=exc.code, status=exc.status, reason=exc.message)
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
    details = [ErrorDetail.model_validate(detail) for detail in exc.details]
    return _error(exc.status, exc.code, exc.message, details, **headers)


@app.not_found
def handle_not_found(_: Exception) -> Response:
    return _error(404, "not_found", f"no route for {app.current_event.http_method} {app.current_event.path}")


@app.exception_handler(Exception)
def handle_unexpected(exc: Exception) -> Response:
    logger.exception("unexpected error")
    return _error(500, "internal_error", "an unexpected error occurred; quote the request_id when reporting it")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
