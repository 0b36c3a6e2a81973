"""The resources the local stack seeds into moto, read from ``template.yaml`` so the two cannot drift apart.

:func:`read_seed_spec` evaluates (with the parameters' defaults, through ``devstack.template``) what moto can
reproduce of the template's data resources: the images and idempotency tables (billing mode, key schema,
attribute definitions, TTL attribute), the jobs queue and its dead-letter queue (visibility timeout, retention,
the redrive ``maxReceiveCount``), the images bucket (public access block, default encryption, object ownership,
lifecycle rules), the event bus
name and the ``ImageRequestedRule`` pattern. ``devstack.aws`` seeds from it.

What does not live here: the seeding itself and the local names of the resources (``devstack.aws``: the
template lets CloudFormation name most of them), and what moto does not enforce (bucket policies, KMS keys,
point-in-time recovery, deletion protection).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .template import Intrinsics, load_template

__all__ = ["TEMPLATE", "BucketSpec", "QueueSpec", "SeedSpec", "TableSpec", "read_seed_spec", "seed_spec"]

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
"""The service's template (the repository root's ``template.yaml``)."""


@dataclass(frozen=True)
class TableSpec:
    """A DynamoDB table as ``create_table`` and ``update_time_to_live`` take it."""

    billing_mode: str
    attribute_definitions: tuple[Mapping[str, str], ...]
    key_schema: tuple[Mapping[str, str], ...]
    ttl_attribute: str | None


@dataclass(frozen=True)
class QueueSpec:
    """An SQS queue's attributes the local stack reproduces (``None``: SQS's default)."""

    visibility_timeout_s: int | None
    message_retention_s: int | None
    max_receive_count: int | None
    """The redrive policy's ``maxReceiveCount``; ``None`` when the queue has no dead-letter queue."""

    def attributes(self) -> dict[str, str]:
        """``create_queue`` attributes, the redrive policy aside (it needs the dead-letter queue's ARN)."""
        attributes = {}
        if self.visibility_timeout_s is not None:
            attributes["VisibilityTimeout"] = str(self.visibility_timeout_s)
        if self.message_retention_s is not None:
            attributes["MessageRetentionPeriod"] = str(self.message_retention_s)
        return attributes


@dataclass(frozen=True)
class BucketSpec:
    """The images bucket's protections as the S3 API takes them."""

    public_access_block: Mapping[str, bool]
    sse_algorithm: str
    object_ownership: str | None = None
    lifecycle_rules: tuple[Mapping[str, Any], ...] = ()
    """In the S3 API's shape (``put_bucket_lifecycle_configuration``), converted from CloudFormation's."""


@dataclass(frozen=True)
class SeedSpec:
    """Everything the local stack seeds that the template defines."""

    images_table: TableSpec
    idempotency_table: TableSpec
    jobs_queue: QueueSpec
    jobs_dlq: QueueSpec
    bucket: BucketSpec
    event_bus_name: str
    image_requested_pattern: Mapping[str, Any]

    @property
    def service_event_source(self) -> str:
        """The ``source`` of the service's own events: the one the Image Requested rule refuses to route back
        (``source: [{anything-but: [<it>]}]``), so the template says it once."""
        for entry in self.image_requested_pattern.get("source") or []:
            if isinstance(entry, Mapping) and entry.get("anything-but"):
                excluded = entry["anything-but"]
                return str(excluded[0] if isinstance(excluded, list) else excluded)
        raise ValueError("ImageRequestedRule no longer names the service's own source (anything-but)")


def _properties(template: Mapping[str, Any], intrinsics: Intrinsics, logical_id: str, type_name: str) -> Any:
    resource = (template.get("Resources") or {}).get(logical_id)
    if not isinstance(resource, dict) or resource.get("Type") != type_name:
        raise ValueError(f"template: no {type_name} named {logical_id!r} (the local stack seeds it)")
    return intrinsics.resolve(resource.get("Properties") or {})


