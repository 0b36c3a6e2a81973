"""``verify_webhook``: check a job's webhook delivery as the service signs it (Standard Webhooks).

The service sends ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``: space-separated
``v1,<base64 HMAC-SHA256>`` of ``"{id}.{timestamp}.{body}"``. The HMAC key is the secret's bytes: for a
``whsec_<base64>`` secret the decoded base64, for any other string its UTF-8 bytes.

Written with the standard library rather than the ``standardwebhooks`` package: its ``verify`` has a fixed
five-minute tolerance and reads the wall clock itself (no ``now`` to test against), and the client should not
pull in that package's HTTP dependencies for forty lines of HMAC.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from flux_images.errors import WebhookVerificationError

DEFAULT_TOLERANCE_S = 300


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing header {name}")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a webhook secret, as the service derives it."""
    if not secret:
        raise WebhookVerificationError("the webhook secret is empty")
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            raise WebhookVerificationError("the webhook secret starts with whsec_ but is not base64") from None
    return secret.encode("utf-8")


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes | str,
    secret: str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> Any:
    """The delivery's JSON payload when its signature is valid and its timestamp within ``tolerance_s`` of ``now``
    (default: the clock); ``WebhookVerificationError`` saying what is wrong otherwise (never the secret).

    ``body`` must be the raw request body, exactly as received: re-serialising the JSON changes the bytes signed.
    """
    message_id = _header(headers, "webhook-id")
    timestamp_text = _header(headers, "webhook-timestamp").strip()
    signatures = _header(headers, "webhook-signature")
    if not timestamp_text.isascii() or not timestamp_text.isdigit():
        raise WebhookVerificationError("webhook-timestamp is not a number of seconds")
    timestamp = int(timestamp_text)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError(
            f"webhook-timestamp is {current - timestamp:+.0f} s from now; at most {tolerance_s:g} s are accepted"
        )
    raw = body if isinstance(body, bytes) else body.encode("utf-8")
    signed = f"{message_id}.{timestamp_text}.".encode() + raw
    expected = base64.b64encode(hmac.new(secret_key(secret), signed, hashlib.sha256).digest())
    matched = False
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode("ascii", "replace"), expected):
            matched = True  # no early exit: every candidate is compared, in constant time each
    if not matched:
        raise WebhookVerificationError("no valid v1 signature in webhook-signature")
    try:
        return json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
