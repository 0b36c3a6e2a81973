"""The local AWS: a moto server on loopback, seeded with what template.yaml would create.

Seeding reads the template (``devstack.template_resources``: the tables' keys and TTL attributes, the queues'
visibility timeout, retention and redrive count, the bucket's public access block, encryption, ownership and
lifecycle rules, the bus name and the Image Requested rule), so the code under test meets the same shapes it will
meet in a real account and a template change reaches the local stack. The local names and the secrets' values
(the deployer brings the subscription key; CloudFormation generates the webhook key) are chosen here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from devstack.moderation_standin import GUARDRAIL_ID
from devstack.serving import PARENT_PID_VARIABLE, check_free

from .template_resources import TableSpec, seed_spec

LOCAL_DIR = str(Path(__file__).resolve().parents[1])  # for the child: `python -m devstack.moto_server`
REGION = "us-east-1"
# What the local stack lets the service fetch from besides public addresses: its own loopback services (the
# emulator's images, webhook receivers). Link-local (cloud metadata) and private networks stay refused.
LOOPBACK_NETWORKS = "127.0.0.0/8,::1/128"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_SESSION_TOKEN": "local",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}


@dataclass(frozen=True)
class Resources:
    bucket: str = "flux-images-local"
    table: str = "flux-images-local"
    secret_name: str = "flux-image-service/subscription-key"  # noqa: S105 - a name, not a value
    secret_value: str = "FLUX_API_KEY"  # noqa: S105 - the documented dummy key of the local emulator
    jobs_queue: str = "flux-images-jobs"
    jobs_dlq: str = "flux-images-jobs-dlq"
    # From template.yaml (JobsQueue's RedrivePolicy and VisibilityTimeout, EventBus's Name).
    max_receive_count: int = field(default_factory=lambda: seed_spec().jobs_queue.max_receive_count or 5)
    visibility_timeout_s: int = field(default_factory=lambda: seed_spec().jobs_queue.visibility_timeout_s or 30)
    event_bus: str = field(default_factory=lambda: seed_spec().event_bus_name)
    events_capture_queue: str = "flux-images-events"  # every event of the bus, for developers and tests to read
    webhook_secret_name: str = "flux-image-service/webhook-signing-secret"  # noqa: S105 - a name
    webhook_secret_value: str = "local-webhook-signing-secret-0123456789"  # noqa: S105 - a local dummy
    idempotency_table: str = "flux-images-local-idempotency"


@dataclass(frozen=True)
class Seeded:
    """What seeding created, as the functions' environment needs it."""

    secret_arn: str
    webhook_secret_arn: str
    jobs_queue_url: str
    jobs_dlq_url: str
    events_queue_url: str


