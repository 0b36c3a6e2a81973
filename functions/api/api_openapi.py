"""The OpenAPI documentation of the API's answers: each operation's ``responses=`` (statuses, bodies, headers),
the error statuses operations share, and the document's title and security scheme.

Only documentation: nothing here runs when a request is answered (the statuses themselves come from the routes
and from ``api_errors``; a test checks that ``docs/openapi.json`` matches what the routes and these declare).
Here, not in the ``imagegen`` layer: only the API function serves the document. Not here: the routes and their
parameters (``routes/``), the serving of ``/openapi.json`` and ``/docs`` (``routes/docs.py``), the models the
bodies are made of (``imagegen.models``).
"""

from typing import Any

from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from imagegen.models import ErrorResponse, ImageDocument, ImagesDocument, JobDocument, UploadDocument

API_TITLE = "Flux image service"
API_VERSION = "1.0.0"
API_DESCRIPTION = "Text-to-image generation (Flux Schnell) with durable, private copies of every image."
API_KEY_SECURITY: list[dict[str, list[str]]] = [{"apiKey": []}]

Responses = dict[int, OpenAPIResponse]


def _error_content(description: str) -> OpenAPIResponse:
    return {"description": description, "content": {"application/json": {"model": ErrorResponse}}}


def _header(description: str, *, required: bool, schema: dict[str, Any] | None = None) -> Any:
    """A response header's documentation (``Any``: Powertools' TypedDict for it lacks OpenAPI's ``required``)."""
    return {"description": description, "required": required, "schema": schema or {"type": "string"}}


RETRY_AFTER = {"Retry-After": _header("Seconds to wait before retrying.", required=False, schema={"type": "integer"})}


def _retry_later(description: str) -> OpenAPIResponse:
    return {**_error_content(description), "headers": RETRY_AFTER}


# ------------------------------------------------------------------------------------- shared by operations
COMMON_ERRORS: Responses = {
    403: _error_content("Missing or invalid API key (answered by API Gateway)."),
    429: _error_content("Usage plan throttle or quota exceeded (answered by API Gateway)."),
    500: _error_content("Unexpected error; the body carries the request id."),
}
GATEWAY_TIMEOUT: Responses = {
    504: _error_content("No answer within API Gateway's integration timeout (answered by API Gateway)."),
}
BODY_ERRORS: Responses = {
    # What API Gateway answers itself for a request body over its 10 MB payload limit.
    413: _error_content("The request body is too large (answered by API Gateway)."),
    415: _error_content("The request body is declared as something else than `application/json`."),
}
GENERATION_ERRORS: Responses = {
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
# On every answer an Idempotency-Key can replay (the POST routes' 201 and 202).
REPLAYED = {
    "Idempotent-Replayed": _header(
        "`true` when this is the stored answer to an earlier request with the same `Idempotency-Key` (nothing was "
        "generated or queued again); absent on a first answer.",
        required=False,
        schema={"type": "string", "enum": ["true"]},
    )
}
ACCEPTED: Responses = {
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

# ------------------------------------------------------------------------------------------ per operation
CREATE_IMAGE: Responses = {
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
}
GET_IMAGE: Responses = {
    200: {"description": "The image.", "content": {"application/json": {"model": ImageDocument}}},
    404: _error_content("No image with this id."),
    422: _error_content("The id is not a valid image id."),
    **GATEWAY_TIMEOUT,
    **COMMON_ERRORS,
}
CREATE_UPLOAD: Responses = {
    201: {"description": "Where to PUT the file.", "content": {"application/json": {"model": UploadDocument}}},
    # Documented with the service's error shape (Powertools would list its own): the route takes no input.
    422: _error_content("Never answered in practice: the route takes no body or parameters."),
    **GATEWAY_TIMEOUT,
    **COMMON_ERRORS,
}
CREATE_JOB: Responses = {
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
}
GET_JOB: Responses = {
    200: {"description": "The job.", "content": {"application/json": {"model": JobDocument}}},
    404: _error_content("No job with this id."),
    422: _error_content("The id, cursor or limit is invalid."),
    **GATEWAY_TIMEOUT,
    **COMMON_ERRORS,
}
CANCEL_JOB: Responses = {
    200: {"description": "The job after cancelation.", "content": {"application/json": {"model": JobDocument}}},
    404: _error_content("No job with this id."),
    422: _error_content("The id is invalid."),
    **GATEWAY_TIMEOUT,
    **COMMON_ERRORS,
}
