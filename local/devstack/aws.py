"""The local AWS: a moto server on loopback, seeded with what template.yaml would create.

Seeding mirrors the template (bucket private and encrypted, table keyed ``pk``/``sk`` with TTL on
``expires_at``, the subscription key in Secrets Manager), so the code under test meets the same shapes it will
meet in a real account.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
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


class LocalAws:
    """A moto server in this process (threaded), with helpers to seed and reset it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        self.host = host
        self.port = port

    def start(self) -> LocalAws:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access line per AWS call
        self._server.start()
        self.port = self._server._server.server_port  # type: ignore[union-attr]  # the bound port when 0 was asked
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> LocalAws:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self, service: str) -> Any:
        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id="local",
            aws_secret_access_key="local",  # noqa: S106
        )

    def reset(self) -> None:
        import requests

        requests.post(f"{self.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()

    def seed(self, resources: Resources | None = None) -> str:
        """Create the bucket, the table and the secret; return the secret's ARN."""
        resources = resources or Resources()
        s3 = self.client("s3")
        s3.create_bucket(Bucket=resources.bucket)
        s3.put_public_access_block(
            Bucket=resources.bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        s3.put_bucket_encryption(
            Bucket=resources.bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )
        dynamodb = self.client("dynamodb")
        dynamodb.create_table(
            TableName=resources.table,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        )
        dynamodb.update_time_to_live(
            TableName=resources.table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
        )
        secret = self.client("secretsmanager").create_secret(
            Name=resources.secret_name, SecretString=resources.secret_value
        )
        return str(secret["ARN"])


def service_environment(
    aws: LocalAws,
    resources: Resources,
    secret_id: str,
    *,
    flux_api_url: str,
    image_host_allowlist: str,
    allow_local_images: bool,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment variables template.yaml gives the functions, pointed at the local stack."""
    env = {
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": aws.endpoint_url,
        "POWERTOOLS_SERVICE_NAME": "image-api",
        "POWERTOOLS_METRICS_NAMESPACE": "FluxImageService",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": os.environ.get("POWERTOOLS_LOG_LEVEL", "INFO"),
        "POWERTOOLS_METRICS_DISABLED": os.environ.get("POWERTOOLS_METRICS_DISABLED", "true"),
        "FLUX_API_URL": flux_api_url,
        "FLUX_SECRET_ID": secret_id,
        "IMAGES_BUCKET": resources.bucket,
        "IMAGES_TABLE": resources.table,
        "IMAGE_HOST_ALLOWLIST": image_host_allowlist,
        "IMAGE_ALLOW_HTTP": "true" if allow_local_images else "false",
        "IMAGE_ALLOW_PRIVATE_ADDRESSES": "true" if allow_local_images else "false",
        "CORS_ALLOWED_ORIGINS": os.environ.get("CORS_ALLOWED_ORIGINS", "http://localhost:3000"),
        "ENABLE_DOCS": os.environ.get("ENABLE_DOCS", "true"),
    }
    env.update(extra or {})
    return env
