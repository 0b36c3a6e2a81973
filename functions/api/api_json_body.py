"""How the routes that take a body read it: JSON only, whatever the case of its media type, with a clear 4xx for
anything else. ``JSON_BODY`` is what such a route passes to its decorator.

Powertools' request validation (``enable_validation``) reads a body by its media type, case-sensitively: left
alone it parses a form or multipart body into fields (and fails with a 500 on a multipart type without a
boundary), refuses ``APPLICATION/JSON``, and lets a ``ValueError`` of ``json.loads`` other than a decode error
(an integer over Python's 4,300 digits) escape as a 500. Its validation middleware always runs first, before any
``app.use`` or route middleware, and has no public hook for reading the body (checked against 3.37.0). So the
body routes turn Powertools' own validation off (the route's public ``enable_validation=False``) and put the same
two middlewares back through the route's public ``middlewares=``, in the order Powertools uses: a subclass of its
request validation that overrides how the body is read (``_get_body``, the one non-public name used), then its
response validation. ``tests/unit/test_api_json_body.py`` fails if a Powertools release stops calling
``_get_body`` or changes the order, so an upgrade cannot silently bring the 500s and the 422-for-a-form back.

Here, not in the ``imagegen`` layer: only the API reads HTTP bodies. Not here: the models the body is validated
against (``imagegen.models``), how a validation error becomes a 400 or 422 (``api_errors``).
"""

import json
from typing import Any

from aws_lambda_powertools.event_handler import content_types
from aws_lambda_powertools.event_handler.middlewares.openapi_validation import (
    OpenAPIRequestValidationMiddleware,
    OpenAPIResponseValidationMiddleware,
)
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from imagegen.errors import UnsupportedMediaTypeError


def media_type(content_type: str | None) -> str | None:
    """``Application/JSON; charset=utf-8`` → ``application/json``; None when no media type is declared."""
    return (content_type or "").split(";", 1)[0].strip().lower() or None


class JsonBodyValidation(OpenAPIRequestValidationMiddleware):
    """Powertools' request validation, reading JSON bodies only: a body is JSON when its media type is
    ``application/json`` in any case (or undeclared), and anything else is refused with 415."""

    def _get_body(self, app: Any) -> Any:
        declared = media_type(app.current_event.headers.get("content-type"))
        if declared is not None and declared != content_types.APPLICATION_JSON:
            raise UnsupportedMediaTypeError(f"the request body must be application/json, not {declared[:100]}")
        try:
            return app.current_event.json_body
        except UnicodeDecodeError:
            raise  # api_errors.handle_undecodable_body: a 400
        except ValueError as exc:  # JSONDecodeError, or what json.loads raises besides (an integer too long)
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).split(":", 1)[0]
            error = {"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error", "ctx": {"error": reason}}
            raise RequestValidationError([error]) from exc


# A route that takes a JSON body: Powertools' validation pair, with the body read as above. One instance of each
# for every such route (they keep no state between requests).
JSON_BODY: dict[str, Any] = {
    "enable_validation": False,
    "middlewares": [JsonBodyValidation(), OpenAPIResponseValidationMiddleware()],
}
