"""HTTP entry point: API Gateway (REST, proxy integration) → Powertools APIGatewayRestResolver.

Thin by design: routing, validation at the edge, and the ONE place where errors become HTTP answers.
The work lives in the shared layer (``imagegen``). No ``from __future__ import annotations`` here:
Powertools reads the route signatures at run time to validate and to build the OpenAPI schema.
"""

import json
import pathlib
import re
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, CORSConfig, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError as RouteNotFoundError
from aws_lambda_powertools.event_handler.middlewares.openapi_validation import OpenAPIRequestValidationMiddleware
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
    ResponseValidationError,
)
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path, Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from imagegen.budget import Deadline
from imagegen.errors import ConfigurationError, ServiceError, UnsupportedMediaTypeError
from imagegen.models import (
    IMAGE_ID_PATTERN,
    JOB_ID_PATTERN,
    ErrorDetail,
    ErrorInfo,
    ErrorResponse,
    ImageDocument,
    ImageRequest,
    ImagesDocument,
    JobDocument,
    JobRequest,
    UploadDocument,
)
from imagegen.observability import tracer_from_env
from imagegen.settings import get_settings, load_http_settings
from imagegen.snapstart import register_hooks

if TYPE_CHECKING:
    from imagegen.jobs import JobService
    from imagegen.service import ImageService

register_hooks()  # SnapStart only (EnableSnapStart): each restored environment re-seeds and rebuilds
logger = Logger()
tracer = tracer_from_env()
metrics = Metrics()

ALLOWED_HEADERS = ["Content-Type", "X-Api-Key", "Idempotency-Key", "Prefer"]
EXPOSED_HEADERS = ["Location", "Retry-After", "Idempotent-Replayed"]
DEPENDENCY_RETRY_AFTER_S = 2  # botocore already retried for ~1-3 s: come back after a short pause


def image_service() -> "ImageService":
    """The service, built on first use (the adapters load then, not at cold start)."""
    from imagegen.wiring import image_service as build_once

    return build_once()


def job_service() -> "JobService":
    from imagegen.wiring import job_service as build_once

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


def _media_type(content_type: str | None) -> str | None:
    """``Application/JSON; charset=utf-8`` → ``application/json``; None when no media type is declared."""
    return (content_type or "").split(";", 1)[0].strip().lower() or None


class JsonBodyValidation(OpenAPIRequestValidationMiddleware):
    """Powertools' request validation, reading JSON bodies only. Left alone, Powertools parses a form or multipart
    body into fields (and fails with a 500 on a multipart type without a boundary) and raises on any other media
    type, ``APPLICATION/JSON`` included; here a body is JSON when its media type is ``application/json`` in any
    case (or undeclared), and anything else is refused with 415."""

    def _get_body(self, app: Any) -> Any:
        media_type = _media_type(app.current_event.headers.get("content-type"))
        if media_type is not None and media_type != content_types.APPLICATION_JSON:
            raise UnsupportedMediaTypeError(f"the request body must be application/json, not {media_type[:100]}")
        try:
            return self._parse_json_data(app)  # a JSONDecodeError comes out as a json_invalid validation error
        except UnicodeDecodeError:
            raise  # handle_undecodable_body
        except ValueError as exc:  # what json.loads raises besides: an integer over Python's 4,300 digits
            reason = str(exc).split(":", 1)[0]
            error = {"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error", "ctx": {"error": reason}}
            raise RequestValidationError([error]) from exc


http_settings = load_http_settings()
cors = _cors(http_settings.cors_allowed_origins)
app = APIGatewayRestResolver(enable_validation=True, cors=cors)
# Powertools keeps its request validation middleware here and puts it first on every validated route.
app._request_validation_middleware = JsonBodyValidation()
API_KEY_SECURITY = [{"apiKey": []}]
API_TITLE = "Flux image service"
API_VERSION = "1.0.0"
API_DESCRIPTION = "Text-to-image generation (Flux Schnell) with durable, private copies of every image."


def _error_content(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"model": ErrorResponse}}}


def _header(description: str, *, required: bool, schema: dict[str, Any] | None = None) -> Any:
    """A response header's documentation (``Any``: Powertools' TypedDict for it lacks OpenAPI's ``required``)."""
    return {"description": description, "required": required, "schema": schema or {"type": "string"}}


RETRY_AFTER = {"Retry-After": _header("Seconds to wait before retrying.", required=False, schema={"type": "integer"})}


