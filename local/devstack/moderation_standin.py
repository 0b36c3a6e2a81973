"""Local stand-in for Amazon Bedrock Guardrails' ``ApplyGuardrail`` (moto does not implement it), pure stdlib.

It answers the real REST-JSON wire format, so the service's boto3 ``bedrock-runtime`` client reaches it unchanged
through ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME``::

    POST /guardrail/{guardrailIdentifier}/version/{guardrailVersion}/apply
        {"source": "INPUT"|"OUTPUT", "content": [{"text": {"text": ...}} | {"image": {"format": "png"|"jpeg",
         "source": {"bytes": <base64>}}}], "outputScope": ...}
        200 {"action": "NONE"|"GUARDRAIL_INTERVENED", "assessments": [{"contentPolicy": {"filters": [...]}}],
             "outputs": [...], "usage": {...}, "guardrailCoverage": {...}}
        errors: status + ``x-amzn-ErrorType`` + {"message": ...} (ThrottlingException 429,
        ServiceUnavailableException 503, InternalServerException 500, ValidationException 400,
        ResourceNotFoundException 404)

Deterministic verdicts, no model:
- text containing ``[[unsafe]]`` is blocked as VIOLENCE; ``[[unsafe:HATE]]`` names the category;
- a PNG carrying the Flux emulator's moderation mark (a ``tEXt`` chunk ``MODERATION_MARK_KEYWORD`` =
  ``unsafe[:CATEGORY]``, written for prompts containing ``[[unsafe-image]]``) is blocked as SEXUAL (or CATEGORY).

Faults for the tests, queued like the Flux emulator's: ``standin.inject("throttled" | "down" | "error" | "reset",
count=None)``. Nothing it receives is logged (prompts are user data).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import contextlib
import json
import logging
import re
import struct
import threading
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from devstack.serving import ServerThread, http_url

logger = logging.getLogger(__name__)

GUARDRAIL_ID = "local-guardrail"
MODERATION_MARK_KEYWORD = b"flux-emulator-moderation"
UNSAFE_TEXT = re.compile(r"\[\[unsafe(?::([A-Za-z_]{1,32}))?\]\]")
APPLY_PATH = re.compile(r"^/guardrail/([^/]+)/version/([^/]+)/apply$")
MAX_IMAGE_BYTES = 4 * 1024 * 1024
FAULTS = {
    "throttled": (429, "ThrottlingException", "Your request rate is too high. Reduce the frequency of requests."),
    "down": (503, "ServiceUnavailableException", "The service isn't currently available. Try again later."),
    "error": (500, "InternalServerException", "An internal server error occurred. Retry your request."),
    "reset": (0, "", ""),  # the connection is closed without an answer
}
BLOCKED_MESSAGE = "Sorry, the model cannot answer this question."


def png_text_chunks(data: bytes) -> dict[bytes, bytes]:
    """The ``tEXt`` chunks of a PNG (keyword -> text); empty for anything else."""
    found: dict[bytes, bytes] = {}
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return found
    position = 8
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"tEXt" and b"\x00" in body:
            keyword, _, text = body.partition(b"\x00")
            found[keyword] = text
        if kind == b"IEND":
            break
        position += 12 + length
    return found


def mark_png(png: bytes, value: str) -> bytes:
    """``png`` with the moderation mark inserted after its IHDR chunk (what the Flux emulator does)."""
    ihdr_end = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    body = MODERATION_MARK_KEYWORD + b"\x00" + value.encode("latin-1")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    return png[:ihdr_end] + chunk + png[ihdr_end:]


@dataclass
class _Fault:
    mode: str
    remaining: int | None  # None: until clear_faults()


class _ValidationError(Exception):
    pass


class ModerationStandIn:
    """The stand-in server. ``with ModerationStandIn() as standin: ...`` or ``start()`` / ``stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, guardrail_id: str = GUARDRAIL_ID) -> None:
        self.host = host
        self._port = port
        self.guardrail_id = guardrail_id
        self._lock = threading.Lock()
        self._faults: collections.deque[_Fault] = collections.deque()
        self._serving: ServerThread | None = None
        self.reset_counters()

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> ModerationStandIn:
        standin = self

        class Handler(_Handler):
            owner = standin

        server = ThreadingHTTPServer((self.host, self._port), Handler)
        server.daemon_threads = True
        self._serving = ServerThread(server, "moderation-standin")
        self._port = self._serving.port
        self._serving.start()
        return self

    def stop(self) -> None:
        serving, self._serving = self._serving, None
        if serving is not None:
            serving.stop()

    def __enter__(self) -> ModerationStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return http_url(self.host, self._port)

    # ------------------------------------------------------------------------------------------- test controls
    def inject(self, mode: str, count: int | None = 1) -> None:
        if mode not in FAULTS:
            raise ValueError(f"unknown fault mode {mode!r}; known: {sorted(FAULTS)}")
        with self._lock:
            self._faults.append(_Fault(mode, count))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_counters(self) -> None:
        with self._lock:
            self.calls: collections.Counter[str] = collections.Counter()  # by source: INPUT / OUTPUT
            self.blocked: collections.Counter[str] = collections.Counter()
            self.faulted = 0

    def _next_fault(self) -> str | None:
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults[0]
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.popleft()
            self.faulted += 1
            return fault.mode

    # ------------------------------------------------------------------------------------------- the API
    def apply(self, guardrail_id: str, version: str, request: Any) -> tuple[int, dict[str, Any], str | None]:
        """(status, body, error type) for one ApplyGuardrail request."""
        if guardrail_id != self.guardrail_id:
            return 404, {"message": "The guardrail was not found."}, "ResourceNotFoundException"
        try:
            source, texts, images = self._parse(request)
        except _ValidationError as exc:
            return 400, {"message": str(exc)}, "ValidationException"
        with self._lock:
            self.calls[source] += 1
        filters = []
        for text in texts:
            for match in UNSAFE_TEXT.finditer(text):
                filters.append(self._filter((match.group(1) or "VIOLENCE").upper()))
        for image in images:
            mark = png_text_chunks(image).get(MODERATION_MARK_KEYWORD, b"").decode("latin-1")
            if mark.startswith("unsafe"):
                _, _, category = mark.partition(":")
                filters.append(self._filter((category or "SEXUAL").upper()))
        intervened = bool(filters)
        if intervened:
            with self._lock:
                self.blocked[source] += 1
        characters = sum(len(text) for text in texts)
        return (
            200,
            {
                "usage": {
                    "topicPolicyUnits": 0,
                    "contentPolicyUnits": -(-characters // 1000),
                    "wordPolicyUnits": 0,
                    "sensitiveInformationPolicyUnits": 0,
                    "sensitiveInformationPolicyFreeUnits": 0,
                    "contextualGroundingPolicyUnits": 0,
                    "contentPolicyImageUnits": len(images),
                },
                "action": "GUARDRAIL_INTERVENED" if intervened else "NONE",
                "actionReason": "Guardrail blocked." if intervened else "No action.",
                "outputs": [{"text": BLOCKED_MESSAGE}] if intervened else [],
                "assessments": [
                    {
                        **({"contentPolicy": {"filters": filters}} if filters else {}),
                        "invocationMetrics": {
                            "guardrailProcessingLatency": 1,
                            "usage": {"contentPolicyUnits": -(-characters // 1000)},
                            "guardrailCoverage": self._coverage(characters, len(images)),
                        },
                    }
                ],
                "guardrailCoverage": self._coverage(characters, len(images)),
            },
            None,
        )

    @staticmethod
    def _filter(category: str) -> dict[str, Any]:
        return {
            "type": category,
            "confidence": "HIGH",
            "filterStrength": "MEDIUM",
            "action": "BLOCKED",
            "detected": True,
        }

    @staticmethod
    def _coverage(characters: int, images: int) -> dict[str, Any]:
        coverage: dict[str, Any] = {"textCharacters": {"guarded": characters, "total": characters}}
        if images:
            coverage["images"] = {"guarded": images, "total": images}
        return coverage

    @staticmethod
    def _parse(request: Any) -> tuple[str, list[str], list[bytes]]:
        if not isinstance(request, dict):
            raise _ValidationError("The request body is not a JSON object.")
        source = request.get("source")
        if source not in ("INPUT", "OUTPUT"):
            raise _ValidationError("1 validation error detected: Value at 'source' failed to satisfy constraint.")
        content = request.get("content")
        if not isinstance(content, list) or not content:
            raise _ValidationError("1 validation error detected: Value at 'content' failed to satisfy constraint.")
        texts: list[str] = []
        images: list[bytes] = []
        for block in content:
            if isinstance(block, dict) and isinstance((block.get("text") or {}).get("text"), str):
                texts.append(block["text"]["text"])
                continue
            image = block.get("image") if isinstance(block, dict) else None
            if not isinstance(image, dict) or image.get("format") not in ("png", "jpeg"):
                raise _ValidationError("Each content block needs a text or an image (png or jpeg).")
            try:
                data = base64.b64decode((image.get("source") or {}).get("bytes") or "", validate=True)
            except (binascii.Error, ValueError, TypeError) as exc:
                raise _ValidationError("The image bytes are not valid base64.") from exc
            if not data or len(data) > MAX_IMAGE_BYTES:
                raise _ValidationError("The image must be between 1 byte and 4 MB.")
            magic = b"\x89PNG\r\n\x1a\n" if image["format"] == "png" else b"\xff\xd8\xff"
            if not data.startswith(magic):
                raise _ValidationError(f"The image is not a valid {image['format']} file.")
            images.append(data)
        return source, texts, images


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ModerationStandIn/1.0"
    owner: ModerationStandIn

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        match = APPLY_PATH.match(self.path.split("?", 1)[0])
        if match is None:
            self._send(404, {"message": "Unknown operation."}, "UnknownOperationException")
            return
        fault = self.owner._next_fault()
        if fault == "reset":
            self.close_connection = True
            self.connection.close()
            return
        if fault is not None:
            fault_status, fault_type, message = FAULTS[fault]
            self._send(fault_status, {"message": message}, fault_type)
            return
        try:
            request = json.loads(body or b"null")
        except ValueError:
            self._send(400, {"message": "The request body is not valid JSON."}, "ValidationException")
            return
        status, answer, error_type = self.owner.apply(match.group(1), match.group(2), request)
        self._send(status, answer, error_type)

    def _send(self, status: int, payload: dict[str, Any], error_type: str | None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", "00000000-0000-4000-8000-000000000000")
        if error_type:
            self.send_header("x-amzn-ErrorType", f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/")
        self.end_headers()
        self.wfile.write(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack.moderation_standin", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    args = parser.parse_args(argv)
    with ModerationStandIn(args.host, args.port) as standin:
        print(f"ApplyGuardrail stand-in on {standin.url} (guardrail {standin.guardrail_id}); Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
