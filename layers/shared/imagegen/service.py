"""Image generation, the one engine behind every entry point: validate → moderate the prompt → upstream → mirror
(moderating the image before it is stored) → record; several images of one request in parallel.

Slightly over ~300 lines: the single- and several-image paths share their budget and error handling here.
Not here: the HTTP answer (``functions/api``), jobs (``imagegen.jobs``, ``imagegen.item_processor``)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from imagegen.adapters.flux import FluxClient
from imagegen.adapters.images_table import ImageRepository
from imagegen.adapters.mirror import ImageKind, ImageMirror, Screen
from imagegen.budget import Deadline
from imagegen.errors import ContentBlockedError, NotFoundError, ServiceError, UpstreamAuthError, UpstreamTimeoutError
from imagegen.models import (
    MAX_SEED,
    GenerationParameters,
    ImageDocument,
    ImageFailure,
    ImageInfo,
    ImageRecord,
    ImageRequest,
    ImagesDocument,
    Timings,
)
from imagegen.observability import shared_metrics

if TYPE_CHECKING:
    from imagegen.adapters.convert import Conversion

logger = Logger(child=True)
metrics = shared_metrics()

BLOCKED_EVENT = "Image Blocked"


class Moderator(Protocol):
    def check_prompt(self, prompt: str) -> None: ...

    def check_image(
        self, data: bytes, content_type: str, width: int | None = None, height: int | None = None
    ) -> None: ...


def blocked_event(exc: ContentBlockedError, **context: Any) -> dict[str, Any]:
    """The detail of an "Image Blocked" event: what was blocked and why, never a URL or the prompt."""
    return {"image_id": exc.image_id, "target": exc.target, "categories": exc.categories, **context}


def new_image_id() -> str:
    return f"img_{uuid.uuid4().hex}"


def item_image_id(job_id: str, index: int) -> str:
    """A job item's image id: derived from the job and the index, so every replay names the same image."""
    return "img_" + hashlib.sha256(f"{job_id}#{index}".encode()).hexdigest()[:32]


def resolve_parameters(request: ImageRequest) -> GenerationParameters:
    """The effective parameters: a request without a seed gets a random one, returned so results reproduce; the
    size is the one asked for, or the aspect ratio's."""
    seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
    width, height = request.size
    return GenerationParameters(
        prompt=request.prompt,
        num_steps=request.num_steps,
        seed=seed,
        width=width,
        height=height,
        aspect_ratio=request.aspect_ratio,
        megapixels=request.megapixels,
        output_format=request.output_format,
        output_quality=request.output_quality,
    )


def image_requests(request: ImageRequest) -> list[ImageRequest]:
    """One single-image request per image of ``num_images``: seeds ``seed``, ``seed+1``, … (wrapping past the
    largest seed to 0), the base seed picked here when the caller gave none."""
    if request.num_images == 1:
        return [request]
    base = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
    return [
        request.model_copy(update={"seed": (base + offset) % (MAX_SEED + 1), "num_images": 1})
        for offset in range(request.num_images)
    ]


def conversion_of(request: ImageRequest | GenerationParameters) -> Conversion | None:
    if request.output_format is None:
        return None
    from imagegen.adapters.convert import Conversion  # only a conversion loads it (and Pillow, later)

    return Conversion(request.output_format, request.output_quality)


def object_metadata(image_id: str, params: GenerationParameters) -> dict[str, str]:
    """S3 user metadata (2 KB in all): the request parameters. The prompt itself is user data of any script
    (300 CJK characters percent-encode past 2 KB) and is already in the image record: only its digest here."""
    return {
        "image-id": image_id,
        "prompt-sha256": hashlib.sha256(params.prompt.encode("utf-8")).hexdigest(),
        "num-steps": str(params.num_steps),
        "seed": str(params.seed),
        "width": str(params.width),
        "height": str(params.height),
    }


