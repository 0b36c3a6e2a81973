"""The service's data model: one model per concept, reused by the API, the OpenAPI spec and storage.

Over ~300 lines on purpose: it is the published contract (requests, documents, queue messages and events, whose
schemas ``make docs`` writes to ``docs/``), declarations rather than logic, and one place to read it whole keeps
the field rules that refer to each other (sizes, formats, inline limits, the queue's restrictions) side by side.
Not here: how a request is carried out (``imagegen.service``), storage shapes (``imagegen.adapters``)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

MAX_SEED = 4_294_967_295
IMAGE_ID_PATTERN = r"^img_[0-9a-f]{32}$"


class Model(BaseModel):
    """Base of the service's models: schemas are built on first use, not at import (cold start)."""

    model_config = ConfigDict(defer_build=True)


NOT_BLANK_PATTERN = r"\S"  # at least one character that is not whitespace


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Dimension = Annotated[
    int,
    Field(ge=256, le=2048, multiple_of=16, description="Pixels: 256–2048, a multiple of 16.", examples=[1024]),
]
MIN_SIDE, MAX_SIDE, SIDE_STEP = 256, 2048, 16
DEFAULT_SIDE = 1024
MAX_NUM_IMAGES = 4
MEGAPIXEL = 1024 * 1024  # pixels: `megapixels: 1` is 1024×1024
AspectRatio = Literal["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21"]
OutputFormat = Literal["png", "jpeg", "webp"]
ResponseFormat = Literal["url", "b64_json"]
DEFAULT_QUALITY = 90  # jpeg/webp without output_quality


# Lambda answers a synchronous invoke with at most 6 MB (6,291,456 bytes): the inline images (base64, 4 bytes per
# 3) get that minus a reserve for the rest of the document and API Gateway's envelope.
LAMBDA_RESPONSE_LIMIT = 6 * 1024 * 1024
INLINE_RESERVE = 64 * 1024
MAX_INLINE_B64 = LAMBDA_RESPONSE_LIMIT - INLINE_RESERVE
SIZE_FIELDS = ("width", "height", "aspect_ratio", "megapixels")


