"""``POST /v1/images`` (generate, or queue with ``Prefer: respond-async``) and ``GET /v1/images/{id}``.

Not here: how an image is generated, stored and inlined (``imagegen.service``, ``imagegen.inline``), the
documentation of the answers (``api_openapi``), the error answers (``api_errors``).
"""

from typing import Annotated, Any

import api_openapi as doc
from api_json_body import JSON_BODY
from api_support import (
    IdempotencyKeyHeader,
    accepted,
    answer,
    image_service,
    job_service,
    keyed,
    public_link,
    tracer,
)
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path
from imagegen.budget import Deadline
from imagegen.models import IMAGE_ID_PATTERN, ImageDocument, ImageRequest, ImagesDocument, JobDocument, JobRequest
from imagegen.settings import get_settings

router = Router()


def wants_async(prefer: str | None) -> bool:
    """RFC 7240: ``Prefer: respond-async`` (possibly among other preferences)."""
    return prefer is not None and any(
        token.split("=", 1)[0].strip().lower() == "respond-async" for token in prefer.replace(";", ",").split(",")
    )


@router.post(
    "/v1/images",
    summary="Generate an image",
    description=(
        "Generates one image (or `num_images`, in parallel) synchronously and answers with its document and a "
        "presigned URL (or the bytes inline with `response_format: b64_json`). "
        "With `Prefer: respond-async` the request is queued as a job instead (202), one item per image."
    ),
    responses=doc.CREATE_IMAGE,
    security=doc.API_KEY_SECURITY,
    tags=["images"],
    **JSON_BODY,
)
@tracer.capture_method
def create_image(
    request: Annotated[ImageRequest, Body()],
    prefer: Annotated[
        str | None, Header(alias="Prefer", description="`respond-async` queues the image (202) instead of waiting.")
    ] = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response[ImageDocument | ImagesDocument | JobDocument]:
    body = request.model_dump(mode="json")
    if wants_async(prefer):
        from imagegen.inline import job_item_or_422  # only when asked: nothing more loads at cold start

        job_item_or_422(request)

        def enqueue() -> dict[str, Any]:
            queued = accepted(router, job_service().submit(JobRequest(items=[request])))
            queued["headers"]["Preference-Applied"] = "respond-async"
            return queued

        return answer(keyed(router, "POST /v1/images async", idempotency_key, body, enqueue))

    def generate() -> dict[str, Any]:
        settings = get_settings()
        deadline = Deadline.from_context(
            router.lambda_context, cap_s=settings.api_budget_s, reserve_s=settings.response_reserve_s
        )
        document = image_service().generate(request, deadline)
        first = document.images[0] if isinstance(document, ImagesDocument) else document
        return {
            "status": 201,
            "body": document.model_dump(mode="json"),
            "headers": {"Location": public_link(router, f"/v1/images/{first.id}")},
        }

    outcome = keyed(router, "POST /v1/images", idempotency_key, body, generate)
    if request.response_format == "b64_json":
        from imagegen.inline import inline_images

        # After the idempotency layer: the stored answer holds URLs only (an inline body would pass DynamoDB's
        # 400 KB item), so a first answer and a replay alike read the bytes from the bucket here.
        outcome = inline_images(image_service(), outcome)
    return answer(outcome)


@router.get(
    "/v1/images/<image_id>",
    summary="Get an image",
    description="The image's document with a fresh presigned URL (presigned URLs expire: fetch again to renew).",
    responses=doc.GET_IMAGE,
    security=doc.API_KEY_SECURITY,
    tags=["images"],
)
@tracer.capture_method
def get_image(image_id: Annotated[str, Path(pattern=IMAGE_ID_PATTERN)]) -> ImageDocument:
    return image_service().get(image_id)
