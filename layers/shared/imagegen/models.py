"""The service's data model: one model per concept, reused by the API, the OpenAPI spec and storage."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MAX_SEED = 4_294_967_295
IMAGE_ID_PATTERN = r"^img_[0-9a-f]{32}$"


class Model(BaseModel):
    """Base of the service's models: schemas are built on first use, not at import (cold start)."""

    model_config = ConfigDict(defer_build=True)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Dimension = Annotated[
    int,
    Field(ge=256, le=2048, multiple_of=16, description="Pixels: 256–2048, a multiple of 16.", examples=[1024]),
]


class ImageRequest(Model):
    """What a caller asks for. Unknown fields are rejected, so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    prompt: Annotated[
        str,
        Field(min_length=1, max_length=2000, description="What the image should show (1–2,000 characters)."),
        AfterValidator(_not_blank),
    ]
    num_steps: int = Field(4, ge=1, le=8, description="Diffusion steps, 1–8.")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="0–4294967295. Omitted: the service picks one and returns it."
    )
    width: Dimension = 1024
    height: Dimension = 1024


class GenerationParameters(Model):
    """The effective parameters of a generation: the request with the seed resolved."""

    prompt: str
    num_steps: int
    seed: int
    width: int
    height: int


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


class ErrorDetail(Model):
    location: str = Field(description="Where the problem is, e.g. `body.width`.")
    field: str | None = Field(None, description="The failing field, when there is one.")
    message: str
    type: str


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
