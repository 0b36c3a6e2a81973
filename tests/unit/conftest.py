"""Shared fixtures of the unit tests: fake AWS credentials, a scripted loopback HTTP server, a fake clock.

Unit tests never reach the network: AWS is mocked with moto (``mock_aws``) and HTTP goes only to servers the
tests start themselves on 127.0.0.1 (port 0), whose every wait is bounded and cut short at teardown.
"""

from __future__ import annotations

import collections
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import urllib3.util.connection
from devstack.serving import ServerThread

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region for every unit test, so nothing can ever reach a real AWS account."""
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def one_boto3_session_across_mocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's ``mock_aws`` drops boto3's default session each time it starts, so every test's ``boto3.client(...)``
    parsed the service's model again (about 0.1 s of CPU per client: most of ``test_mirror``'s time). Here every
    credential is fake and the region is passed or set per test, so the session and the models it has loaded are
    kept from one mock to the next; only for the unit tests (the setting goes back after each)."""
    from moto.core.config import default_user_config

    monkeypatch.setitem(default_user_config["core"], "reset_boto3_session", False)


# ---------------------------------------------------------------------------------------------------- fake clock
class FakeClock:
    """A monotonic clock that only moves when ``sleep`` is called; records every sleep."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, f"negative sleep {seconds}"
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


# ---------------------------------------------------------------------------------------------------- HTTP server
@dataclass
class Canned:
    """One scripted answer of the loopback server.

    ``delay_s``: wait before sending anything. ``drip_s``: send the body one byte at a time with this gap.
    ``declared_length``: the Content-Length to announce (default: the real length; ``-1``: none, close-delimited).
    """

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drip_s: float | None = None
    declared_length: int | None = None


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    raw_headers: list[tuple[str, str]]
    body: bytes


class ScriptedServer:
    """A stdlib HTTP server on 127.0.0.1 answering from a queue of ``Canned`` responses, recording requests."""

    def __init__(self) -> None:
        self.script: collections.deque[Canned | Callable[[BaseHTTPRequestHandler], None]] = collections.deque()
        self.received: list[Received] = []
        self.connections = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._serving = ServerThread(_Server(("127.0.0.1", 0), _handler_for(self), self), "scripted-server")

    @property
    def port(self) -> int:
        return self._serving.port

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, *answers: Canned | Callable[[BaseHTTPRequestHandler], None]) -> ScriptedServer:
        self.script.extend(answers)
        return self

    def reply(
        self,
        status: int = 200,
        body: bytes | str = b"",
        headers: dict[str, str] | None = None,
        **options: Any,
    ) -> ScriptedServer:
        """Queue one answer (see ``Canned`` for ``delay_s``, ``drip_s`` and ``declared_length``)."""
        raw = body.encode("utf-8") if isinstance(body, str) else body
        return self.add(Canned(status, raw, dict(headers or {}), **options))

    def reply_json(self, status: int, document: Any, headers: dict[str, str] | None = None) -> ScriptedServer:
        return self.reply(status, json.dumps(document), {"Content-Type": "application/json", **(headers or {})})

    def start(self) -> None:
        self._serving.start()

    def stop(self) -> None:
        self.stopping.set()
        self._serving.stop()

    def _record(self, request: Received) -> Canned | Callable[[BaseHTTPRequestHandler], None]:
        with self._lock:
            self.received.append(request)
            if self.script:
                return self.script.popleft()
        return Canned(599, b'{"error": "the test script has no answer left"}')

    def _count_connection(self) -> None:
        with self._lock:
            self.connections += 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: ScriptedServer):
        super().__init__(address, handler)
        self.owner = owner

    def verify_request(self, request: Any, client_address: Any) -> bool:  # called once per accepted connection
        self.owner._count_connection()
        return True


def _handler_for(owner: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection; a missing Content-Length means close-delimited

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            received = Received(
                method=self.command,
                path=self.path,
                headers=dict(self.headers.items()),
                raw_headers=list(self.headers.items()),
                body=body,
            )
            answer = owner._record(received)
            try:
                if callable(answer):
                    answer(self)
                else:
                    self._send(answer)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up, which is what several tests expect

        def _send(self, canned: Canned) -> None:
            if canned.delay_s and owner.stopping.wait(canned.delay_s):
                return
            self.send_response(canned.status)
            for name, value in canned.headers.items():
                self.send_header(name, value)
            declared = len(canned.body) if canned.declared_length is None else canned.declared_length
            if declared >= 0:
                self.send_header("Content-Length", str(declared))
            self.end_headers()
            if canned.drip_s is None:
                self.wfile.write(canned.body)
                return
            self.wfile.flush()
            for index in range(len(canned.body)):
                self.wfile.write(canned.body[index : index + 1])
                self.wfile.flush()
                if owner.stopping.wait(canned.drip_s):
                    return

    return Handler


@pytest.fixture
def http_server() -> Iterator[ScriptedServer]:
    """A started scripted loopback server, stopped (and every pending wait cut short) after the test."""
    server = ScriptedServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------------- name resolution
class ConnectRecorder:
    """Replaces urllib3's create_connection for the test's own thread: records the address and raises ``error``;
    never opens a socket. Other threads connect as usual: under pytest-xdist a worker may hold a local stack from
    an earlier test, whose pollers keep calling moto in the background."""

    def __init__(self, error: OSError, real: Callable[..., socket.socket], thread: int) -> None:
        self.error = error
        self.addresses: list[tuple[str, int]] = []
        self._real = real
        self._thread = thread

    def __call__(self, address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        if threading.get_ident() != self._thread:
            return self._real(address, *args, **kwargs)
        self.addresses.append(address)
        raise self.error


@pytest.fixture
def resolve_to(monkeypatch: pytest.MonkeyPatch) -> Callable[..., ConnectRecorder]:
    """``resolve_to(*addresses, error=None)``: every host name the test's thread looks up resolves to ``addresses``,
    and every connection the network guard lets through is recorded (and fails with ``error``) instead of being
    made."""

    real_getaddrinfo = socket.getaddrinfo
    real_create_connection = urllib3.util.connection.create_connection  # before any install() of this test
    test_thread = threading.get_ident()

    def install(*addresses: str, error: OSError | None = None) -> ConnectRecorder:
        def fake_getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
            if threading.get_ident() != test_thread:  # another thread's look-up (see ConnectRecorder)
                return real_getaddrinfo(host, port, *args, **kwargs)
            family = {True: socket.AF_INET6, False: socket.AF_INET}
            return [(family[":" in a], socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

        recorder = ConnectRecorder(
            error or ConnectionRefusedError("test: no real connection"), real_create_connection, test_thread
        )
        monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
        monkeypatch.setattr(urllib3.util.connection, "create_connection", recorder)
        return recorder

    return install


# ---------------------------------------------------------------------------------------------------- helpers
def exception_chain(exc: BaseException) -> list[BaseException]:
    """The exception and everything chained to it (``__cause__`` and ``__context__``), each once."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or any(current is known for known in seen):
            continue
        seen.append(current)
        pending.extend([current.__cause__, current.__context__])
    return seen


def _assert_secret_absent(exc: BaseException, secret: str) -> None:
    for link in exception_chain(exc):
        for text in (str(link), repr(link), repr(link.args)):
            assert secret not in text, f"the secret leaks through {type(link).__name__}: {text!r}"


@pytest.fixture
def assert_secret_absent() -> Callable[[BaseException, str], None]:
    """Check that a secret appears in no str, repr or args of an exception or of anything chained to it."""
    return _assert_secret_absent