def _table(properties: Mapping[str, Any]) -> TableSpec:
    ttl = properties.get("TimeToLiveSpecification") or {}
    enabled = ttl.get("Enabled") in (True, "true", "True")
    return TableSpec(
        billing_mode=str(properties.get("BillingMode", "PROVISIONED")),
        attribute_definitions=tuple(dict(item) for item in properties.get("AttributeDefinitions") or []),
        key_schema=tuple(dict(item) for item in properties.get("KeySchema") or []),
        ttl_attribute=str(ttl["AttributeName"]) if enabled and ttl.get("AttributeName") else None,
    )


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _queue(properties: Mapping[str, Any]) -> QueueSpec:
    redrive = properties.get("RedrivePolicy") or {}
    return QueueSpec(
        visibility_timeout_s=_optional_int(properties.get("VisibilityTimeout")),
        message_retention_s=_optional_int(properties.get("MessageRetentionPeriod")),
        max_receive_count=_optional_int(redrive.get("maxReceiveCount")),
    )


def _bucket(properties: Mapping[str, Any]) -> BucketSpec:
    block = properties.get("PublicAccessBlockConfiguration") or {}
    rules = (properties.get("BucketEncryption") or {}).get("ServerSideEncryptionConfiguration") or []
    default = (rules[0] if rules else {}).get("ServerSideEncryptionByDefault") or {}
    ownership = (properties.get("OwnershipControls") or {}).get("Rules") or []
    return BucketSpec(
        public_access_block={
            name: block.get(name) in (True, "true", "True")
            for name in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
        },
        sse_algorithm=str(default.get("SSEAlgorithm", "AES256")),
        object_ownership=next(
            (
                str(rule["ObjectOwnership"])
                for rule in ownership
                if isinstance(rule, dict) and "ObjectOwnership" in rule
            ),
            None,
        ),
        lifecycle_rules=tuple(
            _lifecycle_rule(rule) for rule in (properties.get("LifecycleConfiguration") or {}).get("Rules") or []
        ),
    )


_LIFECYCLE_KEYS = {"Id", "Status", "Prefix", "ExpirationInDays", "AbortIncompleteMultipartUpload"}


def _lifecycle_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """A CloudFormation lifecycle rule in the S3 API's shape; ``ValueError`` for a key not reproduced locally."""
    if unknown := sorted(set(rule) - _LIFECYCLE_KEYS):
        raise ValueError(f"ImagesBucket lifecycle rule {rule.get('Id')!r}: {', '.join(unknown)} not reproduced locally")
    converted: dict[str, Any] = {
        "ID": str(rule["Id"]),
        "Status": str(rule.get("Status", "Enabled")),
        "Filter": {"Prefix": str(rule.get("Prefix", ""))},
    }
    if "ExpirationInDays" in rule:
        converted["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
    if abort := rule.get("AbortIncompleteMultipartUpload"):
        converted["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": int(abort["DaysAfterInitiation"])}
    return converted


def read_seed_spec(template_path: str | Path = TEMPLATE, *, parameters: Mapping[str, Any] | None = None) -> SeedSpec:
    """What the local stack seeds, evaluated from the template (parameters' defaults unless overridden).

    ``ValueError`` names a resource the template no longer declares (seeding would otherwise invent it)."""
    template = load_template(template_path)
    intrinsics = Intrinsics(template, parameters)

    def props(logical_id: str, type_name: str) -> Any:
        return _properties(template, intrinsics, logical_id, type_name)

    rule = props("ImageRequestedRule", "AWS::Events::Rule")
    return SeedSpec(
        images_table=_table(props("ImagesTable", "AWS::DynamoDB::Table")),
        idempotency_table=_table(props("IdempotencyTable", "AWS::DynamoDB::Table")),
        jobs_queue=_queue(props("JobsQueue", "AWS::SQS::Queue")),
        jobs_dlq=_queue(props("JobsDeadLetterQueue", "AWS::SQS::Queue")),
        bucket=_bucket(props("ImagesBucket", "AWS::S3::Bucket")),
        event_bus_name=str(props("EventBus", "AWS::Events::EventBus")["Name"]),
        image_requested_pattern=dict(rule["EventPattern"]),
    )


@functools.cache
def seed_spec() -> SeedSpec:
    """:func:`read_seed_spec` of the service's own template, read once per process."""
    return read_seed_spec(TEMPLATE)
