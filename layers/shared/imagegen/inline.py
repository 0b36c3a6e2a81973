"""``response_format: b64_json`` and the other per-request options the edge checks beyond the model.

The inline bytes are added to the answer AFTER the Idempotency-Key layer: the answer it stores holds URLs only
(base64 images would pass DynamoDB's 400 KB item), and a replay reads the same objects from the bucket again.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

from pydantic import ValidationError

from imagegen.errors import FieldsInvalidError, ResponseTooLargeError
from imagegen.models import MAX_INLINE_B64, ImageRequest, job_item


class InlineSource(Protocol):
    def inline(self, image: dict[str, Any]) -> int: ...


def inline_images(service: InlineSource, answer: dict[str, Any]) -> dict[str, Any]:
    """A copy of a 201 answer with every image's bytes inline (``image.b64_json``), or a 422 when they would pass
    Lambda's response limit. Another status is returned as it is."""
    if answer.get("status") != 201:
        return answer
    answer = copy.deepcopy(answer)
    body = answer["body"]
    images = body.get("images", [body])
    total = 0
    for image in images:
        total += service.inline(image)
        if total > MAX_INLINE_B64:
            ids = ", ".join(document["id"] for document in images)
            raise ResponseTooLargeError(
                [
                    (
                        "response_format",
                        f"the stored images ({ids}) are too large to answer inline within Lambda's 6 MB response "
                        "limit: GET them by id (response_format url), or ask for output_format jpeg or webp",
                    )
                ]
            )
    return answer


def job_item_or_422(request: ImageRequest) -> ImageRequest:
    """``request`` when it can be queued as a job (``num_images`` N making N items), else a 422 naming each option
    a queued image cannot honour (``b64_json``)."""
    try:
        return job_item(request)
    except ValidationError as exc:
        problems = [(".".join(str(part) for part in error["loc"]), error["msg"]) for error in exc.errors()]
        raise FieldsInvalidError(problems) from None
