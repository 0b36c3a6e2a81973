"""Local emulator of the Flux Schnell text-to-image HTTP API (pure stdlib).

It serves the documented contract (docs/upstream.md)::

    POST /flux-1-schnell/v1/getData      header Ocp-Apim-Subscription-Key, JSON body
        200 {"output": "<base>/images/<name>.png"}
        400 {"error": "..."}   401 {"error": "Invalid or missing authentication"}
        404 {"error": "Endpoint not found"}   429 {"error": "Rate limit exceeded, please retry later"}
    GET  /images/<name>.png              the generated image (deterministic real PNG, width x height)

and lets tests drive every upstream failure through injectable faults, either queued programmatically
(``emulator.inject("rate_limit", count=2, retry_after=3)``) or per request with the header
``X-Emulator-Fault: <mode>[; key=value ...]`` (e.g. ``X-Emulator-Fault: timeout; delay_s=2``).

A prompt containing ``[[unsafe-image]]`` renders a PNG carrying a moderation mark (a ``tEXt`` chunk) that the
local moderation stand-in (``devstack.moderation_standin``) blocks, as Bedrock Guardrails would block an unsafe image.

Usage in tests::

    with FluxEmulator(api_key="k") as flux:
        requests.post(flux.url, json={"prompt": "a cat"}, headers={"Ocp-Apim-Subscription-Key": "k"})

From a shell::

    python -m devstack.flux_emulator --port 8081 --latency 1.0 --api-key FLUX_API_KEY

Faults take precedence over everything else (authentication, validation, concurrency limit): a request
that draws a fault gets the fault's answer. The header fault wins over the queue and does not consume it.
Latency (``latency_s`` or the ``X-Emulator-Latency`` header) delays answers produced by the "backend" (a
generation's answer leaves that long after its request arrived, the drawing included):
successful generations and the 200-style faults (``no_output``, ``output_*``, ``not_image``, ``truncated``,
``oversized``, ``redirect``); gateway errors (4xx/5xx faults, auth, validation) answer immediately.
Request bodies are never logged (everything the emulator logs is at DEBUG, apart from start/stop).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from devstack.moderation_standin import mark_png
from devstack.serving import ServerThread, http_url

__all__ = [
    "AUTH_HEADER",
    "FAULT_HEADER",
    "FAULT_MODES",
    "GENERATE_PATH",
    "LATENCY_HEADER",
    "FluxEmulator",
    "ReceivedRequest",
    "main",
    "render_png",
]

logger = logging.getLogger(__name__)

GENERATE_PATH = "/flux-1-schnell/v1/getData"
AUTH_HEADER = "Ocp-Apim-Subscription-Key"
FAULT_HEADER = "X-Emulator-Fault"
LATENCY_HEADER = "X-Emulator-Latency"

DEFAULT_NUM_STEPS = 4
DEFAULT_SIZE = 1024
MIN_NUM_STEPS, MAX_NUM_STEPS = 1, 8
MIN_SIZE, MAX_SIZE, SIZE_MULTIPLE = 256, 2048, 16
MAX_BODY_BYTES = 1 << 20
IMAGE_CACHE_SIZE = 256
RECEIVED_HISTORY = 256
OVERSIZED_DEFAULT_BYTES = 64 << 20
STREAM_CHUNK_BYTES = 64 << 10
MAX_LATENCY_S = 600.0

ERROR_AUTH = {"error": "Invalid or missing authentication"}
ERROR_NOT_FOUND = {"error": "Endpoint not found"}
ERROR_RATE_LIMIT = {"error": "Rate limit exceeded, please retry later"}
ERROR_FORBIDDEN = {"error": "Access denied for this operation"}
ERROR_SERVER = {"error": "An unexpected error occurred, please try again later"}
ERROR_UNAVAILABLE = {"error": "Service temporarily unavailable, please retry later"}
ERROR_PROMPT = {"error": "Invalid prompt parameter"}
APIM_UNAUTHORIZED = {
    "statusCode": 401,
    "message": "Access denied due to invalid subscription key. "
    "Make sure to provide a valid key for an active subscription.",
}
BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)
NOT_IMAGE_HTML = b"<html><head><title>Access Denied</title></head><body><h1>This is not an image</h1></body></html>\n"

FAULT_MODES = frozenset(
    {
        "rate_limit",
        "rate_limit_no_retry_after",
        "apim_rate_limit",
        "apim_unauthorized",
        "quota_exhausted",
        "forbidden",
        "bad_request",
        "server_error",
        "bad_gateway",
        "unavailable",
        "timeout",
        "drip",
        "no_output",
        "output_http",
        "output_custom",
        "not_image",
        "truncated",
        "oversized",
        "redirect",
        "disconnect",
    }
)
# Faults whose answer comes from the "backend" (a 200 or an image-serving problem): latency applies.
_BACKEND_FAULTS = frozenset(
    {"no_output", "output_http", "output_custom", "not_image", "truncated", "oversized", "redirect"}
)
_IMAGE_PATH_RE = re.compile(r"/images/([A-Za-z0-9_-]{1,128})\.png")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A prompt containing [[unsafe-image]] (or [[unsafe-image:HATE]]) renders an image the moderation stand-in blocks.
UNSAFE_IMAGE = re.compile(r"\[\[unsafe-image(?::([A-Za-z_]{1,32}))?\]\]")


# --------------------------------------------------------------------------------------------- PNG


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_ihdr(width: int, height: int) -> bytes:
    # 8-bit depth, colour type 2 (RGB), deflate, adaptive filtering, no interlace.
    return _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


def render_png(prompt: str, seed: int, num_steps: int, width: int, height: int) -> bytes:
    """A real, valid, deterministic 8-bit RGB PNG of exactly ``width`` x ``height``.

    Colours come from sha256 of the parameters; the picture is 4 to 8 horizontal bands, each row built by
    bytes repetition, so even 2048x2048 takes a few tens of milliseconds.
    """
    digest = hashlib.sha256(_param_key(prompt, seed, num_steps, width, height).encode()).digest()
    bands = 4 + digest[0] % 5
    raw_parts: list[bytes] = []
    start = 0
    for band in range(bands):
        end = height * (band + 1) // bands
        rgb = digest[1 + 3 * band : 4 + 3 * band]
        row = b"\x00" + rgb * width  # filter type 0 (None) + pixels
        raw_parts.append(row * (end - start))
        start = end
    idat = zlib.compress(b"".join(raw_parts), 6)
    png = PNG_SIGNATURE + _png_ihdr(width, height) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    mark = UNSAFE_IMAGE.search(prompt)
    if mark:  # the moderation stand-in blocks images carrying this mark (a tEXt chunk), like a real unsafe image
        png = mark_png(png, "unsafe" + (f":{mark.group(1).upper()}" if mark.group(1) else ""))
    return png


def _param_key(prompt: str, seed: int, num_steps: int, width: int, height: int) -> str:
    return json.dumps([prompt, seed, num_steps, width, height], ensure_ascii=False)


def _image_name(prompt: str, seed: int, num_steps: int, width: int, height: int) -> str:
    key = _param_key(prompt, seed, num_steps, width, height)
    return "prompt-" + hashlib.sha256(key.encode()).hexdigest()[:40]


# ------------------------------------------------------------------------------------ data classes


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """A generation request as received (kept in memory for assertions; never logged)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON, or None when it is not valid JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class _Resource:
    kind: str  # "png" | "html" | "truncated" | "oversized" | "redirect"
    data: bytes = b""
    size: int = 0
    location: str = ""
    declare_length: bool = True


