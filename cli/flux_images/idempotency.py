"""The Idempotency-Key rule, in one place for the client and the ``flux-images`` CLI.

- ``new_key()``: the client's automatic key, one per call and reused by every retry of that call, so a retried
  ``POST`` never creates a second image or job, while two calls with the same content are two requests.
- ``content_key(body)``: a hash of the exact request body, for callers that want a re-run of the same input to
  find the job created before (the CLI's default): a changed input gives a new key instead of a
  ``422 idempotency_key_reused``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

PREFIX = "flux-images-"
MAX_KEY_LENGTH = 255


def new_key() -> str:
    """A fresh random key (128 bits)."""
    return PREFIX + uuid.uuid4().hex


def canonical(value: Any) -> bytes:
    """The canonical JSON the content keys hash: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def content_key(body: Mapping[str, Any]) -> str:
    """The key of a request body: the same body gives the same key, any change gives another."""
    return PREFIX + hashlib.sha256(canonical(body)).hexdigest()


def streamed_content_key(items: Iterable[bytes], extras: Mapping[str, Any]) -> str:
    """``content_key({"items": [...], **extras})`` from each item's ``canonical`` bytes, one at a time, without
    building the body (an upload has up to 100,000 items)."""
    digest = hashlib.sha256(b'{"items":[')
    for number, item in enumerate(items):
        digest.update((b"," if number else b"") + item)
    digest.update(b"]")
    for name in sorted(extras):  # "items" < "metadata" < "webhook_url": sort_keys order
        digest.update(b"," + canonical(name) + b":" + canonical(extras[name]))
    digest.update(b"}")
    return PREFIX + digest.hexdigest()


def check_key(key: str, room: int = MAX_KEY_LENGTH) -> str:
    """``key`` when it is 1–``room`` printable ASCII characters, not starting or ending with a space (HTTP trims a
    header's outer spaces, so the API's published header pattern has none); ValueError saying why otherwise.

    The client's copy of the service's rule (``imagegen.idempotency.validate_key`` and the header's pattern in
    docs/openapi.json; the client is installed without the service's code): tests/unit/test_cli_parity.py holds
    the three to the same answers."""
    if not key or len(key) > room or not key.isascii() or not key.isprintable() or key != key.strip(" "):
        raise ValueError(
            f"an Idempotency-Key must be 1–{room} printable ASCII characters, without a space at either end"
        )
    return key