class LocalAws:
    """A moto server in a child process (so its work runs on another core than the functions'), with helpers
    to seed and reset it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, start_timeout_s: float = 30.0) -> None:
        self.host = host
        self.port = port
        self._start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._clients: dict[tuple[str, str], Any] = {}
        self._clients_lock = threading.Lock()

    def start(self) -> LocalAws:
        if not self.port:
            with socket.socket() as probe:
                probe.bind((self.host, 0))
                self.port = probe.getsockname()[1]
        else:
            try:  # a clear error instead of a server that never answers
                check_free(self.host, self.port)
            except OSError as exc:
                raise OSError(f"moto cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter running moto
            [sys.executable, "-m", "devstack.moto_server", "-H", self.host, "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own session: Ctrl-C in a terminal reaches the whole foreground group, and moto would die while
            # the pollers still poll it (a false "ReceiveMessage failed"); stop() ends it after them instead.
            start_new_session=True,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [LOCAL_DIR, os.environ.get("PYTHONPATH")])),
                PARENT_PID_VARIABLE: str(os.getpid()),  # it exits if this process dies without stop()
            },
        )
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                error = (self._process.stderr.read() if self._process.stderr else b"").decode(errors="replace")
                raise OSError(f"moto exited at start on {self.host}:{self.port}: {error.strip()[-500:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise OSError(f"moto did not start listening on {self.host}:{self.port} in {self._start_timeout_s} s")
        if self._process.stderr is not None:  # warnings and errors: drain them so moto never blocks
            threading.Thread(target=self._process.stderr.read, daemon=True).start()
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> LocalAws:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self, service: str) -> Any:
        """The moto server's client for ``service``, made once per service and endpoint and shared (boto3's clients
        are thread-safe): making one costs 5-25 ms of CPU, and the tests' helpers ask for thousands."""
        key = (service, self.endpoint_url)
        with self._clients_lock:
            if key not in self._clients:
                self._clients[key] = boto3.client(
                    service,  # type: ignore[call-overload]
                    endpoint_url=self.endpoint_url,
                    region_name=REGION,
                    aws_access_key_id="local",
                    aws_secret_access_key="local",  # noqa: S106
                )
            return self._clients[key]

    def reset(self) -> None:
        import requests

        requests.post(f"{self.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()

    def seed(self, resources: Resources | None = None) -> Seeded:
        """Create what template.yaml creates (and the subscription key secret the deployer brings)."""
        resources = resources or Resources()
        spec = seed_spec()
        s3 = self.client("s3")
        s3.create_bucket(Bucket=resources.bucket)
        s3.put_public_access_block(
            Bucket=resources.bucket, PublicAccessBlockConfiguration=dict(spec.bucket.public_access_block)
        )
        s3.put_bucket_encryption(
            Bucket=resources.bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": spec.bucket.sse_algorithm}}]
            },
        )
        if spec.bucket.object_ownership:
            s3.put_bucket_ownership_controls(
                Bucket=resources.bucket,
                OwnershipControls={"Rules": [{"ObjectOwnership": spec.bucket.object_ownership}]},
            )
        if spec.bucket.lifecycle_rules:
            s3.put_bucket_lifecycle_configuration(
                Bucket=resources.bucket,
                LifecycleConfiguration={"Rules": [dict(rule) for rule in spec.bucket.lifecycle_rules]},
            )
        dynamodb = self.client("dynamodb")
        _create_table(dynamodb, resources.table, spec.images_table)
        secrets = self.client("secretsmanager")
        secret = secrets.create_secret(Name=resources.secret_name, SecretString=resources.secret_value)
        webhook_secret = secrets.create_secret(
            Name=resources.webhook_secret_name, SecretString=resources.webhook_secret_value
        )
        _create_table(dynamodb, resources.idempotency_table, spec.idempotency_table)
        sqs = self.client("sqs")
        dlq_url = sqs.create_queue(QueueName=resources.jobs_dlq, Attributes=spec.jobs_dlq.attributes())["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queue_url = sqs.create_queue(
            QueueName=resources.jobs_queue,
            Attributes={
                **spec.jobs_queue.attributes(),
                "VisibilityTimeout": str(resources.visibility_timeout_s),
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": resources.max_receive_count}
                ),
            },
        )["QueueUrl"]
        events_queue_url = sqs.create_queue(QueueName=resources.events_capture_queue)["QueueUrl"]
        events_queue_arn = sqs.get_queue_attributes(QueueUrl=events_queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        events = self.client("events")
        events.create_event_bus(Name=resources.event_bus)
        events.put_rule(
            Name="capture-all",
            EventBusName=resources.event_bus,
            EventPattern=json.dumps({"source": [spec.service_event_source]}),
        )
        events.put_targets(
            Rule="capture-all", EventBusName=resources.event_bus, Targets=[{"Id": "capture", "Arn": events_queue_arn}]
        )
        # template.yaml's ImageRequestedRule: "Image Requested" from any other source becomes a job.
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(
            Name="image-requested",
            EventBusName=resources.event_bus,
            EventPattern=json.dumps(spec.image_requested_pattern),
        )
        events.put_targets(
            Rule="image-requested", EventBusName=resources.event_bus, Targets=[{"Id": "jobs", "Arn": queue_arn}]
        )
        return Seeded(
            secret_arn=str(secret["ARN"]),
            webhook_secret_arn=str(webhook_secret["ARN"]),
            jobs_queue_url=queue_url,
            jobs_dlq_url=dlq_url,
            events_queue_url=events_queue_url,
        )


def _create_table(dynamodb: Any, name: str, table: TableSpec) -> None:
    dynamodb.create_table(
        TableName=name,
        BillingMode=table.billing_mode,
        AttributeDefinitions=[dict(item) for item in table.attribute_definitions],
        KeySchema=[dict(item) for item in table.key_schema],
    )
    if table.ttl_attribute:
        dynamodb.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl_attribute}
        )