def inline_length(size: int) -> int:
    """Characters of ``size`` bytes in base64."""
    return 4 * -(-size // 3)


def png_bound(width: int, height: int) -> int:
    """The most bytes an 8-bit RGB PNG of ``width``×``height`` takes, incompressible content included: the raw
    rows (a filter byte each) plus deflate's and the chunks' framing (under 0.2 %), plus the headers."""
    raw = height * (3 * width + 1)
    return raw + raw // 500 + 1024


# The largest PNG area that fits inline, one image: 1024×1024 does; 1248×1248 does not.
MAX_INLINE_PNG_PIXELS = (MAX_INLINE_B64 * 3 // 4 - 1024) * 500 // 1503


def conflict_error(model: BaseModel, conflicts: list[tuple[str, str]]) -> ValidationError:
    """A validation error with one entry per field (``loc`` the field, nested under the model's own place)."""
    return ValidationError.from_exception_data(
        type(model).__name__,
        [
            InitErrorDetails(
                type=PydanticCustomError("conflicting_fields", "{reason}", {"reason": reason}),
                loc=(name,),
                input=getattr(model, name),
            )
            for name, reason in conflicts
        ],
    )


def size_for(aspect_ratio: str, megapixels: float = 1.0) -> tuple[int, int]:
    """The width and height for an aspect ratio at about ``megapixels``: each side a multiple of 16 within
    256–2048. The ideal sides are scaled down (or up) as a pair when one would leave the range, so the ratio holds;
    then each is rounded to the nearest multiple of 16."""
    ratio_w, ratio_h = (int(part) for part in aspect_ratio.split(":"))
    pixels = megapixels * MEGAPIXEL
    width = (pixels * ratio_w / ratio_h) ** 0.5
    height = pixels / width
    scale = min(1.0, MAX_SIDE / max(width, height))
    scale = max(scale, MIN_SIDE / min(width, height))
    return tuple(  # type: ignore[return-value]
        min(MAX_SIDE, max(MIN_SIDE, SIDE_STEP * round(side * scale / SIDE_STEP))) for side in (width, height)
    )


def _is_none(value: Any) -> bool:
    return value is None


# An option the caller did not use is left out of an answer (not null): without options, documents stay as before.
UNUSED_LEFT_OUT: Any = {"exclude_if": _is_none}


class ImageRequest(Model):
    """What a caller asks for. Unknown fields are rejected, so a typo never silently does nothing. Numbers are
    taken as written: an integer field refuses `4.0` and `"4"` (422), as it refuses any other type."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    prompt: Annotated[
        str,
        Field(
            min_length=1,
            max_length=2000,
            description="What the image should show (1–2,000 characters, not only whitespace).",
            json_schema_extra={"pattern": NOT_BLANK_PATTERN},  # documents _not_blank, which enforces it
        ),
        AfterValidator(_not_blank),
    ]
    num_steps: int = Field(4, ge=1, le=8, description="Diffusion steps, 1–8.")
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="0–4294967295. Omitted: the service picks one and returns it. With `num_images` over 1 the "
        "images get `seed`, `seed+1`, … (wrapping past 4294967295 to 0).",
    )
    # Omitted (null) rather than 1024 by default: a stored request keeps only what the caller set, so a request
    # with `aspect_ratio` reloads without a width and height it never had.
    width: Dimension | None = Field(
        None, description="Pixels: 256–2048, a multiple of 16. Default 1024; not with `aspect_ratio`."
    )
    height: Dimension | None = Field(
        None, description="Pixels: 256–2048, a multiple of 16. Default 1024; not with `aspect_ratio`."
    )
    aspect_ratio: AspectRatio | None = Field(
        None,
        description="A preset instead of `width`/`height`: the nearest sides in multiples of 16 within 256–2048 "
        "for `megapixels` (the document shows the sides used).",
        **UNUSED_LEFT_OUT,
    )
    megapixels: float | None = Field(
        None,
        ge=0.0625,
        le=4,
        allow_inf_nan=False,
        description="With `aspect_ratio` only: the image's size in megapixels of 1024×1024 pixels, 0.0625–4. "
        "Default 1.",
        **UNUSED_LEFT_OUT,
    )
    num_images: int = Field(
        1,
        ge=1,
        le=MAX_NUM_IMAGES,
        description='1–4 images with consecutive seeds. Over 1 the 201 answer is `{"images": [...]}` (generated '
        "in parallel); in a job (or with `Prefer: respond-async`) the request becomes that many items, one image "
        "each, with `request_index` and `image_index`.",
    )
    output_format: OutputFormat | None = Field(
        None,
        description="Convert the image while storing it. Omitted: stored as the upstream made it (PNG).",
        **UNUSED_LEFT_OUT,
    )
    output_quality: int | None = Field(
        None,
        ge=1,
        le=100,
        description=f"1–100, with `output_format` `jpeg` or `webp` only. Default {DEFAULT_QUALITY}.",
        **UNUSED_LEFT_OUT,
    )
    response_format: ResponseFormat = Field(
        "url",
        description="`b64_json`: the stored file inline in the 201 as `image.b64_json` (refused with a 422 when "
        "the answer would pass Lambda's 6 MB response limit). Not with `Prefer: respond-async`, nor in a job.",
    )

    @model_validator(mode="after")
    def _consistent_options(self) -> ImageRequest:
        """Every field of an invalid combination gets its own error, so a 422 names each of them."""
        conflicts: list[tuple[str, str]] = []
        sides = [name for name in ("width", "height") if getattr(self, name) is not None]
        if self.aspect_ratio is not None and sides:
            reason = f"aspect_ratio and {' and '.join(sides)} are mutually exclusive: give one or the other"
            conflicts += [(name, reason) for name in ("aspect_ratio", *sides)]
        if self.megapixels is not None and self.aspect_ratio is None:
            conflicts.append(("megapixels", "needs aspect_ratio (megapixels sizes an aspect ratio preset)"))
        if self.output_quality is not None and self.output_format not in ("jpeg", "webp"):
            reason = "output_quality needs output_format jpeg or webp"
            conflicts += [(name, reason) for name in ("output_quality", "output_format")]
        if self.response_format == "b64_json" and self.output_format in (None, "png"):
            width, height = self.size
            if self.num_images * inline_length(png_bound(width, height)) > MAX_INLINE_B64:
                reason = (
                    f"{self.num_images} PNG image(s) of {width}x{height} could pass Lambda's 6 MB response limit "
                    f"inline (PNG: about {MAX_INLINE_PNG_PIXELS:,} pixels in all): use response_format url, fewer "
                    "or smaller images, or output_format jpeg or webp"
                )
                given = ["response_format", *(name for name in SIZE_FIELDS if getattr(self, name) is not None)]
                if self.num_images > 1:
                    given.append("num_images")
                conflicts += [(name, reason) for name in given]
        if conflicts:
            raise conflict_error(self, conflicts)
        return self

    @property
    def size(self) -> tuple[int, int]:
        """The width and height to generate."""
        if self.aspect_ratio is not None:
            return size_for(self.aspect_ratio, self.megapixels if self.megapixels is not None else 1.0)
        return (self.width or DEFAULT_SIDE, self.height or DEFAULT_SIDE)


class GenerationParameters(Model):
    """The effective parameters of a generation: the request with the seed and the size resolved. The options
    (`aspect_ratio`, `megapixels`, `output_format`, `output_quality`) appear only when the request used them."""

    prompt: str
    num_steps: int
    seed: int
    width: int
    height: int
    aspect_ratio: AspectRatio | None = Field(None, **UNUSED_LEFT_OUT)
    megapixels: float | None = Field(None, **UNUSED_LEFT_OUT)
    output_format: OutputFormat | None = Field(None, **UNUSED_LEFT_OUT)
    output_quality: int | None = Field(None, **UNUSED_LEFT_OUT)


class StoredImage(Model):
    """The mirrored copy of an image in the private bucket."""

    bucket: str
    key: str
    content_type: Literal["image/png", "image/jpeg", "image/webp"]
    bytes: int
    sha256: str
    width: int | None
    height: int | None

    @property
    def s3_uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class ImageInfo(Model):
    url: str = Field(description="Presigned GET URL of the private S3 copy. GET the image again for a fresh one.")
    url_expires_at: datetime
    s3_uri: str
    content_type: str
    bytes: int
    sha256: str
    width: int | None
    height: int | None
    b64_json: str | None = Field(
        None,
        description="With `response_format: b64_json` only (left out otherwise): the stored file, base64-encoded.",
        **UNUSED_LEFT_OUT,
    )


class Timings(Model):
    upstream_ms: int = Field(description="Time spent waiting for the Flux Schnell API, retries included.")
    total_ms: int


class ImageDocument(Model):
    """A generated image, as the API answers it."""

    id: str = Field(pattern=IMAGE_ID_PATTERN)
    status: Literal["succeeded"] = "succeeded"
    parameters: GenerationParameters
    image: ImageInfo
    created_at: datetime
    timings: Timings


class ImageFailure(Model):
    """One image of a `num_images` request that failed while the others succeeded."""

    seed: int = Field(description="The seed it was generated with.")
    code: str
    message: str


class ImagesDocument(Model):
    """The 201 of a request with `num_images` over 1: each image as `POST /v1/images` answers one (each has its
    own id for `GET /v1/images/{id}`), in seed order. When some failed and at least one succeeded, `images`
    lists the successes and `failed` the others; when all fail the answer is the first failure's error."""

    images: list[ImageDocument]
    failed: list[ImageFailure] = Field(default_factory=list)


class ErrorDetail(Model):
    location: str = Field(description="Where the problem is, e.g. `body.width`.")
    field: str | None = Field(None, description="The failing field, when there is one.")
    message: str
    type: str
    categories: list[str] | None = Field(
        None, description="For `content_blocked`: the moderation categories that blocked it (e.g. `SEXUAL`)."
    )


class ErrorInfo(Model):
    code: str
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)
    request_id: str | None = None


class ErrorResponse(Model):
    """The one shape of every non-2xx answer of the service."""

    error: ErrorInfo


class ImageRecord(Model):
    """What is persisted for an image; the API document is derived from it with a fresh presigned URL."""

    id: str = Field(pattern=IMAGE_ID_PATTERN)
    status: Literal["succeeded"] = "succeeded"
    parameters: GenerationParameters
    stored: StoredImage
    created_at: datetime
    timings: Timings


# ------------------------------------------------------------------------------------------------ bulk jobs
JOB_ID_PATTERN = r"^job_[0-9a-f]{32}$"
UPLOAD_ID_PATTERN = r"^upl_[0-9a-f]{32}$"
MAX_JOB_ITEMS = 1000
MAX_UPLOAD_LINES = 100_000  # items of a job submitted from an uploaded file
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
MAX_METADATA_BYTES = 2048

JobStatus = Literal["queued", "running", "succeeded", "partially_failed", "failed", "canceled"]
ItemStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL_ITEM_STATUSES = frozenset({"succeeded", "failed", "canceled"})


MAX_METADATA_DEPTH = 16  # nesting levels (DynamoDB stores 32 at most)
# What a DynamoDB number holds: 38 significant digits, a magnitude from 1e-130 to below 1e126.
NUMBER_DIGITS, NUMBER_MIN_EXPONENT, NUMBER_MAX_EXPONENT = 38, -130, 125
METADATA_DESCRIPTION = (
    f"Echoed back in the job and its webhook: at most {MAX_METADATA_BYTES} bytes of JSON, nested at most "
    f"{MAX_METADATA_DEPTH} levels, keys not empty; numbers of at most {NUMBER_DIGITS} significant digits, magnitude "
    "1e-130 to 1e125."
)


def _storable_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Metadata as the jobs table can store it: the size checked, numbers checked, floats as Decimal (DynamoDB
    takes no floats); ``json_numbers`` turns them back into JSON numbers in answers."""
    if value is None:
        return None
    if len(json.dumps(value, separators=(",", ":")).encode("utf-8")) > MAX_METADATA_BYTES:
        raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes of JSON")
    return _storable(value, 1)


def _storable(value: Any, depth: int) -> Any:
    if isinstance(value, dict | list):
        if depth > MAX_METADATA_DEPTH:
            raise ValueError(f"must nest at most {MAX_METADATA_DEPTH} levels")
        if isinstance(value, dict):
            if "" in value:
                raise ValueError("keys must not be empty")
            return {_text(key): _storable(inner, depth + 1) for key, inner in value.items()}
        return [_storable(inner, depth + 1) for inner in value]
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not number.is_finite() or (
        number
        and (
            len(number.as_tuple().digits) > NUMBER_DIGITS
            or not NUMBER_MIN_EXPONENT <= number.adjusted() <= NUMBER_MAX_EXPONENT
        )
    ):
        raise ValueError(
            f"numbers must be finite, of at most {NUMBER_DIGITS} significant digits and a magnitude from "
            f"1e{NUMBER_MIN_EXPONENT} to 1e{NUMBER_MAX_EXPONENT}"
        )
    return number if isinstance(value, float) else value


def _text(value: str) -> str:
    """JSON's ``\\ud800`` escapes decode to lone surrogates, which no store (nor UTF-8) can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("strings must be valid Unicode (no lone surrogates)") from None
    return value


def json_numbers(value: Any) -> Any:
    """DynamoDB's numbers (Decimal) back to JSON numbers: whole ones as int (the models want ints), others as
    float. The one copy: the tables' readers use it too (``imagegen.adapters.images_table.plain``)."""
    if isinstance(value, dict):
        return {key: json_numbers(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [json_numbers(inner) for inner in value]
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


JsonMetadata = Annotated[
    dict[str, Any] | None,
    PlainSerializer(json_numbers, return_type=dict[str, Any] | None, when_used="json"),
]


# What _web_url accepts, for the spec: a scheme, an ASCII host name (no credentials), an optional port, then
# anything without spaces. (IPv6 literals are accepted too, but left out here.)
# The port is 0-65535 in the pattern itself: a schema-valid URL must not be refused for its port (the fuzzing found
# https://host:4601590822 accepted by the spec and refused by the model).
PORT_PATTERN = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
WEB_URL_PATTERN = rf"^https?://[A-Za-z0-9._~%!$&'()*+,;=-]+(:{PORT_PATTERN}?)?([/?#]\S*)?$"


def _web_url(value: str | None) -> str | None:
    """Shape only; the service insists on https (and a public address) unless configured for local use."""
    if value is None:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("must be an https URL")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError:
        raise ValueError("the port must be a number from 0 to 65535") from None
    if not re.fullmatch(WEB_URL_PATTERN, value):  # what the published schema promises
        raise ValueError("must be an https URL (scheme, host, optional port, path)")
    return value


QUEUED = "for a queued image (a job item, or Prefer: respond-async)"


def job_item(request: ImageRequest) -> ImageRequest:
    """What a job, a queue message or an event accepts of an image request (also checked per uploaded line): a
    job item answers through the job, its image fetched by URL, so ``b64_json`` is refused, named. ``num_images``
    N is accepted: the queue side makes it N items of one image each (``fanout``)."""
    if request.response_format != "url":
        raise conflict_error(request, [("response_format", f"must be url {QUEUED}: its image is fetched by URL")])
    return request


JobItem = Annotated[ImageRequest, AfterValidator(job_item)]


class JobRequest(Model):
    """``POST /v1/jobs``: up to 1,000 image requests (or an uploaded file of up to 100,000), an optional webhook
    and metadata echoed back."""

    # Exactly one source of items, stated in the schema too (what _one_source_of_items enforces): a client
    # generator or a fuzzer reading the spec must not take a body with both, or neither, for a valid one.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        defer_build=True,
        json_schema_extra={
            "oneOf": [
                {"required": ["items"], "properties": {"items": {"type": "array"}}},
                {"required": ["items_upload_id"], "properties": {"items_upload_id": {"type": "string"}}},
            ]
        },
    )

    items: list[JobItem] | None = Field(
        None,
        min_length=1,
        max_length=MAX_JOB_ITEMS,
        description="1-1,000 bodies of `POST /v1/images`. Exactly one of `items` and `items_upload_id`.",
    )
    items_upload_id: str | None = Field(
        None,
        pattern=UPLOAD_ID_PATTERN,
        description=(
            "The id of a `POST /v1/uploads` whose file was PUT: one `POST /v1/images` body per line (blank lines "
            "ignored). Exactly one of `items` and `items_upload_id`."
        ),
    )
    webhook_url: Annotated[
        str | None,
        Field(
            max_length=2048,
            description=(
                "Called (signed POST) when the job completes: an https URL to a public host, without credentials "
                "(plain http only where the deployment allows it, as locally)."
            ),
            json_schema_extra={"pattern": WEB_URL_PATTERN},  # documents _web_url, which enforces it
        ),
        AfterValidator(_web_url),
    ] = None
    metadata: Annotated[
        JsonMetadata,
        Field(description=METADATA_DESCRIPTION),
        AfterValidator(_storable_metadata),
    ] = None

    @model_validator(mode="after")
    def _one_source_of_items(self) -> JobRequest:
        if (self.items is None) == (self.items_upload_id is None):
            raise ValueError("exactly one of items and items_upload_id is required")
        return self


class UploadDocument(Model):
    """``POST /v1/uploads``: where to PUT a JSONL file of image requests, then name it in ``POST /v1/jobs``."""

    id: str = Field(pattern=UPLOAD_ID_PATTERN)
    upload_url: str = Field(description="Presigned S3 PUT URL: PUT the file there (any content type).")
    expires_at: datetime = Field(description="The URL works until then; the file is deleted a day after upload.")
    max_bytes: int = Field(description="Largest file a job accepts (bigger: 413 at POST /v1/jobs).")
    max_lines: int = Field(
        description="Most items a job accepts: non-blank lines, a line with `num_images` N counting N."
    )


class ResultsInfo(Model):
    """The job's results file (one JSON line per item, in index order), written when the job completes."""

    url: str = Field(description="Presigned GET URL (GET the job again for a fresh one).")
    s3_uri: str
    items: int


class ItemError(Model):
    code: str
    message: str


class JobCounts(Model):
    queued: int = Field(0, description="Items not started, or queued again to wait out a retry (`waiting`).")
    running: int = Field(0, description="Items being generated right now.")
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    waiting: int = Field(
        0,
        description=(
            "Of the `queued` items, those deferred by a retryable failure (rate limit, upstream down) until their "
            "`retry_at`; counted in `queued` too."
        ),
    )


class WebhookInfo(Model):
    url: str
    status: Literal["pending", "delivered", "failed"] = "pending"
    attempts: int = 0


ORIGIN_DESCRIPTION = (
    "Only in a job where some request asked for several images (`num_images` over 1): the request (item of "
    "`items`, or non-blank line of the upload, from 0) this item's image comes from, and which of its images it "
    "is (from 0; its seed is the request's seed plus this)."
)


class JobItemDocument(Model):
    index: int
    request_index: int | None = Field(None, description=ORIGIN_DESCRIPTION, **UNUSED_LEFT_OUT)
    image_index: int | None = Field(None, description=ORIGIN_DESCRIPTION, **UNUSED_LEFT_OUT)
    status: ItemStatus
    request: ImageRequest | None = Field(
        description="The item's own request: one image, its seed resolved. Null for an uploaded line that failed "
        "validation."
    )
    error: ItemError | None = None
    image: ImageDocument | None = None
    retry_at: datetime | None = Field(
        None,
        description="A queued item deferred by a retryable failure is tried again at (or after) this time.",
    )


class JobDocument(Model):
    """A bulk job, as the API answers it (``items`` paged by ``next_cursor``)."""

    id: str = Field(pattern=JOB_ID_PATTERN)
    status: JobStatus
    total: int
    counts: JobCounts
    created_at: datetime
    completed_at: datetime | None = None
    metadata: JsonMetadata = None
    webhook: WebhookInfo | None = None
    results: ResultsInfo | None = Field(None, description="The results file; null until the job completes.")
    items: list[JobItemDocument] = Field(
        default_factory=list,
        description="A page of items. Until the job's fan-out ends a page may list fewer items than `total`: the "
        "items not listed yet are queued (and counted so in `counts`).",
    )
    next_cursor: str | None = None


class CancelOrder(Model):
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    job_id: str = Field(pattern=JOB_ID_PATTERN)
    cursor: str | None = Field(None, max_length=256, description="Where the previous page of items stopped.")


class AnnounceOrder(Model):
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    job_id: str = Field(pattern=JOB_ID_PATTERN)


class BlockedNotice(Model):
    """A synchronous image that content moderation blocked, for the worker to announce ("Image Blocked")."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    image_id: str = Field(pattern=r"^img_[0-9a-f]{32}$")
    target: Literal["prompt", "image"]
    categories: list[Annotated[str, Field(max_length=128)]] = Field(max_length=32)


class ControlMessage(Model):
    """A message the service puts on the jobs queue for its own worker (never a producer's): cancel a job's queued
    items, a page at a time (``{"cancel": {"job_id": …}}``), announce a job the API side completed
    (``{"announce": {"job_id": …}}``), or announce an image moderation blocked on the API
    (``{"blocked": {"image_id": …, "target": …, "categories": […]}}``). Exactly one of them."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    cancel: CancelOrder | None = None
    announce: AnnounceOrder | None = None
    blocked: BlockedNotice | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ControlMessage:
        if sum(order is not None for order in (self.cancel, self.announce, self.blocked)) != 1:
            raise ValueError("a control message is exactly one of cancel, announce or blocked")
        return self


CONTROL_KEYS = frozenset({"cancel", "announce", "blocked"})


class JobMessage(Model):
    """One queue message. Producers other than the API send ``request`` (and a correlation id): with
    ``num_images`` N over 1 the worker makes it a job of N items. The service's own messages are one image each
    (one item of ``job_id``)."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True, title="Flux image job message")

    version: Literal[1] = 1
    request: JobItem
    job_id: str | None = Field(None, pattern=JOB_ID_PATTERN, description="Set by the API for its own jobs.")
    index: int | None = Field(None, ge=0, lt=MAX_UPLOAD_LINES, description="Item index within job_id.")
    request_index: int | None = Field(
        None, ge=0, lt=MAX_UPLOAD_LINES, description="Set by the service with job_id: the request the item comes from."
    )
    image_index: int | None = Field(
        None, ge=0, lt=MAX_NUM_IMAGES, description="Set by the service with job_id: which image of that request."
    )
    correlation_id: str | None = Field(None, max_length=128, description="Echoed in the events.")

    @model_validator(mode="after")
    def _index_belongs_to_a_job(self) -> JobMessage:
        if (self.index is None) != (self.job_id is None):
            raise ValueError("job_id and index go together (a direct producer sets neither)")
        conflicts: list[tuple[str, str]] = []
        if (self.request_index is None) != (self.image_index is None) or (
            self.request_index is not None and self.job_id is None
        ):
            reason = "request_index and image_index go together, with job_id (a direct producer sets none of them)"
            given = [name for name in ("request_index", "image_index") if getattr(self, name) is not None]
            conflicts += [(name, reason) for name in given]
        if self.job_id is not None and self.request.num_images != 1:
            conflicts.append(("job_id", "an item of a job is one image: num_images over 1 only without job_id"))
        if conflicts:
            raise conflict_error(self, conflicts)
        return self


class FanoutChunk(Model):
    """A run of lines of a job's items object: item ``index`` is on line ``line``, at byte ``offset`` (to ``end``).

    In a job where some line asks for several images (``num_images``), a line makes that many items: the chunk then
    also says which request (non-blank line, from 0) it starts with and how many items it makes, and every item of
    the job carries its ``request_index`` and ``image_index``. Without them (every line one image) nothing differs
    from a job before ``num_images`` was taken in jobs."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    index: int = Field(ge=0, lt=MAX_UPLOAD_LINES)
    line: int = Field(ge=1)
    offset: int = Field(ge=0)
    end: int = Field(ge=0)
    request_index: int | None = Field(None, ge=0, lt=MAX_UPLOAD_LINES)
    items: int | None = Field(None, ge=1)


class FanoutMessage(Model):
    """The service's own control message: turn a job's items object into item rows and item messages. Without
    ``chunk``: split the object into chunk messages; with one: write and enqueue that chunk's items."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    version: Literal[1] = 1
    kind: Literal["fanout"] = "fanout"
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    chunk: FanoutChunk | None = None


class ImageRequestedDetail(Model):
    """``detail`` of an ``Image Requested`` event: one request or up to 1,000, and a correlation id echoed in the
    ``Image Generated``, ``Image Failed`` and ``Job Completed`` events."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True, title="Image Requested event detail")

    request: JobItem | None = None
    requests: list[JobItem] | None = Field(None, min_length=1, max_length=MAX_JOB_ITEMS)
    correlation_id: str | None = Field(None, max_length=128, description="Echoed in the outcome events.")
    webhook_url: Annotated[str | None, Field(max_length=2048), AfterValidator(_web_url)] = None
    metadata: Annotated[JsonMetadata, Field(description=METADATA_DESCRIPTION), AfterValidator(_storable_metadata)] = (
        None
    )

    @model_validator(mode="after")
    def _one_kind_of_request(self) -> ImageRequestedDetail:
        if (self.request is None) == (self.requests is None):
            raise ValueError("exactly one of request and requests is required")
        return self

    @property
    def all_requests(self) -> list[ImageRequest]:
        return [self.request] if self.request is not None else list(self.requests or [])