class ImageService:
    def __init__(
        self,
        flux: FluxClient,
        mirror: ImageMirror,
        repository: ImageRepository,
        s3_client: Any,
        *,
        presigned_url_ttl_s: int = 3600,
        mirror_reserve_s: float = 4.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        moderator: Moderator | None = None,
        moderate_prompts: bool = False,
        moderate_images: bool = False,
        moderation_reserve_s: float = 2.0,
        on_blocked: Callable[[ContentBlockedError], None] | None = None,
    ) -> None:
        self._flux = flux
        self._mirror = mirror
        self._repository = repository
        self._s3 = s3_client
        self._ttl_s = presigned_url_ttl_s
        self._mirror_reserve_s = mirror_reserve_s
        self._now = now
        self._moderator = moderator
        self._moderate_prompts = moderate_prompts and moderator is not None
        self._moderate_images = moderate_images and moderator is not None
        # The upstream leaves time for the mirror, and for the image check when there is one.
        self._on_blocked = on_blocked
        self._after_upstream_s = mirror_reserve_s + (moderation_reserve_s if self._moderate_images else 0.0)

    def generate(self, request: ImageRequest, deadline: Deadline) -> ImageDocument | ImagesDocument:
        """The synchronous path: a new image, answered with its document; with ``num_images`` over 1, the images
        generated in parallel within the same deadline (see ``generate_many``). A blocked image is answered 422 (one
        of several: listed as failed); the API announces nothing itself, so ``on_blocked`` hands each block to the
        worker, which publishes "Image Blocked"."""
        if request.num_images == 1:
            try:
                return self.document(self.generate_record(request, deadline))
            except ContentBlockedError as exc:
                self._hand_over_block(exc)
                raise
        return self.generate_many(request, deadline)

    def _hand_over_block(self, exc: ContentBlockedError) -> None:
        if self._on_blocked is None:
            return
        try:
            self._on_blocked(exc)
        except Exception:  # noqa: BLE001 - the caller's answer is the 422; a lost notice is counted
            metrics.add_metric(name="EventsLost", unit=MetricUnit.Count, value=1)
            logger.warning("could not hand the blocked image to the worker", image_id=exc.image_id)

    def generate_many(self, request: ImageRequest, deadline: Deadline) -> ImagesDocument:
        """``num_images`` images at once, one thread each, all bound by ``deadline``. Each is a whole
        ``generate_record`` (its own id, upstream call, mirror and record), so each is fetchable by its id. Some
        failing: the successes are answered with the failures listed; all failing: the first failure is raised."""
        singles = image_requests(request)
        with ThreadPoolExecutor(max_workers=len(singles), thread_name_prefix="image") as pool:
            futures = [pool.submit(self.generate_record, single, deadline) for single in singles]
        images: list[ImageDocument] = []
        failed: list[ImageFailure] = []
        errors: list[ServiceError] = []
        for single, future in zip(singles, futures, strict=True):
            error = future.exception()
            if error is None:
                images.append(self.document(future.result()))
            elif isinstance(error, ServiceError):
                if isinstance(error, ContentBlockedError):
                    self._hand_over_block(error)
                errors.append(error)
                failed.append(ImageFailure(seed=single.seed or 0, code=error.code, message=error.message))
            else:
                raise error  # a bug, not an outcome: the API's one handler answers it
        if not images:
            raise errors[0]
        if failed:
            metrics.add_metric(name="ImagesFailedInBatch", unit=MetricUnit.Count, value=len(failed))
            logger.warning("some images of a batch failed", succeeded=len(images), failed=len(failed))
        return ImagesDocument(images=images, failed=failed)

    def inline(self, image: dict[str, Any]) -> int:
        """Add ``b64_json`` (the stored file, base64) to an image document's ``image`` in place; its length.
        Read back from the bucket (the answer stored for an Idempotency-Key holds URLs only), and checked against
        the document's digest."""
        info = image["image"]
        bucket, key = info["s3_uri"].removeprefix("s3://").split("/", 1)
        data = self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise ServiceError(f"the stored copy of image {image['id']} does not match its record")
        info["b64_json"] = base64.b64encode(data).decode("ascii")
        return len(info["b64_json"])

    def generate_record(
        self,
        request: ImageRequest,
        deadline: Deadline,
        *,
        image_id: str | None = None,
        created_at: datetime | None = None,
        key_stem: str | None = None,
        store: bool = True,
    ) -> ImageRecord:
        """Generate, mirror and record one image. A job item passes its own deterministic ``image_id`` and
        ``key_stem``: a replay then writes the same S3 key and record again, never a second image."""
        started = time.monotonic()
        replayable = image_id is not None
        image_id = image_id or new_image_id()
        params = resolve_parameters(request)
        created_at = created_at or self._now()
        logger.info(
            "generating image",
            image_id=image_id,
            prompt_chars=len(params.prompt),
            num_steps=params.num_steps,
            width=params.width,
            height=params.height,
        )
        if self._moderate_prompts:
            assert self._moderator is not None
            try:  # before the upstream call: a blocked prompt is never paid for
                self._moderator.check_prompt(params.prompt)
            except ContentBlockedError as exc:
                exc.image_id = image_id
                raise
        try:
            upstream = self._flux.generate(params, deadline.shortened_by(self._after_upstream_s))
        except UpstreamAuthError:
            metrics.add_metric(name="UpstreamAuthFailures", unit=MetricUnit.Count, value=1)
            raise
        metrics.add_metric(name="UpstreamLatency", unit=MetricUnit.Milliseconds, value=upstream.elapsed_ms)
        metrics.add_metric(name="UpstreamAttempts", unit=MetricUnit.Count, value=upstream.attempts)
        if upstream.key_refreshed:
            metrics.add_metric(name="SubscriptionKeyRefreshed", unit=MetricUnit.Count, value=1)

        key_stem = key_stem or f"images/{created_at:%Y/%m/%d}/{image_id}"
        try:
            stored = self._mirror.mirror(
                upstream.output_url,
                key_stem,
                object_metadata(image_id, params),
                deadline,
                conversion=conversion_of(params),
                screen=self._screen(deadline),
            )
        except ContentBlockedError as exc:
            exc.image_id = image_id
            raise
        record = ImageRecord(
            id=image_id,
            parameters=params,
            stored=stored,
            created_at=created_at,
            timings=Timings(upstream_ms=upstream.elapsed_ms, total_ms=int((time.monotonic() - started) * 1000)),
        )
        if store:  # a job item stores its record in its own final transaction instead
            self._repository.put(record, overwrite=replayable)
        metrics.add_metric(name="ImagesGenerated", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="ImageBytes", unit=MetricUnit.Bytes, value=stored.bytes)
        logger.info("image stored", image_id=image_id, bytes=stored.bytes, s3_key=stored.key)
        return record

    def _screen(self, deadline: Deadline) -> Screen | None:
        """The image check the mirror runs on the whole image before storing it (None: moderation of images off)."""
        if not self._moderate_images:
            return None
        moderator = self._moderator
        assert moderator is not None

        def screen(data: bytes, kind: ImageKind) -> None:
            if deadline.expired():  # never store it unchecked; the caller can retry (504, a retried job item)
                raise UpstreamTimeoutError("no time left to screen the image within the request budget")
            moderator.check_image(data, kind.content_type, kind.width, kind.height)

        return screen

    def record_item(self, record: ImageRecord) -> dict[str, Any]:
        return self._repository.item(record)

    def get(self, image_id: str) -> ImageDocument:
        record = self._repository.get(image_id)
        if record is None:
            raise NotFoundError(f"image {image_id} not found")
        return self.document(record)

    def document(self, record: ImageRecord) -> ImageDocument:
        """The API view of a record, with a freshly presigned URL."""
        stored = record.stored
        url = self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": stored.bucket, "Key": stored.key}, ExpiresIn=self._ttl_s
        )
        return image_document(record, url, (self._now() + timedelta(seconds=self._ttl_s)).replace(microsecond=0))


def image_document(record: ImageRecord, url: str, url_expires_at: datetime) -> ImageDocument:
    """The API view of a record whose file is at ``url`` until ``url_expires_at`` (the unit tests' fake image
    service builds its documents with it too, so the two cannot drift apart)."""
    stored = record.stored
    return ImageDocument(
        id=record.id,
        status=record.status,
        parameters=record.parameters,
        image=ImageInfo(
            url=url,
            url_expires_at=url_expires_at,
            s3_uri=stored.s3_uri,
            content_type=stored.content_type,
            bytes=stored.bytes,
            sha256=stored.sha256,
            width=stored.width,
            height=stored.height,
        ),
        created_at=record.created_at,
        timings=record.timings,
    )