def _retry_later(description: str) -> dict[str, Any]:
    return {**_error_content(description), "headers": RETRY_AFTER}


COMMON_ERRORS: dict[int, Any] = {
    403: _error_content("Missing or invalid API key (answered by API Gateway)."),
    429: _error_content("Usage plan throttle or quota exceeded (answered by API Gateway)."),
    500: _error_content("Unexpected error; the body carries the request id."),
}
GATEWAY_TIMEOUT: dict[int, Any] = {
    504: _error_content("No answer within API Gateway's integration timeout (answered by API Gateway)."),
}
BODY_ERRORS: dict[int, Any] = {
    # What API Gateway answers itself for a request body over its 10 MB payload limit.
    413: _error_content("The request body is too large (answered by API Gateway)."),
    415: _error_content("The request body is declared as something else than `application/json`."),
}
GENERATION_ERRORS: dict[int, Any] = {
    400: _error_content("Malformed JSON, or the upstream refused the parameters."),
    422: _error_content(
        "Validation failed: `details` lists every failing field. Or `content_blocked` (when the deployment moderates"
        " content): the prompt (`body.prompt`, never sent upstream) or the generated image (`output.image`, never"
        " stored) was blocked; `details[].categories` names why."
    ),
    502: _error_content("The upstream answered something unusable, refused our key, or pointed at a bad image."),
    503: _retry_later(
        "The upstream, or content moderation (`moderation_unavailable`: nothing unchecked is sent or returned), is"
        " rate limiting or unavailable; see Retry-After."
    ),
    504: _error_content(
        "The upstream did not answer within the request's time budget, or API Gateway's integration timeout passed."
    ),
}


IDEMPOTENCY_KEY_DESCRIPTION = (
    "1-255 printable ASCII characters. "
    "Retrying with the same key (per API key) returns the original answer, marked `Idempotent-Replayed: true`, "
    "and creates nothing new; "
    "the same key with a different body is refused (422 idempotency_key_reused)."
)
# Printable ASCII, as the key store requires; HTTP trims a header value's outer spaces, so none are documented.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"
# On every answer an Idempotency-Key can replay (the POST routes' 201 and 202).
REPLAYED = {
    "Idempotent-Replayed": _header(
        "`true` when this is the stored answer to an earlier request with the same `Idempotency-Key` (nothing was "
        "generated or queued again); absent on a first answer.",
        required=False,
        schema={"type": "string", "enum": ["true"]},
    )
}
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description=IDEMPOTENCY_KEY_DESCRIPTION,
    ),
]
ACCEPTED: dict[int, Any] = {
    202: {
        "description": "The work was queued: follow Location (GET /v1/jobs/{id}).",
        "content": {"application/json": {"model": JobDocument}},
        "headers": {
            "Location": _header(
                "The job: `/v1/jobs/{id}` (behind the stage or base path it was called on).", required=True
            ),
            "Preference-Applied": _header("`respond-async` when `Prefer: respond-async` was honoured.", required=False),
            **REPLAYED,
        },
    },
    409: _error_content("A request with the same Idempotency-Key is still being processed."),
}


def _answer(answer: dict[str, Any]) -> Response:
    return Response(
        status_code=answer["status"],
        content_type=content_types.APPLICATION_JSON,
        body=answer["body"],
        headers=answer.get("headers"),
    )


