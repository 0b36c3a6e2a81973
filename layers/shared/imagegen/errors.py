"""Domain errors. Each carries its HTTP status and a stable machine-readable ``code``.

Adapters translate library errors into these (``raise ... from exc``); the API maps them to responses in one
place (``functions/api/api_errors.py``) by type, never by message text. Messages are safe to show to callers:
they never contain the subscription key, request headers or internal details.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base class: an error the caller can understand."""

    status = 500
    code = "internal_error"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        retry_after: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.retry_after = retry_after
        if code is not None:
            self.code = code


class NotFoundError(ServiceError):
    status = 404
    code = "not_found"


class ConfigurationError(ServiceError):
    """The deployment is misconfigured (missing environment variable, unreadable secret)."""

    status = 500
    code = "configuration_error"


class UpstreamError(ServiceError):
    """Base for failures of the Flux Schnell API."""

    status = 502
    code = "upstream_error"


class UpstreamRejectedError(UpstreamError):
    """The upstream refused the parameters (its 400). Permanent: retrying the same request will fail again."""

    status = 400
    code = "upstream_rejected"


class UpstreamUnavailableError(UpstreamError):
    """Rate limited, 5xx or unreachable after the bounded retries. Retry later (see ``retry_after``)."""

    status = 503
    code = "upstream_unavailable"
    retryable = True


class UpstreamTimeoutError(UpstreamError):
    """The upstream did not answer within the request's time budget."""

    status = 504
    code = "upstream_timeout"
    retryable = True


class UpstreamAuthError(UpstreamError):
    """The subscription key was refused, even after re-reading the secret."""

    status = 502
    code = "upstream_auth"


class UpstreamBadResponseError(UpstreamError):
    """A 200 without a usable ``output`` (no output, not JSON, not a URL) or an oversized answer. Another call
    might succeed, but each is paid: a job item retries it once, never more (``Item.bad_outputs``)."""

    status = 502
    code = "upstream_bad_response"
    retryable = True


class ImageRejectedError(UpstreamError):
    """A paid 200 whose output we refuse: its URL (scheme, credentials, host), address, type, size or download
    (truncated, a 4xx/5xx from the image host). Permanent: asking again would only pay for another refusal."""

    status = 502
    code = "image_rejected"


class InvalidRequestError(ServiceError):
    """A request the edge validation could not judge alone (a cursor, a header), named by field."""

    status = 422
    code = "validation_error"

    def __init__(self, message: str, *, field: str, location: str = "query") -> None:
        super().__init__(
            f"the request is invalid: {field}: {message}",
            details=[{"location": f"{location}.{field}", "field": field, "message": message, "type": "value_error"}],
        )


class ConflictError(ServiceError):
    status = 409
    code = "conflict"


class EnqueueError(ServiceError):
    """The queue refused messages even after retries."""

    status = 503
    code = "enqueue_failed"
    retryable = True


class UnsupportedMediaTypeError(ServiceError):
    """A request body declared as anything but JSON."""

    status = 415
    code = "unsupported_media_type"


class PayloadTooLargeError(ServiceError):
    """An uploaded file over the size a job accepts."""

    status = 413
    code = "payload_too_large"


class ContentBlockedError(ServiceError):
    """Moderation refused the prompt (checked before the upstream call: nothing paid) or the generated image
    (checked before it is stored: no object, no URL). Permanent: the same request would be refused again.
    ``target`` is ``prompt`` or ``image``; ``categories`` are the moderation service's own names (``SEXUAL``...)."""

    status = 422
    code = "content_blocked"

    image_id: str | None = None  # set by the service: the id the image would have had

    def __init__(self, target: str, categories: list[str]) -> None:
        self.target = target
        self.categories = sorted(set(categories))
        named = ", ".join(self.categories) or "unspecified"
        location, field, what = (
            ("body.prompt", "prompt", "the prompt")
            if target == "prompt"
            else ("output.image", "image", "the generated image")
        )
        super().__init__(
            f"{what} was blocked by content moderation ({named})",
            details=[
                {
                    "location": location,
                    "field": field,
                    "message": f"blocked by content moderation: {named}",
                    "type": "content_blocked",
                    "categories": self.categories,
                }
            ],
        )


class ModerationUnavailableError(ServiceError):
    """The moderation service is throttling, down or unreachable. The service fails closed: nothing is generated
    (prompt check) or handed out (image check) unchecked. Retry later (see ``retry_after``)."""

    status = 503
    code = "moderation_unavailable"
    retryable = True


class FieldsInvalidError(ServiceError):
    """A request whose fields are valid alone but not together for what it asks (e.g. options a queued image
    cannot honour), every field named in ``details``."""

    status = 422
    code = "validation_error"

    def __init__(self, problems: list[tuple[str, str]], *, location: str = "body") -> None:
        summary = "; ".join(f"{field}: {message}" for field, message in problems)
        super().__init__(
            f"the request is invalid: {summary}",
            details=[
                {"location": f"{location}.{field}", "field": field, "message": message, "type": "conflicting_fields"}
                for field, message in problems
            ],
        )


class ResponseTooLargeError(FieldsInvalidError):
    """The images asked for inline (``response_format: b64_json``) would pass Lambda's 6 MB response limit."""

    code = "response_too_large"
