"""HTTP helpers shared by the upstream client and the image mirror.

``requests`` only bounds each socket read (a server dripping one byte a second never trips its read timeout),
so bodies are read with ``read1`` and the deadline is checked between reads: the overshoot is at most one
inter-byte gap of the server, and a silent server is cut by the socket timeout, set from the same budget.
"""

from __future__ import annotations

from collections.abc import Iterator

import requests
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

from imagegen.budget import Deadline

CHUNK_BYTES = 1024 * 1024


class BodyTooLargeError(Exception):
    """The body exceeded the allowed size."""


class DeadlineExceededError(Exception):
    """The body did not arrive within the time budget."""


class IncompleteBodyError(Exception):
    """The connection broke before the whole body arrived (truncated, reset, undecodable)."""


def iter_body(
    response: requests.Response, deadline: Deadline, max_bytes: int, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[bytes]:
    """Yield the (decoded) body of a ``stream=True`` response in chunks of at most ``chunk_bytes``."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLargeError(f"declared size {int(declared)} bytes exceeds the limit of {max_bytes} bytes")
    received = 0
    raw = response.raw
    while True:
        if deadline.expired():
            raise DeadlineExceededError("the body did not arrive within the time budget")
        try:
            chunk = raw.read1(chunk_bytes, decode_content=True)
        except ReadTimeoutError as exc:
            raise DeadlineExceededError("the server stopped sending the body") from exc
        except (Urllib3Error, OSError) as exc:
            raise IncompleteBodyError("the connection broke before the whole body arrived") from exc
        if not chunk:
            return
        received += len(chunk)
        if received > max_bytes:
            raise BodyTooLargeError(f"body exceeds the limit of {max_bytes} bytes")
        yield chunk


def read_body(response: requests.Response, deadline: Deadline, max_bytes: int) -> bytes:
    return b"".join(iter_body(response, deadline, max_bytes))