def _keyed(
    operation: str, idempotency_key: str | None, body: Any, execute: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run ``execute`` once per Idempotency-Key (scoped to the caller's API key), or plainly without one."""
    if idempotency_key is None:
        return execute()
    from imagegen.wiring import idempotent_runner

    identity = app.current_event.request_context.identity
    scope = identity.api_key_id or identity.api_key or "anonymous"
    return idempotent_runner()(
        scope=scope,
        operation=operation,
        key=idempotency_key,
        body=body,
        execute=execute,
        lambda_context=app.lambda_context,
    )


def _public_link(path: str) -> str:
    """``path`` as the caller reaches it: behind the stage (``/prod``) or a custom domain's base path, which
    ``requestContext.path`` carries in front of the resource path."""
    event = app.current_event
    public = event.request_context.path or event.path
    prefix = public[: -len(event.path)] if event.path and public.endswith(event.path) else ""
    return prefix + path


def _accepted(document: JobDocument) -> dict[str, Any]:
    return {
        "status": 202,
        "body": document.model_dump(mode="json"),
        "headers": {"Location": _public_link(f"/v1/jobs/{document.id}")},
    }


def _wants_async(prefer: str | None) -> bool:
    """RFC 7240: ``Prefer: respond-async`` (possibly among other preferences)."""
    return prefer is not None and any(
        token.split("=", 1)[0].strip().lower() == "respond-async" for token in prefer.replace(";", ",").split(",")
    )


@app.post(
    "/v1/images",
    summary="Generate an image",
    description=(
        "Generates one image (or `num_images`, in parallel) synchronously and answers with its document and a "
        "presigned URL (or the bytes inline with `response_format: b64_json`). "
        "With `Prefer: respond-async` the request is queued as a job instead (202), one item per image."
    ),
    responses={
        201: {
            "description": (
                "The image was generated and stored (`ImageDocument`); with `num_images` over 1, the images "
                "(`ImagesDocument`: the successes, and the failures when only some failed)."
            ),
            "content": {"application/json": {"model": ImageDocument | ImagesDocument}},
            "headers": {"Location": _header("The (first) image: `/v1/images/{id}`.", required=True), **REPLAYED},
        },
        **ACCEPTED,
        **GENERATION_ERRORS,
        **BODY_ERRORS,
        **COMMON_ERRORS,
    },
    security=API_KEY_SECURITY,
    tags=["images"],
)
@tracer.capture_method
def create_image(
    request: Annotated[ImageRequest, Body()],
    prefer: Annotated[
        str | None, Header(alias="Prefer", description="`respond-async` queues the image (202) instead of waiting.")
    ] = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response[ImageDocument | ImagesDocument | JobDocument]:
    if _wants_async(prefer):
        from imagegen.inline import job_item_or_422  # only when asked: nothing more loads at cold start

        job_item_or_422(request)

        def enqueue() -> dict[str, Any]:
            answer = _accepted(job_service().submit(JobRequest(items=[request])))
            answer["headers"]["Preference-Applied"] = "respond-async"
            return answer

        return _answer(_keyed("POST /v1/images async", idempotency_key, request.model_dump(mode="json"), enqueue))

    def generate() -> dict[str, Any]:
        settings = get_settings()
        deadline = Deadline.from_context(
            app.lambda_context, cap_s=settings.api_budget_s, reserve_s=settings.response_reserve_s
        )
        document = image_service().generate(request, deadline)
        first = document.images[0] if isinstance(document, ImagesDocument) else document
        return {
            "status": 201,
            "body": document.model_dump(mode="json"),
            "headers": {"Location": _public_link(f"/v1/images/{first.id}")},
        }

    answer = _keyed("POST /v1/images", idempotency_key, request.model_dump(mode="json"), generate)
    if request.response_format == "b64_json":
        from imagegen.inline import inline_images

        # After the idempotency layer: the stored answer holds URLs only (an inline body would pass DynamoDB's
        # 400 KB item), so a first answer and a replay alike read the bytes from the bucket here.
        answer = inline_images(image_service(), answer)
    return _answer(answer)


@app.post(
    "/v1/uploads",
    summary="Upload a large job's items",
    description=(
        "Answers a presigned S3 PUT URL for a JSONL file: one `POST /v1/images` body per line, blank lines "
        "ignored, at most `max_bytes` and `max_lines`. PUT the file there, then `POST /v1/jobs` with "
        "`items_upload_id`. The file is deleted a day after it was uploaded."
    ),
    responses={
        201: {"description": "Where to PUT the file.", "content": {"application/json": {"model": UploadDocument}}},
        # Documented with the service's error shape (Powertools would list its own): the route takes no input.
        422: _error_content("Never answered in practice: the route takes no body or parameters."),
        **GATEWAY_TIMEOUT,
        **COMMON_ERRORS,
    },
    security=API_KEY_SECURITY,
    tags=["jobs"],
)
@tracer.capture_method
def create_upload() -> Response[UploadDocument]:
    document = job_service().create_upload()
    return Response(status_code=201, content_type=content_types.APPLICATION_JSON, body=document.model_dump(mode="json"))


@app.post(
    "/v1/jobs",
    summary="Submit a bulk job",
    description=(
        "Queues 1-1,000 image requests (`items`), or the lines of an uploaded file (`items_upload_id`, up to "
        "100,000); each is generated by the worker. Answers at once, whatever the size: the items are fanned out "
        "on the queue side. Follow Location for progress."
    ),
    responses={
        **ACCEPTED,
        400: _error_content("Malformed JSON."),
        413: _error_content(
            "The request body is too large (answered by API Gateway), or the uploaded file is over `max_bytes`."
        ),
        415: BODY_ERRORS[415],
        422: _error_content(
            "Validation failed: `details` lists every failing field (items.N.field); an upload that is missing, "
            "expired, empty or over `max_lines` names `items_upload_id`."
        ),
        503: _retry_later("The jobs queue is unavailable; nothing was enqueued."),
        **GATEWAY_TIMEOUT,
        **COMMON_ERRORS,
    },
    security=API_KEY_SECURITY,
    tags=["jobs"],
)
@tracer.capture_method
def create_job(
    request: Annotated[JobRequest, Body()],
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response[JobDocument]:
    return _answer(
        _keyed(
            "POST /v1/jobs",
            idempotency_key,
            request.model_dump(mode="json"),
            lambda: _accepted(job_service().submit(request)),
        )
    )


@app.get(
    "/v1/jobs/<job_id>",
    summary="Get a job",
    description="Status, counts and a page of items (each with its image and a fresh URL, or its error).",
    responses={
        200: {"description": "The job.", "content": {"application/json": {"model": JobDocument}}},
        404: _error_content("No job with this id."),
        422: _error_content("The id, cursor or limit is invalid."),
        **GATEWAY_TIMEOUT,
        **COMMON_ERRORS,
    },
    security=API_KEY_SECURITY,
    tags=["jobs"],
)
@tracer.capture_method
def get_job(
    job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN)],
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Items per page")] = 100,
) -> JobDocument:
    return job_service().get(job_id, cursor=cursor, limit=limit)


@app.delete(
    "/v1/jobs/<job_id>",
    summary="Cancel a job",
    description=(
        "Answers at once, with the job `canceled`: items not yet started are never sent upstream and end "
        "`canceled` shortly after (the worker settles them); running items finish."
    ),
    responses={
        200: {"description": "The job after cancelation.", "content": {"application/json": {"model": JobDocument}}},
        404: _error_content("No job with this id."),
        422: _error_content("The id is invalid."),
        **GATEWAY_TIMEOUT,
        **COMMON_ERRORS,
    },
    security=API_KEY_SECURITY,
    tags=["jobs"],
)
@tracer.capture_method
def cancel_job(job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN)]) -> JobDocument:
    return job_service().cancel(job_id)


