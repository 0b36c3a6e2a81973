"""Typed results of the API: frozen dataclasses built from its JSON documents (README "The API", docs/jobs.md).

Each keeps the document it was built from in ``raw``, so a field the API adds later is not lost. Fields the API
may leave out are optional here; a document that is not even an object is a ``bad_response`` ``ApiError``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

TERMINAL_JOB_STATUSES = frozenset({"succeeded", "failed", "partially_failed", "canceled"})


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse_time(value: Any) -> dt.datetime | None:
    """An RFC 3339 time of the API (``…Z``) as an aware datetime; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Parameters:
    """What an image was generated with (the seed the service picked, when none was given)."""

    prompt: str
    num_steps: int | None
    seed: int | None
    width: int | None
    height: int | None

    @classmethod
    def from_json(cls, document: Any) -> Parameters:
        doc = _dict(document)
        return cls(
            _str(doc.get("prompt")),
            _opt_int(doc.get("num_steps")),
            _opt_int(doc.get("seed")),
            _opt_int(doc.get("width")),
            _opt_int(doc.get("height")),
        )


@dataclass(frozen=True)
class ImageFile:
    """The stored image: a presigned ``url`` (renewed by ``Client.image(id)``), its size and ``sha256``."""

    url: str
    url_expires_at: dt.datetime | None
    s3_uri: str
    content_type: str
    bytes: int
    sha256: str
    width: int | None
    height: int | None

    @classmethod
    def from_json(cls, document: Any) -> ImageFile:
        doc = _dict(document)
        return cls(
            _str(doc.get("url")),
            parse_time(doc.get("url_expires_at")),
            _str(doc.get("s3_uri")),
            _str(doc.get("content_type")),
            _int(doc.get("bytes")),
            _str(doc.get("sha256")).lower(),
            _opt_int(doc.get("width")),
            _opt_int(doc.get("height")),
        )


@dataclass(frozen=True)
class Image:
    """``POST /v1/images`` (201) and ``GET /v1/images/{id}``: one generated image."""

    id: str
    status: str
    parameters: Parameters
    file: ImageFile
    created_at: dt.datetime | None
    timings: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def url(self) -> str:
        return self.file.url

    @property
    def sha256(self) -> str:
        return self.file.sha256

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Image:
        return cls(
            _str(document.get("id")),
            _str(document.get("status"), "succeeded"),
            Parameters.from_json(document.get("parameters")),
            ImageFile.from_json(document.get("image")),
            parse_time(document.get("created_at")),
            _dict(document.get("timings")),
            document,
        )


@dataclass(frozen=True)
class Counts:
    """A job's items by state; ``waiting`` (queued with a ``retry_at``) is part of ``queued``."""

    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    running: int = 0
    queued: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.canceled

    @classmethod
    def from_json(cls, document: Any) -> Counts:
        doc = _dict(document)
        names = ("succeeded", "failed", "canceled", "running", "queued", "waiting")
        return cls(**{name: _int(doc.get(name)) for name in names})


@dataclass(frozen=True)
class ItemError:
    code: str
    message: str


@dataclass(frozen=True)
class JobItem:
    """One item of a job: ``image`` once it succeeded, ``error`` once it failed or was canceled. An item of a
    request of several images (``num_images``) names it: ``request_index`` and ``image_index`` (else None)."""

    index: int
    status: str
    request: dict[str, Any] | None
    image: Image | None
    error: ItemError | None
    retry_at: dt.datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    request_index: int | None = None
    image_index: int | None = None

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> JobItem:
        image = document.get("image")
        error = document.get("error")
        request = document.get("request")
        return cls(
            _int(document.get("index")),
            _str(document.get("status")),
            request if isinstance(request, dict) else None,
            Image.from_json(image) if isinstance(image, dict) else None,
            ItemError(_str(error.get("code")), _str(error.get("message"))) if isinstance(error, dict) else None,
            parse_time(document.get("retry_at")),
            document,
            _opt_int(document.get("request_index")),
            _opt_int(document.get("image_index")),
        )


@dataclass(frozen=True)
class ResultsFile:
    """A finished job's ``results.jsonl``: one line per item (presigned ``url``)."""

    url: str
    s3_uri: str
    items: int


@dataclass(frozen=True)
class JobState:
    """``GET /v1/jobs/{id}`` (one page of it): the job's status and counts, and the items of this page."""

    id: str
    status: str
    total: int
    counts: Counts
    created_at: dt.datetime | None
    completed_at: dt.datetime | None
    results: ResultsFile | None
    webhook: dict[str, Any] | None
    metadata: dict[str, Any] | None
    items: list[JobItem]
    next_cursor: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def done(self) -> bool:
        """The job is finished (succeeded, failed, partially_failed or canceled): nothing will change any more."""
        return self.status in TERMINAL_JOB_STATUSES

    @property
    def finished(self) -> int:
        return self.counts.finished

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> JobState:
        results = document.get("results")
        webhook = document.get("webhook")
        metadata = document.get("metadata")
        items = document.get("items")
        return cls(
            _str(document.get("id")),
            _str(document.get("status")),
            _int(document.get("total")),
            Counts.from_json(document.get("counts")),
            parse_time(document.get("created_at")),
            parse_time(document.get("completed_at")),
            ResultsFile(_str(results.get("url")), _str(results.get("s3_uri")), _int(results.get("items")))
            if isinstance(results, dict)
            else None,
            webhook if isinstance(webhook, dict) else None,
            metadata if isinstance(metadata, dict) else None,
            [JobItem.from_json(item) for item in items if isinstance(item, dict)] if isinstance(items, list) else [],
            _opt_str(document.get("next_cursor")) or None,
            document,
        )


@dataclass(frozen=True)
class Upload:
    """``POST /v1/uploads``: where to PUT a JSONL file of items, until when, and its limits."""

    id: str
    upload_url: str
    expires_at: dt.datetime | None
    max_bytes: int | None
    max_lines: int | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Upload:
        return cls(
            _str(document.get("id")),
            _str(document.get("upload_url")),
            parse_time(document.get("expires_at")),
            _opt_int(document.get("max_bytes")),
            _opt_int(document.get("max_lines")),
            document,
        )