# Function settings a developer may set for ``make run`` (the README names them): present in the stack's own
# environment, each reaches the functions exactly as given, whatever the stack would have chosen. Nothing the
# README names is ever dropped or silently replaced.
PASSTHROUGH = (
    "IMAGE_HOST_ALLOWLIST",
    "IMAGE_ALLOW_HTTP",
    "IMAGE_ALLOWED_PRIVATE_NETWORKS",
    "WEBHOOK_ALLOW_HTTP",
    "WEBHOOK_ALLOWED_PRIVATE_NETWORKS",
    "CORS_ALLOWED_ORIGINS",
    "ENABLE_DOCS",
    "ENABLE_CONSOLE",
    "POWERTOOLS_LOG_LEVEL",
    "POWERTOOLS_METRICS_DISABLED",
)
# What the stack relaxes when the upstream is on loopback (the emulator, or any FLUX_API_URL on 127.0.0.0/8 or
# ::1): the mirror may fetch over http from loopback and webhooks may reach loopback receivers.
LOOPBACK_RELAXATIONS = {
    "IMAGE_ALLOW_HTTP": "true",
    "IMAGE_ALLOWED_PRIVATE_NETWORKS": LOOPBACK_NETWORKS,
    "WEBHOOK_ALLOW_HTTP": "true",
    "WEBHOOK_ALLOWED_PRIVATE_NETWORKS": LOOPBACK_NETWORKS,
}
# Who the functions say they are in logs and metrics (template.yaml's Globals): Powertools reads both when a
# module builds its Logger and Metrics, at import.
POWERTOOLS_IDENTITY = {"POWERTOOLS_SERVICE_NAME": "image-api", "POWERTOOLS_METRICS_NAMESPACE": "FluxImageService"}
STRICT = {
    "IMAGE_ALLOW_HTTP": "false",
    "IMAGE_ALLOWED_PRIVATE_NETWORKS": "",
    "WEBHOOK_ALLOW_HTTP": "false",
    "WEBHOOK_ALLOWED_PRIVATE_NETWORKS": "",
}


def relaxed_settings(env: Mapping[str, str]) -> list[str]:
    """The guards ``env`` loosens against the deployed defaults, one phrase each (for the banner)."""
    phrases = []
    for what, prefix in (("mirror", "IMAGE"), ("webhooks", "WEBHOOK")):
        allowances = []
        if env.get(f"{prefix}_ALLOW_HTTP", "false").strip().lower() in ("1", "true", "yes", "on"):
            allowances.append(f"http ({prefix}_ALLOW_HTTP)")
        if networks := env.get(f"{prefix}_ALLOWED_PRIVATE_NETWORKS", "").strip():
            allowances.append(f"{networks} ({prefix}_ALLOWED_PRIVATE_NETWORKS)")
        if allowances:
            phrases.append(f"{what}: " + ", ".join(allowances))
    return phrases


def service_environment(
    aws: LocalAws,
    resources: Resources,
    seeded: Seeded,
    *,
    flux_api_url: str,
    image_host_allowlist: str,
    allow_local_images: bool,
    moderation_url: str | None = None,
    moderation_mode: str = "off",
    extra: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment variables template.yaml gives the functions, pointed at the local stack.

    ``allow_local_images`` relaxes the address guards for loopback (``LOOPBACK_RELAXATIONS``); then every
    ``PASSTHROUGH`` variable set in ``environ`` (default: this process's environment) wins; ``extra`` last."""
    environ = os.environ if environ is None else environ
    env = {
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": aws.endpoint_url,
        **POWERTOOLS_IDENTITY,
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "INFO",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "FLUX_API_URL": flux_api_url,
        "FLUX_SECRET_ID": seeded.secret_arn,
        "JOBS_QUEUE_URL": seeded.jobs_queue_url,
        "JOBS_DLQ_URL": seeded.jobs_dlq_url,
        "EVENT_BUS_NAME": resources.event_bus,
        "WEBHOOK_SECRET_ID": seeded.webhook_secret_arn,
        "IDEMPOTENCY_TABLE": resources.idempotency_table,
        "MAX_RECEIVE_COUNT": str(resources.max_receive_count),
        "IMAGES_BUCKET": resources.bucket,
        "IMAGES_TABLE": resources.table,
        "IMAGE_HOST_ALLOWLIST": image_host_allowlist,
        **(LOOPBACK_RELAXATIONS if allow_local_images else STRICT),
        "CORS_ALLOWED_ORIGINS": "http://localhost:3000",
        "ENABLE_DOCS": "true",
        "ENABLE_CONSOLE": "true",
    }
    if moderation_url:  # the ApplyGuardrail stand-in (moto has no Bedrock Guardrails); boto3 reads this variable
        env.update(
            {
                "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": moderation_url,
                "MODERATION_MODE": moderation_mode,
                "MODERATION_GUARDRAIL_ID": GUARDRAIL_ID,
                "MODERATION_GUARDRAIL_VERSION": "1",
            }
        )
    env.update({name: environ[name] for name in PASSTHROUGH if environ.get(name)})  # empty counts as unset
    env.update(extra or {})
    return env