@dataclass(slots=True)
class _Fault:
    mode: str
    params: dict[str, Any] = field(default_factory=dict)
    remaining: int | None = 1  # None: applies until clear_faults()


def _json_response(status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> _Response:
    return _Response(status, json.dumps(payload).encode(), "application/json", tuple(headers))


def _retry_after_header(value: Any) -> tuple[str, str]:
    return ("Retry-After", str(value))


def _parse_fault_header(value: str) -> _Fault:
    """``mode[; key=value ...]`` -> a fault; numbers are converted, other values stay strings."""
    parts = [part.strip() for part in value.split(";")]
    mode = parts[0]
    if mode not in FAULT_MODES:
        raise ValueError(f"Unknown emulator fault: {mode[:64]}")
    params: dict[str, Any] = {}
    for part in parts[1:]:
        if not part:
            continue
        key, sep, raw = part.partition("=")
        if not sep:
            raise ValueError(f"Malformed emulator fault parameter: {part[:64]}")
        params[key.strip()] = _coerce(raw.strip())
    return _Fault(mode, params, 1)


def _coerce(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            continue
    return raw


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(headers: Message, body: bytes) -> dict[str, Any] | _Response:
    """Validated generation parameters (defaults filled in), or the 400 response to send."""
    content_type = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        return _json_response(400, {"error": "Invalid Content-Type: must be application/json"})
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return _json_response(400, {"error": "Invalid JSON body"})
    if not isinstance(payload, dict):
        return _json_response(400, {"error": "Invalid request body: must be a JSON object"})
    prompt = payload.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return _json_response(400, ERROR_PROMPT)
    num_steps = payload.get("num_steps", DEFAULT_NUM_STEPS)
    if not _is_int(num_steps) or not MIN_NUM_STEPS <= num_steps <= MAX_NUM_STEPS:
        return _json_response(
            400,
            {"error": f"Invalid num_steps parameter: must be an integer between {MIN_NUM_STEPS} and {MAX_NUM_STEPS}"},
        )
    if "seed" in payload:
        seed = payload["seed"]
        if not _is_int(seed) or seed < 0:
            return _json_response(400, {"error": "Invalid seed parameter: must be a non-negative integer"})
    else:
        seed = secrets.randbelow(2**32)  # like upstream: no seed, a random picture
    sizes = {}
    for name in ("width", "height"):
        value = payload.get(name, DEFAULT_SIZE)
        if not _is_int(value) or not MIN_SIZE <= value <= MAX_SIZE or value % SIZE_MULTIPLE:
            return _json_response(
                400,
                {
                    "error": f"Invalid {name} parameter: must be an integer between {MIN_SIZE} and "
                    f"{MAX_SIZE} and a multiple of {SIZE_MULTIPLE}"
                },
            )
        sizes[name] = value
    return {"prompt": prompt, "seed": seed, "num_steps": num_steps, **sizes}


# ------------------------------------------------------------------------------------ HTTP server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: FluxEmulator) -> None:
        self.emulator = emulator
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Client gone mid-answer (timeouts, drip, oversized): expected, keep quiet.
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FluxEmulator/1.0"
    timeout = 30  # idle keep-alive connections are closed after this many seconds
    server: _Server

    # --- plumbing

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle + the client's delayed ACK
        # stall every answer by ~40 ms, which a real CDN would not.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.emulator._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.emulator._track(self.connection, add=False)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def log_error(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _route(self) -> str:
        return urlsplit(self.path).path

    def _read_body(self) -> bytes | None:
        """The request body; None when an error answer was already sent (the connection then closes)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self.send_answer(_json_response(400, {"error": "Invalid Content-Length"}))
            return None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self.send_answer(_json_response(413, {"error": "Request body too large"}))
            return None
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                self.send_answer(_json_response(400, {"error": "Invalid chunked body"}))
                return None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                self.close_connection = True
                self.send_answer(_json_response(413, {"error": "Request body too large"}))
                return None
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def send_answer(self, response: _Response, *, head_only: bool = False) -> None:
        self.send_response(response.status)
        if response.content_type:
            self.send_header("Content-Type", response.content_type)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head_only:
            self.wfile.write(response.body)

    # --- methods

    def do_POST(self) -> None:
        body = self._read_body()
        if body is None:
            return
        if self._route() != GENERATE_PATH:
            self.send_answer(_json_response(404, ERROR_NOT_FOUND))
            return
        self.server.emulator._handle_generation(self, body)

    def do_GET(self) -> None:
        if self._read_body() is None:
            return
        match = _IMAGE_PATH_RE.fullmatch(self._route())
        if match is None:
            self.send_answer(_json_response(404, ERROR_NOT_FOUND))
            return
        self.server.emulator._serve_image(self, match.group(1))

    def do_HEAD(self) -> None:
        self.send_answer(_json_response(404, ERROR_NOT_FOUND), head_only=True)

    def _not_found(self) -> None:
        if self._read_body() is None:
            return
        self.send_answer(_json_response(404, ERROR_NOT_FOUND))

    do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _not_found


# ----------------------------------------------------------------------------------------- emulator


class FluxEmulator:
    """An in-process HTTP emulator of the Flux Schnell API. See the module docstring."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = "FLUX_API_KEY",
        latency_s: float = 0.0,
        concurrency_limit: int | None = None,
        public_base_url: str | None = None,
    ) -> None:
        if concurrency_limit is not None and concurrency_limit < 1:
            raise ValueError("concurrency_limit must be >= 1 or None")
        self.host = host
        self._requested_port = port
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._serving: ServerThread | None = None
        self._connections: set[socket.socket] = set()
        self._api_keys: tuple[str, ...] = ()
        self.set_api_key(api_key)
        self._latency_s = 0.0
        self.set_latency(latency_s)
        self.concurrency_limit = concurrency_limit
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self._faults: collections.deque[_Fault] = collections.deque()
        self._images: collections.OrderedDict[str, _Resource] = collections.OrderedDict()
        self._in_flight = 0
        self._max_in_flight = 0
        self._calls = 0
        self._calls_by_status: collections.Counter[int] = collections.Counter()
        self._image_downloads = 0
        self._received: collections.deque[ReceivedRequest] = collections.deque(maxlen=RECEIVED_HISTORY)
        # Called after each generation without a fault is answered, with when it arrived and when its answer was
        # sent (``time.perf_counter``): the bulk benchmark times every upstream call with it.
        self.on_generation: Callable[[float, float], None] | None = None

    # --- lifecycle

    def start(self) -> FluxEmulator:
        """Bind and serve in a daemon thread. Returns self."""
        if self._serving is not None:
            raise RuntimeError("FluxEmulator already started")
        self._stop_event.clear()
        self._serving = ServerThread(_Server((self.host, self._requested_port), self), "flux-emulator")
        self._serving.start()
        logger.info("Flux emulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving; interrupts pending delays and closes open connections. Idempotent."""
        serving, self._serving = self._serving, None
        if serving is None:
            return
        self._stop_event.set()
        serving.stop()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        logger.info("Flux emulator stopped")

    def __enter__(self) -> FluxEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._serving is None:
            raise RuntimeError("FluxEmulator not started")
        return self._serving.port

    @property
    def base_url(self) -> str:
        """``http://host:port`` where the emulator actually listens."""
        return http_url(self.host, self.port)

    @property
    def url(self) -> str:
        """The full generation endpoint URL."""
        return self.base_url + GENERATE_PATH

    @property
    def image_base_url(self) -> str:
        """Prefix of the ``output`` URLs: ``public_base_url`` when set, else ``base_url``."""
        return self.public_base_url or self.base_url

    # --- configuration

    def set_api_key(self, api_key: str | None, *also_valid: str) -> None:
        """Accepted subscription key(s) (key rotation). ``None`` disables authentication."""
        keys = tuple(k for k in (api_key, *also_valid) if k is not None)
        with self._lock:
            self._api_keys = keys

    def set_latency(self, latency_s: float) -> None:
        if not math.isfinite(latency_s) or latency_s < 0:
            raise ValueError("latency_s must be a finite number >= 0")
        self._latency_s = float(latency_s)

    @property
    def latency_s(self) -> float:
        return self._latency_s

    def inject(self, mode: str, count: int | None = 1, **params: Any) -> None:
        """Queue ``mode`` for the next ``count`` generation requests (FIFO; ``count=None``: until cleared)."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; known: {sorted(FAULT_MODES)}")
        if count is not None and (not _is_int(count) or count < 1):
            raise ValueError("count must be a positive integer or None")
        with self._lock:
            self._faults.append(_Fault(mode, dict(params), count))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> list[tuple[str, int | None]]:
        """Queued faults as (mode, remaining count or None)."""
        with self._lock:
            return [(f.mode, f.remaining) for f in self._faults]

    # --- counters

    @property
    def calls(self) -> int:
        """Generation POSTs received (including those answered by a fault)."""
        with self._lock:
            return self._calls

    @property
    def calls_by_status(self) -> dict[int, int]:
        """Answers to generation POSTs by HTTP status (0: connection closed without an answer)."""
        with self._lock:
            return dict(self._calls_by_status)

    @property
    def image_downloads(self) -> int:
        """GET /images/... requests that matched a stored image (including fault images)."""
        with self._lock:
            return self._image_downloads

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """Highest number of simultaneous generations seen (within the concurrency limit)."""
        with self._lock:
            return self._max_in_flight

    @property
    def received(self) -> list[ReceivedRequest]:
        """The last generation requests received (up to 256), oldest first."""
        with self._lock:
            return list(self._received)

    def reset_counters(self) -> None:
        with self._lock:
            self._calls = 0
            self._calls_by_status.clear()
            self._image_downloads = 0
            self._max_in_flight = 0
            self._received.clear()

    # --- internals: bookkeeping

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _record_status(self, status: int) -> None:
        with self._lock:
            self._calls_by_status[status] += 1

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped meanwhile; False when the emulator is stopping."""
        if seconds <= 0:
            return not self._stop_event.is_set()
        return not self._stop_event.wait(seconds)

    def _latency_for(self, headers: Message) -> float:
        override = headers.get(LATENCY_HEADER)
        if override is not None:
            try:
                value = float(override)
            except ValueError:
                value = math.nan
            if math.isfinite(value) and value >= 0:
                return min(value, MAX_LATENCY_S)
        return self._latency_s

    def _authorized(self, headers: Message) -> bool:
        with self._lock:
            keys = self._api_keys
        if not keys:
            return True
        supplied = (headers.get(AUTH_HEADER) or "").strip()
        if not supplied:
            return False
        return any(hmac.compare_digest(supplied.encode(), key.encode()) for key in keys)

    def _next_fault(self, headers: Message) -> _Fault | None:
        header = headers.get(FAULT_HEADER)
        if header:
            return _parse_fault_header(header)
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults[0]
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.popleft()
            return _Fault(fault.mode, dict(fault.params), 1)

    def _store(self, name: str, resource: _Resource) -> str:
        with self._lock:
            self._images[name] = resource
            self._images.move_to_end(name)
            while len(self._images) > IMAGE_CACHE_SIZE:
                self._images.popitem(last=False)
        return f"{self.image_base_url}/images/{name}.png"

    def _lookup(self, name: str) -> _Resource | None:
        with self._lock:
            resource = self._images.get(name)
            if resource is not None:
                self._images.move_to_end(name)
                self._image_downloads += 1
            return resource

    # --- internals: generation

    def _handle_generation(self, handler: _Handler, body: bytes) -> None:
        with self._lock:
            self._calls += 1
            self._received.append(ReceivedRequest(handler.command, handler.path, dict(handler.headers.items()), body))
        try:
            fault = self._next_fault(handler.headers)
        except ValueError as exc:
            self._answer(handler, _json_response(400, {"error": str(exc)}))
            return
        if fault is None:
            arrived = time.perf_counter()
            self._answer(handler, self._generate(handler.headers, body))
            if (on_generation := self.on_generation) is not None:
                on_generation(arrived, time.perf_counter())
            return
        logger.debug("applying fault %s", fault.mode)
        self._apply_fault(handler, fault, body)

    def _answer(self, handler: _Handler, response: _Response | None, drip_interval_s: float = 0.0) -> None:
        if response is None:  # disconnect: close without answering
            self._record_status(0)
            handler.close_connection = True
            return
        self._record_status(response.status)
        if drip_interval_s <= 0:
            handler.send_answer(response)
            return
        handler.send_response(response.status)
        if response.content_type:
            handler.send_header("Content-Type", response.content_type)
        for name, value in response.headers:
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(response.body)))
        handler.end_headers()
        handler.wfile.flush()
        for index in range(len(response.body)):
            if not self._sleep(drip_interval_s):
                handler.close_connection = True
                return
            handler.wfile.write(response.body[index : index + 1])
            handler.wfile.flush()

    def _generate(self, headers: Message, body: bytes) -> _Response | None:
        if not self._authorized(headers):
            return _json_response(401, ERROR_AUTH)
        with self._lock:
            limit = self.concurrency_limit
            if limit is not None and self._in_flight >= limit:
                return _json_response(429, ERROR_RATE_LIMIT, [_retry_after_header(1)])
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        arrived = time.monotonic()
        try:
            params = _validate(headers, body)
            if isinstance(params, _Response):
                return params
            # The picture is drawn within the latency, as the vendor's own work is: the answer leaves ``latency``
            # after the request arrived, not ``latency`` plus the drawing (milliseconds that would otherwise add
            # to every call a benchmark counts as exactly ``latency``).
            png = render_png(**params)
            if not self._sleep(self._latency_for(headers) - (time.monotonic() - arrived)):
                return None
            url = self._store(_image_name(**params), _Resource("png", png))
            return _json_response(200, {"output": url})
        finally:
            with self._lock:
                self._in_flight -= 1

    def _fault_image(self, headers: Message, body: bytes) -> tuple[str, bytes]:
        """A real image for faults that need one: the request's own when valid, else a small default."""
        params = _validate(headers, body)
        if isinstance(params, _Response):
            params = {"prompt": "emulator fault", "seed": 0, "num_steps": 4, "width": 256, "height": 256}
        return _image_name(**params), render_png(**params)

    def _apply_fault(self, handler: _Handler, fault: _Fault, body: bytes) -> None:
        mode, p = fault.mode, fault.params
        headers = handler.headers
        response: _Response | None
        if mode == "rate_limit":
            response = _json_response(429, ERROR_RATE_LIMIT, [_retry_after_header(p.get("retry_after", 1))])
        elif mode == "rate_limit_no_retry_after":
            response = _json_response(429, ERROR_RATE_LIMIT)
        elif mode == "apim_rate_limit":
            retry_after = p.get("retry_after", 2)
            response = _json_response(
                429,
                {
                    "statusCode": 429,
                    "message": f"Rate limit is exceeded. Try again in {retry_after} seconds.",
                },
                [_retry_after_header(retry_after)],
            )
        elif mode == "apim_unauthorized":
            response = _json_response(401, APIM_UNAUTHORIZED)
        elif mode == "quota_exhausted":
            renewal = p.get("renewal", "00:10:00")
            response = _json_response(
                403,
                {
                    "statusCode": 403,
                    "message": f"Out of call volume quota. Quota will be replenished in {renewal}.",
                },
            )
        elif mode == "forbidden":
            response = _json_response(403, ERROR_FORBIDDEN)
        elif mode == "bad_request":
            response = _json_response(400, {"error": str(p.get("message", "Invalid request parameters"))})
        elif mode == "server_error":
            response = _json_response(500, ERROR_SERVER)
        elif mode == "bad_gateway":
            response = _Response(502, BAD_GATEWAY_HTML, "text/html")
        elif mode == "unavailable":
            extra = [_retry_after_header(p["retry_after"])] if p.get("retry_after") is not None else []
            response = _json_response(503, ERROR_UNAVAILABLE, extra)
        elif mode == "disconnect":
            response = None
        elif mode == "timeout":
            delay_s = float(p.get("delay_s", 60.0))
            response = self._generate(headers, body) if self._sleep(delay_s) else None
        elif mode == "drip":
            interval_s = float(p.get("interval_s", 1.0))
            self._answer(handler, self._generate(headers, body), drip_interval_s=max(interval_s, 1e-6))
            return
        else:  # backend faults: a 200 after the usual latency
            response = self._backend_fault(mode, p, headers, body) if self._sleep(self._latency_for(headers)) else None
        self._answer(handler, response)

    def _backend_fault(self, mode: str, p: Mapping[str, Any], headers: Message, body: bytes) -> _Response:
        token = f"{mode}-{uuid.uuid4().hex}"
        if mode == "no_output":
            return _json_response(200, {"msg": "Image Getting Created"})
        if mode == "output_custom":
            return _json_response(200, {"output": p.get("url", "https://127.0.0.1/private.png")})
        if mode == "output_http":
            name, png = self._fault_image(headers, body)
            url = self._store(name, _Resource("png", png))
            return _json_response(200, {"output": "http://" + url.split("://", 1)[1]})
        if mode == "not_image":
            url = self._store(token, _Resource("html", NOT_IMAGE_HTML))
        elif mode == "truncated":
            _, png = self._fault_image(headers, body)
            url = self._store(token, _Resource("truncated", png))
        elif mode == "oversized":
            size = int(p.get("size", OVERSIZED_DEFAULT_BYTES))
            url = self._store(
                token, _Resource("oversized", size=size, declare_length=bool(p.get("declare_length", True)))
            )
        elif mode == "redirect":
            location = p.get("location")
            if location is None:
                name, png = self._fault_image(headers, body)
                location = self._store(name, _Resource("png", png))
            url = self._store(token, _Resource("redirect", location=str(location)))
        else:  # pragma: no cover - guarded by FAULT_MODES
            raise ValueError(mode)
        return _json_response(200, {"output": url})

    # --- internals: images

    def _serve_image(self, handler: _Handler, name: str) -> None:
        resource = self._lookup(name)
        if resource is None:
            handler.send_answer(_json_response(404, {"error": "Image not found"}))
            return
        if resource.kind == "png":
            handler.send_answer(_Response(200, resource.data, "image/png"))
        elif resource.kind == "html":
            handler.send_answer(_Response(200, resource.data, "text/html; charset=utf-8"))
        elif resource.kind == "redirect":
            handler.send_answer(_Response(302, b"", None, (("Location", resource.location),)))
        elif resource.kind == "truncated":
            # Declares the full length, sends half, then closes the connection.
            handler.close_connection = True
            handler.send_response(200)
            handler.send_header("Content-Type", "image/png")
            handler.send_header("Content-Length", str(len(resource.data)))
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(resource.data[: len(resource.data) // 2])
        elif resource.kind == "oversized":
            self._stream_oversized(handler, resource)

    def _stream_oversized(self, handler: _Handler, resource: _Resource) -> None:
        head = PNG_SIGNATURE + _png_ihdr(16384, 16384)
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        if resource.declare_length:
            handler.send_header("Content-Length", str(len(head) + resource.size))
        else:
            handler.close_connection = True  # body delimited by the end of the connection
            handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(head)
        chunk = memoryview(bytes(STREAM_CHUNK_BYTES))
        remaining = resource.size
        while remaining > 0 and not self._stop_event.is_set():
            n = min(remaining, STREAM_CHUNK_BYTES)
            handler.wfile.write(chunk[:n])
            remaining -= n
        if remaining:
            handler.close_connection = True


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.flux_emulator", description="Local emulator of the Flux Schnell API."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8081, help="port (default 8081; 0 picks a free one)")
    parser.add_argument("--api-key", default="FLUX_API_KEY", help="accepted Ocp-Apim-Subscription-Key")
    parser.add_argument("--no-auth", action="store_true", help="accept requests without a key")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each generation answer")
    parser.add_argument("--concurrency-limit", type=int, default=None, help="429 beyond N in-flight")
    parser.add_argument("--public-base-url", default=None, help="prefix for output URLs (e.g. in Docker)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request (DEBUG)")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    emulator = FluxEmulator(
        host=args.host,
        port=args.port,
        api_key=None if args.no_auth else args.api_key,
        latency_s=args.latency,
        concurrency_limit=args.concurrency_limit,
        public_base_url=args.public_base_url,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    emulator.start()
    print(f"Flux emulator: {emulator.url}", flush=True)
    print(f"  faults: header {FAULT_HEADER}: <mode>[; key=value ...]", flush=True)
    print(f"  modes: {', '.join(sorted(FAULT_MODES))}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
