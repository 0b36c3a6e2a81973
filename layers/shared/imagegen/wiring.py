"""Builds the service from settings, once per container (clients and HTTP sessions are reused while warm).

Clients are created on first use, never at import, so tests can start moto first and the cold start stays lean.
``AWS_ENDPOINT_URL`` (honoured by boto3 itself) points every client at the local stack; no code changes.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools.utilities.parameters import SecretsProvider
from botocore.config import Config

from imagegen.adapters.events import EventPublisher
from imagegen.adapters.flux import FluxClient
from imagegen.adapters.images_table import ImageRepository
from imagegen.adapters.job_objects import JobObjects
from imagegen.adapters.jobs_table import JobRepository
from imagegen.adapters.mirror import ImageMirror
from imagegen.adapters.moderation import GuardrailModerator
from imagegen.adapters.netguard import UrlGuard, guarded_session
from imagegen.adapters.queue import JobQueue
from imagegen.adapters.secrets import SubscriptionKeyProvider
from imagegen.adapters.webhooks import WebhookSender
from imagegen.errors import ContentBlockedError
from imagegen.fanout import FanOut
from imagegen.idempotency import IdempotentRunner
from imagegen.item_processor import ItemProcessor
from imagegen.jobs import JobService
from imagegen.models import BlockedNotice, ControlMessage
from imagegen.results import AnnouncingProcessor, JobResults
from imagegen.service import ImageService
from imagegen.settings import Settings, get_settings

# Short timeouts: the API's 29 s budget is for the upstream, not for a slow AWS dependency.
_BOTO_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3},
    connect_timeout=2,
    read_timeout=5,
    max_pool_connections=50,  # the worker runs up to WORKER_THREADS items at once on shared clients
    signature_version="s3v4",
)

# Virtual-hosted URLs on the Region's own endpoint, us-east-1 included (not the legacy global s3.amazonaws.com).
S3_REGIONAL = Config(s3={"addressing_style": "virtual", "us_east_1_regional_endpoint": "regional"})


# Moderation sits on the request path and fails closed: one retry of a throttle or 5xx, then a 503 with Retry-After.
# No signature_version override: that setting is for S3 presigning.
_MODERATION_CONFIG = Config(
    retries={"mode": "standard", "total_max_attempts": 2},
    connect_timeout=2,
    read_timeout=5,
    max_pool_connections=50,
)


def aws_client(service: str) -> Any:
    if service == "s3" and not os.environ.get("AWS_ENDPOINT_URL"):
        # Presigned URLs must name the bucket's own Region: boto3 signs for the global endpoint otherwise, which
        # redirects (and breaks the signature) for new buckets outside us-east-1 and in opt-in Regions. The
        # endpoint itself comes from botocore's rules for the Region's partition (amazonaws.com.cn in China).
        return boto3.client(
            "s3",
            region_name=boto3.session.Session().region_name or "us-east-1",
            config=_BOTO_CONFIG.merge(S3_REGIONAL),
        )
    return boto3.client(service, config=_BOTO_CONFIG)  # type: ignore[call-overload]


def build_image_service(settings: Settings) -> ImageService:
    s3 = aws_client("s3")
    keys = SubscriptionKeyProvider(
        settings.flux_secret_id,
        max_age_s=settings.secret_max_age_s,
        provider=SecretsProvider(boto3_client=aws_client("secretsmanager")),
    )
    flux = FluxClient(
        settings.flux_api_url,
        keys,
        connect_timeout_s=settings.upstream_connect_timeout_s,
        read_timeout_s=settings.upstream_read_timeout_s,
        max_attempts=settings.upstream_max_attempts,
        backoff_base_s=settings.upstream_backoff_base_s,
        backoff_max_s=settings.upstream_backoff_max_s,
        allow_http_output=settings.image_allow_http,
    )
    mirror = ImageMirror(
        s3,
        settings.images_bucket,
        UrlGuard(tuple(settings.image_host_allowlist), allow_http=settings.image_allow_http),
        session=guarded_session(settings.image_allowed_private_networks),
        max_bytes=settings.max_image_bytes,
        connect_timeout_s=settings.upstream_connect_timeout_s,
    )
    repository = ImageRepository(aws_client("dynamodb"), settings.images_table, settings.retention_days)
    moderator = None
    if settings.moderation_mode != "off":
        assert settings.moderation_guardrail_id is not None  # the settings' validator requires it
        moderator = GuardrailModerator(
            settings.moderation_guardrail_id,
            settings.moderation_guardrail_version,
            client_factory=lambda: boto3.client("bedrock-runtime", config=_MODERATION_CONFIG),
        )
    return ImageService(
        flux,
        mirror,
        repository,
        s3,
        presigned_url_ttl_s=settings.presigned_url_ttl_s,
        mirror_reserve_s=settings.mirror_reserve_s,
        moderator=moderator,
        moderate_prompts=settings.moderates_prompts,
        moderate_images=settings.moderates_images,
        moderation_reserve_s=settings.moderation_reserve_s,
        on_blocked=_hand_blocked_to_worker if moderator is not None and settings.jobs_queue_url else None,
    )


def _hand_blocked_to_worker(exc: ContentBlockedError) -> None:
    """A synchronous block, queued for the worker to announce: the API itself never publishes events."""
    assert exc.image_id is not None
    notice = BlockedNotice(image_id=exc.image_id, target=exc.target, categories=exc.categories)  # type: ignore[arg-type]
    job_queue().send_control(ControlMessage(blocked=notice))


@lru_cache(maxsize=1)
def image_service() -> ImageService:
    return build_image_service(get_settings())


@lru_cache(maxsize=1)
def job_repository() -> JobRepository:
    settings = get_settings()
    return JobRepository(aws_client("dynamodb"), settings.images_table, settings.retention_days)


@lru_cache(maxsize=1)
def job_queue() -> JobQueue:
    settings = get_settings()
    settings.require("jobs_queue_url")
    assert settings.jobs_queue_url is not None
    return JobQueue(aws_client("sqs"), settings.jobs_queue_url, settings.jobs_dlq_url)


@lru_cache(maxsize=1)
def idempotent_runner() -> IdempotentRunner:
    settings = get_settings()
    settings.require("idempotency_table")
    assert settings.idempotency_table is not None
    return IdempotentRunner(settings.idempotency_table, settings.idempotency_ttl_s, aws_client("dynamodb"))


@lru_cache(maxsize=1)
def job_objects() -> JobObjects:
    settings = get_settings()
    return JobObjects(aws_client("s3"), settings.images_bucket, url_ttl_s=settings.presigned_url_ttl_s)


@lru_cache(maxsize=1)
def job_service() -> JobService:
    settings = get_settings()
    return JobService(
        job_repository(),
        job_queue(),
        image_service(),
        job_objects(),
        allow_http_webhooks=settings.webhook_allow_http,
    )


@lru_cache(maxsize=1)
def item_processor() -> ItemProcessor:
    settings = get_settings()
    settings.require("event_bus_name", "webhook_secret_id")
    assert settings.event_bus_name is not None and settings.webhook_secret_id is not None
    secrets = SecretsProvider(boto3_client=aws_client("secretsmanager"))
    secret_id = settings.webhook_secret_id

    def webhook_secret() -> str:
        return str(secrets.get(secret_id, max_age=settings.secret_max_age_s))

    return AnnouncingProcessor(
        job_repository(),
        image_service(),
        EventPublisher(aws_client("events"), settings.event_bus_name),
        WebhookSender(
            webhook_secret,
            allow_http=settings.webhook_allow_http,
            allowed_private_networks=settings.webhook_allowed_private_networks,
        ),
        job_queue(),  # its DLQ takes the messages nobody can process; control messages continue a cancelation
        max_receive_count=settings.max_receive_count,
        # The deadline stops settings.worker_reserve_s before the invocation ends; the lease outlives the end.
        lease_margin_s=settings.worker_reserve_s + settings.item_lease_margin_s,
        results=JobResults(job_repository(), job_objects()),
        expander=fan_out,  # a direct message of several images becomes a job through the fan-out
    )


@lru_cache(maxsize=1)
def fan_out() -> FanOut:
    settings = get_settings()
    processor = item_processor()
    return FanOut(
        job_repository(),
        job_objects(),
        job_queue(),
        on_complete=processor.announce,
        allow_http_webhooks=settings.webhook_allow_http,
    )
