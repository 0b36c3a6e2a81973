"""The CLI's side of the API: its errors (with exit codes and the text users read) over ``flux_images.Client``.

Every request of the CLI to the API goes through ``flux_images.Client`` (docs/client.md): the ``x-api-key``
header, the error shape, bounded retries honouring ``Retry-After``, no redirects followed, the key in no message.
``ApiClient`` keeps the CLI's dict-shaped view of the documents and turns the client's exceptions into the CLI's,
which carry an exit code and render for people.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import flux_images
from flux_images.client import DEFAULT_TIMEOUT, PAGE_LIMIT, is_loopback, printable, user_agent
from flux_images.retry import Attempts, RetryPolicy, describe_exception, parse_retry_after

__all__ = [
    "DEFAULT_TIMEOUT",
    "PAGE_LIMIT",
    "ApiClient",
    "ApiError",
    "CliError",
    "NetworkError",
    "RetryPolicy",
    "UsageError",
    "check_api_url",
    "describe_exception",
    "dumps_compact",
    "is_loopback",
    "parse_retry_after",
    "user_agent",
]


def _sleep(seconds: float) -> None:
    """Every wait of the CLI goes through here (tests replace it to record the waits)."""
    time.sleep(seconds)


class CliError(Exception):
    """An error that ends the command with ``exit_code`` and a message for the user."""

    exit_code = 3

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def render(self) -> str:
        return self.message


class UsageError(CliError):
    """Bad command line, configuration or input file: exit code 2."""

    exit_code = 2


class NetworkError(CliError):
    """The API could not be reached (after the bounded retries): exit code 3."""


class ApiError(CliError, flux_images.ApiError):
    """A non-2xx answer of the API: the client's ``flux_images.ApiError`` (its fields, ``no_such_route``) as a
    ``CliError`` (exit code 3, ``render`` for people). One class, not a copy of the client's fields."""

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
        flux_images.ApiError.__init__(
            self,
            status,
            code,
            message,
            details=details,
            request_id=request_id,
            retry_after=retry_after,
            error_type=error_type,
            context=context,
            note=note,
        )
        # Filled in by callers that can point at the input behind a detail (``body.items.3`` → ``prompts.csv:5``).
        self.detail_labels: Callable[[dict[str, Any]], str | None] | None = None

    @classmethod
    def from_client(cls, exc: flux_images.ApiError) -> ApiError:
        """The CLI's error for the client's: the same fields, what the client did about it in the message."""
        message = f"{exc.message} ({exc.note})" if exc.note else exc.message
        return cls(
            exc.status,
            exc.code,
            message,
            details=exc.details,
            request_id=exc.request_id,
            retry_after=exc.retry_after,
            error_type=exc.error_type,
            context=exc.context,
        )

    def render(self) -> str:
        head = f"{self.context}: " if self.context else ""
        lines = [f"{head}HTTP {self.status} {self.code}: {self.message}"]
        for detail in self.details[:20]:
            where = detail.get("location") or detail.get("field") or "?"
            label = self.detail_labels(detail) if self.detail_labels else None
            suffix = f" ({label})" if label else ""
            lines.append(f"  - {where}{suffix}: {_printable(str(detail.get('message', '')))}")
        if len(self.details) > 20:
            lines.append(f"  … and {len(self.details) - 20} more")
        if self.status == 403 and self.code in {"invalid_api_key", "http_403"}:
            lines.append("  check --api-key / FLUX_IMAGES_API_KEY and that --api-url points at the right stage")
        if self.request_id:
            lines.append(f"  request id: {self.request_id}")
        return "\n".join(lines)


def attempts(policy: RetryPolicy) -> Attempts:
    """The attempts of one call of the CLI's own (presigned URLs), every wait through ``_sleep``."""
    return Attempts(policy, sleep=lambda seconds: _sleep(seconds))


def _printable(text: str, limit: int = 500) -> str:
    return printable(text, limit)


def check_api_url(url: str) -> str:
    """The API base URL without a trailing slash; a usage error when it is not an http(s) URL."""
    try:
        return flux_images.client.check_base_url(url)
    except ValueError as exc:
        raise UsageError("--api-url" + str(exc).removeprefix("base_url")) from None


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """The client's exceptions as the CLI's."""
    try:
        yield
    except ApiError:
        raise  # already the CLI's (it is a flux_images.ApiError too)
    except flux_images.ApiError as exc:
        raise ApiError.from_client(exc) from None
    except flux_images.NetworkError as exc:
        raise NetworkError(exc.message) from None
    except ValueError as exc:  # an argument the client refuses (an Idempotency-Key it cannot send, …)
        raise UsageError(str(exc)) from None


class ApiClient:
    """The jobs API as the CLI uses it: the documents as dicts, the CLI's exceptions (``ApiError``,
    ``NetworkError``), every request through ``flux_images.Client``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        policy: RetryPolicy | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        with cli_errors():
            self.flux = flux_images.Client(
                check_api_url(base_url),
                api_key,
                timeout=timeout,
                retry=policy or RetryPolicy(),
                sleep=lambda seconds: _sleep(seconds),  # late-bound: tests replace _sleep
                on_retry=on_retry,
            )
        self.base_url = self.flux.base_url
        self.timeout = timeout
        self.policy = self.flux.retry

    def close(self) -> None:
        self.flux.close()

    def create_job(self, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """``POST /v1/jobs`` with ``body`` as the CLI planned it (inline ``items`` or ``items_upload_id``)."""
        with cli_errors():
            job = self.flux.submit(
                body.get("items"),
                items_upload_id=body.get("items_upload_id"),
                webhook_url=body.get("webhook_url"),
                metadata=body.get("metadata"),
                idempotency_key=idempotency_key,
            )
        assert job.state is not None
        return job.state.raw

    def create_upload(self) -> dict[str, Any]:
        """``POST /v1/uploads``: ``{"id", "upload_url", "expires_at", "max_bytes", "max_lines"}``."""
        with cli_errors():
            return self.flux.create_upload().raw

    def get_image(self, image_id: str) -> dict[str, Any]:
        """``GET /v1/images/{id}``: the image document, with a fresh presigned URL."""
        with cli_errors():
            return self.flux.image(image_id).raw

    def get_job(self, job_id: str, *, cursor: str | None = None, limit: int | None = None) -> dict[str, Any]:
        with cli_errors():
            return self.flux.get_job(job_id, cursor=cursor, limit=limit).raw

    def iter_job_pages(
        self, job_id: str, limit: int = PAGE_LIMIT
    ) -> Generator[tuple[str | None, dict[str, Any]], None, None]:
        """Every page of the job: ``(cursor used, page)``; the cursor lets a caller fetch that page again."""
        with cli_errors():
            for cursor, page in self.flux.job_pages(job_id, limit):
                yield cursor, page.raw

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        with cli_errors():
            return self.flux.cancel_job(job_id).raw


def dumps_compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
