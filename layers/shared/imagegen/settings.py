"""Configuration from the environment, parsed once per container into one typed model.

``get_settings()`` fails fast with a message naming every missing or invalid variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from imagegen.addresses import parse_networks
from imagegen.errors import ConfigurationError

VENDOR_API_URL = "https://gateway.appypie.com/flux-1-schnell/v1/getData"
MIB = 1024 * 1024
# Threads per upstream slot in a worker invocation. One item calls the upstream while the others claim their item,
# mirror and record (a few hundred ms on AWS, an estimate, against seconds of generation; up to ~1 s on a loaded
# local stack, where a 10-item batch on one slot took ~12.2 s with two threads and ~11.2 s with four, in noisy
# single runs). Bounded rather than the whole batch: each item mirroring holds a buffer (up to ~10 MB), and an
# item is claimed only when a thread takes it, so its time check sees the time it has.
ITEMS_PER_SLOT = 4


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvList = Annotated[list[str], BeforeValidator(_split_csv)]


def _check_networks(values: list[str]) -> list[str]:
    parse_networks(values)  # a ValueError names the bad entry
    return values


NetworkList = Annotated[list[str], BeforeValidator(_split_csv), AfterValidator(_check_networks)]


class Settings(BaseModel):
    """Every knob of the service. Field aliases are the environment variable names."""

    # defer_build: the validator is built when the settings are first parsed (the first request or batch), not at
    # import; the API's import needs only HttpSettings.
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore", defer_build=True)

    # Upstream
    flux_api_url: str = Field(VENDOR_API_URL, alias="FLUX_API_URL", pattern=r"^https?://")
    flux_secret_id: str = Field(alias="FLUX_SECRET_ID", min_length=1)
    secret_max_age_s: int = Field(300, alias="SECRET_MAX_AGE_SECONDS", ge=0, le=3600)
    upstream_connect_timeout_s: float = Field(3.05, alias="UPSTREAM_CONNECT_TIMEOUT_SECONDS", gt=0, le=30)
    upstream_read_timeout_s: float = Field(60.0, alias="UPSTREAM_READ_TIMEOUT_SECONDS", gt=0, le=900)
    upstream_max_attempts: int = Field(4, alias="UPSTREAM_MAX_ATTEMPTS", ge=1, le=10)
    upstream_backoff_base_s: float = Field(0.5, alias="UPSTREAM_BACKOFF_BASE_SECONDS", ge=0, le=30)
    upstream_backoff_max_s: float = Field(8.0, alias="UPSTREAM_BACKOFF_MAX_SECONDS", ge=0, le=300)

    # Storage
    images_bucket: str = Field(alias="IMAGES_BUCKET", min_length=3)
    images_table: str = Field(alias="IMAGES_TABLE", min_length=3)
    retention_days: int = Field(30, alias="RETENTION_DAYS", ge=1, le=3650)
    presigned_url_ttl_s: int = Field(3600, alias="PRESIGNED_URL_TTL_SECONDS", ge=60, le=7 * 24 * 3600)

    # Mirror guard
    image_host_allowlist: CsvList = Field(default_factory=lambda: ["pub-*.r2.dev"], alias="IMAGE_HOST_ALLOWLIST")
    max_image_bytes: int = Field(32 * MIB, alias="MAX_IMAGE_BYTES", ge=1024, le=1024 * MIB)
    # Development only (the local stack serves images over http on loopback); never set in template.yaml.
    image_allow_http: bool = Field(False, alias="IMAGE_ALLOW_HTTP")
    # Networks the mirror may reach besides public addresses: the local stack's loopback ("127.0.0.0/8,::1/128").
    image_allowed_private_networks: NetworkList = Field(default_factory=list, alias="IMAGE_ALLOWED_PRIVATE_NETWORKS")

    # Bulk jobs (both functions). Optional so the sync path runs without them; `require` names what is missing.
    jobs_queue_url: str | None = Field(None, alias="JOBS_QUEUE_URL")
    jobs_dlq_url: str | None = Field(None, alias="JOBS_DLQ_URL")
    event_bus_name: str | None = Field(None, alias="EVENT_BUS_NAME")
    webhook_secret_id: str | None = Field(None, alias="WEBHOOK_SECRET_ID")
    idempotency_table: str | None = Field(None, alias="IDEMPOTENCY_TABLE")
    idempotency_ttl_s: int = Field(24 * 3600, alias="IDEMPOTENCY_TTL_SECONDS", ge=60, le=30 * 24 * 3600)
    max_receive_count: int = Field(5, alias="MAX_RECEIVE_COUNT", ge=1, le=1000)
    # Upstream slots of one worker invocation: at most this many Flux API calls in flight at once in it, so at most
    # WorkerMaxConcurrency x this in the fleet. Its items run in more threads (worker_items_in_flight).
    worker_threads: int = Field(8, alias="WORKER_THREADS", ge=1, le=64)
    worker_reserve_s: float = Field(5.0, alias="WORKER_RESERVE_SECONDS", ge=0, le=60)
    # An invocation takes more messages from the jobs queue itself while its slots would otherwise wait
    # (imagegen.refill), until less than WORKER_REFILL_RESERVE_SECONDS of it is left or the queue has none. Never
    # less than an item needs to start (15 s) nor than one upstream call and its mirror: see worker_refill_until_s.
    worker_refill: bool = Field(True, alias="WORKER_REFILL")
    worker_refill_reserve_s: float = Field(60.0, alias="WORKER_REFILL_RESERVE_SECONDS", ge=20, le=900)
    # A delivery holds its item for the rest of its invocation (read from the Lambda context, so it follows the
    # function's Timeout whatever it is set to) plus this margin. A duplicate delivery waits for the lease.
    item_lease_margin_s: float = Field(30.0, alias="ITEM_LEASE_MARGIN_SECONDS", ge=1, le=600)
    # Development only: lets webhooks reach http://127.0.0.1 receivers on the local stack.
    webhook_allow_http: bool = Field(False, alias="WEBHOOK_ALLOW_HTTP")
    webhook_allowed_private_networks: NetworkList = Field(
        default_factory=list, alias="WEBHOOK_ALLOWED_PRIVATE_NETWORKS"
    )

    # Content moderation (Amazon Bedrock Guardrails, ApplyGuardrail): off by default, chosen per deployment.
    # prompt: the prompt is checked before the upstream call; image: the image before it is stored; both.
    moderation_mode: Literal["off", "prompt", "image", "both"] = Field("off", alias="MODERATION_MODE")
    moderation_guardrail_id: str | None = Field(None, alias="MODERATION_GUARDRAIL_ID")
    moderation_guardrail_version: str = Field(
        "DRAFT", alias="MODERATION_GUARDRAIL_VERSION", pattern=r"^(DRAFT|[1-9][0-9]{0,7})$"
    )
    # Time the upstream call leaves for the image check (with MIRROR_RESERVE_SECONDS for the download).
    moderation_reserve_s: float = Field(2.0, alias="MODERATION_RESERVE_SECONDS", ge=0, le=60)

    # HTTP API
    api_budget_s: float = Field(28.0, alias="API_BUDGET_SECONDS", gt=1, le=900)
    response_reserve_s: float = Field(1.0, alias="RESPONSE_RESERVE_SECONDS", ge=0, le=10)
    mirror_reserve_s: float = Field(4.0, alias="MIRROR_RESERVE_SECONDS", ge=0, le=60)

    @property
    def worker_refill_until_s(self) -> float:
        """The time an invocation must have left to take a message itself: the reserve, and at least what the
        longest upstream call and the mirror after it may take, so a taken item is never cut short by the
        invocation's end (a call abandoned mid-flight may still be billed)."""
        return max(self.worker_refill_reserve_s, self.upstream_read_timeout_s + self.mirror_reserve_s)

    @property
    def worker_items_in_flight(self) -> int:
        """Items one worker invocation works on at once (threads): ``ITEMS_PER_SLOT`` per upstream slot, so that
        while items claim, mirror and record (no slot held), others are already waiting for each slot."""
        return ITEMS_PER_SLOT * self.worker_threads

    def require(self, *fields: str) -> None:
        """Fail clearly when a feature needs settings this deployment does not have."""
        missing = [str(self.__class__.model_fields[name].alias) for name in fields if getattr(self, name) in (None, "")]
        if missing:
            raise ConfigurationError("invalid configuration: " + "; ".join(f"{name} is required" for name in missing))

    @property
    def moderates_prompts(self) -> bool:
        return self.moderation_mode in ("prompt", "both")

    @property
    def moderates_images(self) -> bool:
        return self.moderation_mode in ("image", "both")

    @model_validator(mode="after")
    def _moderation_has_a_guardrail(self) -> Settings:
        if self.moderation_mode != "off" and not self.moderation_guardrail_id:
            raise ValueError(f"MODERATION_GUARDRAIL_ID is required when MODERATION_MODE is {self.moderation_mode!r}")
        return self

    @model_validator(mode="after")
    def _budget_leaves_time_for_the_upstream(self) -> Settings:
        moderation = self.moderation_reserve_s if self.moderates_images else 0.0
        if self.api_budget_s <= self.response_reserve_s + self.mirror_reserve_s + moderation + 1:
            raise ValueError(
                "API_BUDGET_SECONDS must exceed RESPONSE_RESERVE_SECONDS + MIRROR_RESERVE_SECONDS + 1 "
                "(+ MODERATION_RESERVE_SECONDS when images are moderated; otherwise no request could reach the "
                "upstream)"
            )
        return self


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse settings from ``environ`` (default: ``os.environ``), naming every bad variable on failure."""
    env = os.environ if environ is None else environ
    try:
        return Settings.model_validate(dict(env))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "settings"
            reason = "is required" if error["type"] == "missing" else error["msg"]
            problems.append(f"{name} {reason}")
        raise ConfigurationError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this container, parsed once."""
    return load_settings()


class HttpSettings(BaseModel):
    """The few settings the API needs while its routes are declared (CORS, docs, console). Cheap, no AWS calls."""

    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)  # built by the API's first parse

    cors_allowed_origins: CsvList = Field(default_factory=list, alias="CORS_ALLOWED_ORIGINS")
    enable_docs: bool = Field(True, alias="ENABLE_DOCS")
    enable_console: bool = Field(True, alias="ENABLE_CONSOLE")


def load_http_settings(environ: Mapping[str, str] | None = None) -> HttpSettings:
    env = os.environ if environ is None else environ
    try:
        return HttpSettings.model_validate(dict(env))
    except ValidationError as exc:
        raise ConfigurationError(
            f"invalid configuration: {exc.errors()[0]['loc'][0]} {exc.errors()[0]['msg']}"
        ) from None