@app.get(
    "/v1/images/<image_id>",
    summary="Get an image",
    description="The image's document with a fresh presigned URL (presigned URLs expire: fetch again to renew).",
    responses={
        200: {"description": "The image.", "content": {"application/json": {"model": ImageDocument}}},
        404: _error_content("No image with this id."),
        422: _error_content("The id is not a valid image id."),
        **GATEWAY_TIMEOUT,
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
def _openapi_document() -> dict[str, Any]:
    from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn

    document = json.loads(
        app.get_openapi_json_schema(
            title=API_TITLE,
            version=API_VERSION,
            description=API_DESCRIPTION,
            security_schemes={"apiKey": APIKey(name="x-api-key", in_=APIKeyIn.header)},
        )
    )
    return _without_unreferenced_schemas(document)


def _without_unreferenced_schemas(document: dict[str, Any]) -> dict[str, Any]:
    """Powertools lists its own validation-error schemas (``HTTPValidationError``…) even when every route
    documents its 422 with ours; a schema no operation can return is noise in a client generator."""
    schemas = document.get("components", {}).get("schemas", {})

    def referenced(node: Any) -> list[str]:
        return re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(node))

    used: set[str] = set()
    pending = referenced({key: value for key, value in document.items() if key != "components"})
    while pending:
        name = pending.pop()
        if name not in used and name in schemas:
            used.add(name)
            pending.extend(referenced(schemas[name]))
    document["components"]["schemas"] = {name: schema for name, schema in schemas.items() if name in used}
    return document


def openapi_spec(servers: list[dict[str, Any]] | None = None) -> str:
    """The OpenAPI document with ``servers`` (default: the caller's own stage or base path)."""
    if servers is None:
        servers = [{"url": _public_link("") or "/", "description": "This API, where this document was fetched"}]
    return json.dumps({**_openapi_document(), "servers": servers}, indent=2)


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


# The web console (EnableConsole): a static page, no API key (it asks for one). Not in the OpenAPI document: it is
# no part of the API's contract, like /docs.
@app.get("/console", include_in_schema=False)  # /console/ too: Powertools matches either
def console_page():
    return _console_answer("index.html")


@app.get("/console/<name>", include_in_schema=False)
def console_asset(name: str):
    return _console_answer(name)


def _console_answer(name: str) -> Response:
    from console_assets import SECURITY_HEADERS, console_file

    found = console_file(name, _public_link("")) if http_settings.enable_console else None
    if found is None:
        raise RouteNotFoundError()
    content_type, body = found
    return Response(status_code=200, content_type=content_type, body=body, headers=dict(SECURITY_HEADERS))


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


def _error_location(loc: tuple[Any, ...]) -> tuple[str, str | None]:
    parts = [str(part) for part in loc]
    field = ".".join(parts[1:]) if len(parts) > 1 else None
    return ".".join(parts), field


@app.exception_handler(ResponseValidationError)
def handle_response_validation_error(exc: ResponseValidationError) -> Response:
    """Our answer broke our own schema: a bug on our side, never the caller's 422."""
    logger.error("response failed validation", errors=exc.errors())
    metrics.add_metric(name="InternalErrors", unit=MetricUnit.Count, value=1)
    return _error(500, "internal_error", "an unexpected error occurred; quote the request_id when reporting it")


@app.exception_handler(RequestValidationError)
def handle_validation_error(exc: RequestValidationError) -> Response:
    errors = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        reason = next((error.get("ctx", {}).get("error") for error in errors if error.get("ctx")), None)
        return _error(400, "malformed_json", f"the request body is not valid JSON ({reason or 'decode error'})")
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
    return _error(422, "validation_error", f"the request is invalid: {summary}", details)


@app.exception_handler(RequestUnsupportedContentType)
def handle_unsupported_content_type(exc: RequestUnsupportedContentType) -> Response:
    """Powertools' own refusal of a media type (JsonBodyValidation refuses them first): the same 415."""
    return handle_service_error(UnsupportedMediaTypeError("the request body must be application/json"))


@app.exception_handler([RecursionError, UnicodeDecodeError])
def handle_undecodable_body(exc: Exception) -> Response:
    """json.loads recurses on nesting ("[[[[…"), and a body may not be UTF-8: both are the caller's bad JSON."""
    return _error(400, "malformed_json", "the request body is not valid JSON (too deeply nested or not UTF-8)")


@app.exception_handler(ConfigurationError)
def handle_configuration_error(exc: ConfigurationError) -> Response:
    """A deployment problem: the operator gets the reason and its cause in the log, the caller a request id."""
    logger.error("configuration error", reason=exc.message, exc_info=exc)
    metrics.add_metric(name="InternalErrors", unit=MetricUnit.Count, value=1)
    return _error(500, "internal_error", "an unexpected error occurred; quote the request_id when reporting it")


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
    from imagegen.adapters.aws_errors import aws_unavailable

    if aws_unavailable(exc):  # DynamoDB, S3 or SQS slow or throttled after botocore's own retries: not a bug
        logger.warning("an AWS service was unavailable", error=type(exc).__name__)
        metrics.add_metric(name="DependencyUnavailable", unit=MetricUnit.Count, value=1)
        message = "a service the API stores jobs and images in is slow or unavailable; retry after Retry-After seconds"
        return _error(503, "service_unavailable", message, **{"Retry-After": str(DEPENDENCY_RETRY_AFTER_S)})
    logger.exception("unexpected error")
    metrics.add_metric(name="InternalErrors", unit=MetricUnit.Count, value=1)
    return _error(500, "internal_error", "an unexpected error occurred; quote the request_id when reporting it")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return _varies_by_origin(app.resolve(event, context))


def _varies_by_origin(response: dict[str, Any]) -> dict[str, Any]:
    """With CORS, an answer depends on the caller's Origin (echoed in Access-Control-Allow-Origin, or left out for
    an origin not allowed): ``Vary: Origin`` keeps a shared cache from serving one origin's answer to another."""
    if cors is None:
        return response
    headers = response.setdefault("multiValueHeaders", {})
    vary = [value for value in headers.pop("Vary", []) if value.strip().lower() != "origin"]
    headers["Vary"] = [*vary, "Origin"]
    return response
