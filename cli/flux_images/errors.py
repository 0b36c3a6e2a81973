"""The client's exceptions. Every one of them is a ``FluxImagesError``; none ever carries the API key."""

from __future__ import annotations

from typing import Any


class FluxImagesError(Exception):
    """Base of every error the client raises."""


class ApiError(FluxImagesError):
    """A non-2xx answer of the API, in its ``{"error": {"code", "message", "details", "request_id"}}`` shape.

    ``note`` says what the client did about it (``gave up after 6 attempts``, ``the server asks to retry in 3600 s;
    try again later``); ``error_type`` is API Gateway's ``x-amzn-ErrorType`` when the gateway answered itself.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        error_type: str | None = None,
        context: str = "",
        note: str = "",
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.request_id = request_id
        self.retry_after = retry_after
        self.error_type = error_type
        self.context = context
        self.note = note
        super().__init__(str(self))

    def __str__(self) -> str:
        head = f"{self.context}: " if self.context else ""
        text = f"{head}HTTP {self.status} {self.code}: {self.message}"
        if self.note:
            text += f" ({self.note})"
        if self.request_id:
            text += f" [request id {self.request_id}]"
        return text

    @property
    def no_such_route(self) -> bool:
        """The deployment has no such route: the API's 404, or API Gateway's 403 for a resource it does not know
        (``x-amzn-ErrorType: MissingAuthenticationTokenException``), told apart by type, not by message."""
        return self.status == 404 or self.error_type == "MissingAuthenticationTokenException"


class NetworkError(FluxImagesError):
    """The API could not be reached, after the bounded retries. The text names the base URL, never a path's query."""

    def __init__(self, message: str, *, reason: str = "", attempts: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.attempts = attempts


class WaitTimeout(FluxImagesError):
    """``Job.wait(timeout=...)`` ran out before the job finished; ``state`` is the last one seen."""

    def __init__(self, message: str, state: Any) -> None:
        super().__init__(message)
        self.state = state


class DownloadError(FluxImagesError):
    """Some images of ``Job.download`` could not be fetched or verified; ``files`` holds those that were."""

    def __init__(self, message: str, *, files: list[Any], failures: dict[int, str]) -> None:
        super().__init__(message)
        self.files = files
        self.failures = failures


class WebhookVerificationError(FluxImagesError):
    """A webhook delivery whose signature, timestamp or body is not acceptable."""
