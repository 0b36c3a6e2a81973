"""A Docker-free local stand-in for Amazon API Gateway (REST API, Lambda proxy integration v1): the server.

``sam local start-api`` needs Docker; :class:`LocalApiGateway` serves the same routes in-process instead, as a
threaded HTTP server that behaves like the deployed REST API: the same route resolution, API-key check,
usage-plan throttling (a token bucket per key), proxy event, integration timeout, gateway error answers and
translation of the proxy response.

What lives here: sockets, the API-key check, throttling and invoking the function (on a thread, with the
integration timeout). What does not: reading the template (``devstack.template``: :func:`load_template`,
:func:`load_api_config`, :func:`load_sqs_mappings`), routes (``devstack.routes``: :func:`load_routes`,
:func:`resolve_route`), and the pure translations, request to event (``devstack.apigw_events``) and proxy
response or gateway error to HTTP answer (``devstack.apigw_responses``). Their public names are re-exported
here, so ``from devstack.gateway import load_routes, LocalApiGateway`` keeps working.

Behaviour chosen to match real API Gateway: a method API Gateway does not route (TRACE, CONNECT, PROPFIND, any
token) matches no route, ``ANY`` included, and gets the same ``403 {"message":"Missing Authentication Token"}``
as an unrouted path, never http.server's 501. The service is served at the root
(``http://127.0.0.1:3000/v1/images``), as ``sam local start-api`` does, and also under ``/<stage>`` like the
execute-api URL; ``requestContext.path`` carries the stage prefix the client used.

Not emulated: stage-wide ``MethodSettings`` throttling, usage-plan quotas, payload size limits, and the MOCK
``OPTIONS`` methods SAM adds for an API's ``Cors``.

Over 300 lines for one reason: it is one class, the server, whose parts (lifecycle, reading the request, the
API-key check, throttling, the invocation with its timeout) share its state; the translations it uses are pure
and live in their own modules.
"""

from __future__ import annotations

import base64
import collections
import json
import math
import secrets
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO
from urllib.parse import urlsplit

from .apigw_events import ApiIdentity, IncomingRequest, api_key_id, build_event, random_id
from .apigw_responses import (
    PROXY_RESPONSE_KEYS,
    GatewayResponse,
    MalformedProxyResponse,
    gateway_error_response,
    lambda_json_default,
    translate_proxy_response,
)
from .lambda_context import DEFAULT_ACCOUNT_ID, LambdaContext, make_context
from .routes import HTTP_METHODS, Route, compile_routes, load_routes, resolve, resolve_route
from .serving import ServerThread, http_url
from .template import (
    IMPLICIT_API_ID,
    ApiConfig,
    GatewayResponseTemplate,
    SqsMapping,
    load_api_config,
    load_sqs_mappings,
    load_template,
)

__all__ = [
    "HTTP_METHODS",
    "IMPLICIT_API_ID",
    "ApiConfig",
    "GatewayResponse",
    "GatewayResponseTemplate",
    "Handler",
    "Invoke",
    "LocalApiGateway",
    "Route",
    "SqsMapping",
    "api_key_id",
    "load_api_config",
    "load_routes",
    "load_sqs_mappings",
    "load_template",
    "resolve_route",
]

Handler = Callable[[dict[str, Any], LambdaContext], Any]
"""A Lambda handler: ``handler(event, context) -> proxy response``."""

Invoke = Callable[[str, dict[str, Any], LambdaContext], Any]
"""An invoker: ``invoke(function_logical_id, event, context) -> proxy response``."""

LOG_PREFIX = "[gateway]"


class _TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._capacity = float(burst)
        self._tokens = float(burst)
        self._updated = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
            self._updated = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 drops bursts of new connections (many clients at once)
    gateway: LocalApiGateway


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """The gateway writes its own access log; keep http.server quiet."""

    def setup(self) -> None:
        super().setup()
        # No Nagle stall (~40 ms with the client's delayed ACK) between the headers and the body.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_response(self, code: int, message: str | None = None) -> None:
        # Like API Gateway: a Date header, no Server header.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def _dispatch(self) -> None:
        self.server.gateway._serve(self)

    do_DELETE = do_GET = do_HEAD = do_OPTIONS = do_PATCH = do_POST = do_PUT = _dispatch

    def __getattr__(self, name: str) -> Any:
        # http.server answers a method without a ``do_<METHOD>`` (TRACE, CONNECT, PROPFIND, any token) with its own
        # bare 501 page; API Gateway answers it like any unrouted request. Every method goes through the routing.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)


class LocalApiGateway:
    """A local REST API (Lambda proxy integration) in front of in-process Lambda handlers.

    ``invoke`` is either ``invoke(function_logical_id, event, context)`` or a mapping from function
    logical id to ``handler(event, context)``. Start with :meth:`start` (or ``with``), stop with
    :meth:`stop`; the base URL is :attr:`url` (``port=0`` picks a free port).
    """

    def __init__(
        self,
        routes: Iterable[Route],
        invoke: Invoke | Mapping[str, Handler],
        api_keys: Iterable[str],
        host: str = "127.0.0.1",
        port: int = 3000,
        stage: str = "prod",
        function_timeout_s: float = 29,
        integration_timeout_s: float = 29,
        throttle_rate: float | None = None,
        throttle_burst: int | None = None,
        *,
        memory_mb: int = 512,
        account_id: str = DEFAULT_ACCOUNT_ID,
        gateway_responses: Mapping[str, GatewayResponseTemplate] | None = None,
        log_stream: TextIO | None = None,
        redirects: Mapping[str, str] | None = None,
    ) -> None:
        self.routes = list(routes)
        self._resources = compile_routes(self.routes)
        self._invoke = self._make_invoker(invoke, self.routes)
        self._api_keys = frozenset(key for key in api_keys if key)
        self.host = host
        self.port = port
        self.stage = stage
        if function_timeout_s <= 0 or integration_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        self.function_timeout_s = function_timeout_s
        self.integration_timeout_s = integration_timeout_s
        if throttle_rate is None and throttle_burst is not None:
            raise ValueError("throttle_burst needs throttle_rate")
        if throttle_rate is not None and (throttle_rate < 0 or (throttle_burst or 0) < 0):
            raise ValueError("throttle_rate and throttle_burst must not be negative")
        self.throttle_rate = throttle_rate
        self.throttle_burst = (
            throttle_burst if throttle_burst is not None or throttle_rate is None else max(1, math.ceil(throttle_rate))
        )
        self.memory_mb = memory_mb
        self.account_id = account_id
        self.api_id = random_id(10)
        self._gateway_responses = dict(gateway_responses or {})
        # Local only: a GET of one of these paths (with or without a trailing slash) answers 302 to the URL before
        # any route is looked at, e.g. /console to the console served on its own origin (devstack.console).
        self._redirects = {path.rstrip("/"): url for path, url in (redirects or {}).items()}
        self._log_stream = log_stream
        self._log_lock = threading.Lock()
        # Why it answered its last 100 5xx of its own (a function that raised, timed out or answered something
        # not a proxy response; not a function's own 500), as (request id, what the log says): a test that meets
        # one names the cause in its failure message, whatever a long log's excerpt leaves out.
        self.failures: collections.deque[tuple[str, str]] = collections.deque(maxlen=100)
        self._buckets: dict[str, _TokenBucket] = {}
        self._buckets_lock = threading.Lock()
        self._serving: ServerThread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    @staticmethod
    def _make_invoker(invoke: Invoke | Mapping[str, Handler], routes: list[Route]) -> Invoke:
        if isinstance(invoke, Mapping):
            handlers = dict(invoke)
            missing = sorted({route.function_id for route in routes} - handlers.keys())
            if missing:
                raise ValueError(f"no handler for function(s) {', '.join(missing)}")
            return lambda function_id, event, context: handlers[function_id](event, context)
        if not callable(invoke):
            raise TypeError("invoke must be a callable or a mapping of function id to handler")
        return invoke

    def start(self) -> LocalApiGateway:
        if self._serving is not None:
            raise RuntimeError("the gateway is already running")
        server = _Server((self.host, self.port), _RequestHandler)
        server.gateway = self
        self._serving = ServerThread(server, "local-api-gateway")
        self.port = self._serving.port
        self._serving.start()
        return self

    def stop(self) -> None:
        serving, self._serving = self._serving, None
        if serving is not None:
            serving.stop()

    def __enter__(self) -> LocalApiGateway:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    # -- logging -----------------------------------------------------------------------------------

    def _failed(self, request_id: str, message: str) -> str:
        self.failures.append((request_id, message))
        self._log(message)
        return "DEFAULT_5XX"

    def _log(self, message: str) -> None:
        stream = self._log_stream or sys.stderr
        with self._log_lock:
            print(f"{LOG_PREFIX} {message}", file=stream, flush=True)

    # -- request handling --------------------------------------------------------------------------

    def _serve(self, request: _RequestHandler) -> None:
        started = time.monotonic()
        method = request.command.upper()
        split = urlsplit(request.path)
        path = split.path or "/"
        # Served both at the root (like `sam local start-api`) and under /<stage> (like the execute-api URL);
        # requestContext.path carries what the client used, so handlers can build links that work for it.
        public_prefix = ""
        if path == f"/{self.stage}" or path.startswith(f"/{self.stage}/"):
            public_prefix, path = f"/{self.stage}", path[len(self.stage) + 1 :] or "/"
        incoming = IncomingRequest(
            method=method,
            path=path,
            query=split.query,
            headers=tuple(request.headers.items()),
            source_ip=request.client_address[0],
            protocol=request.request_version,
            public_prefix=public_prefix,
        )
        request_id = str(uuid.uuid4())
        apigw_id = base64.b64encode(secrets.token_bytes(10)).decode("ascii")[:15] + "="
        outcome: GatewayResponse | str
        try:
            incoming = replace(incoming, body=self._read_body(request))
            outcome = self._handle(incoming, request_id, apigw_id)
        except Exception:  # noqa: BLE001 - the gateway must answer, whatever went wrong locally
            outcome = self._failed(
                request_id, f"internal error while handling {method} {path}:\n{traceback.format_exc().rstrip()}"
            )
        if isinstance(outcome, str):
            response = gateway_error_response(
                outcome,
                incoming,
                self._identity(),
                self._gateway_responses,
                request_id=request_id,
                apigw_id=apigw_id,
                log=self._log,
            )
        else:
            response = outcome
        response.headers.extend([("x-amzn-RequestId", request_id), ("x-amz-apigw-id", apigw_id)])
        # Logged before the answer leaves: a client that reads the log right after its answer finds the line.
        elapsed_ms = (time.monotonic() - started) * 1000
        self._log(f"{method} {path} {response.status} {elapsed_ms:.1f}ms")
        try:
            self._write(request, method, response)
        except (BrokenPipeError, ConnectionResetError):
            request.close_connection = True  # the client went away; nothing left to tell it

    def _identity(self) -> ApiIdentity:
        return ApiIdentity(
            api_id=self.api_id, stage=self.stage, account_id=self.account_id, host=self.host, port=self.port
        )

    @staticmethod
    def _read_body(request: _RequestHandler) -> bytes:
        if "chunked" in (request.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(request.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while request.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(request.rfile.read(size))
                request.rfile.readline()
        length = int(request.headers.get("Content-Length") or 0)
        return request.rfile.read(length) if length > 0 else b""

    @staticmethod
    def _write(request: _RequestHandler, method: str, response: GatewayResponse) -> None:
        request.send_response(response.status)
        for name, value in response.headers:
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(response.body)))
        request.end_headers()
        if method != "HEAD" and response.body:
            request.wfile.write(response.body)
        request.wfile.flush()

    def _handle(self, request: IncomingRequest, request_id: str, apigw_id: str) -> GatewayResponse | str:
        method, path = request.method, request.path
        redirect = self._redirects.get(path.rstrip("/")) if method in ("GET", "HEAD") else None
        if redirect is not None:
            return GatewayResponse(302, [("Location", redirect), ("Content-Type", "text/plain")], b"")
        # ``ANY`` stands for API Gateway's seven methods; another method (TRACE, CONNECT, ...) matches no route.
        resolved = resolve(self._resources, method, path) if method in HTTP_METHODS else None
        if resolved is None:
            return "MISSING_AUTHENTICATION_TOKEN"
        route, path_params = resolved

        api_key: str | None = None
        if route.api_key_required:
            api_key = request.header("x-api-key")
            if api_key is None or api_key not in self._api_keys:
                return "INVALID_API_KEY"
            if not self._take_token(api_key):
                return "THROTTLED"

        event = build_event(
            request, route, path_params, self._identity(), request_id=request_id, apigw_id=apigw_id, api_key=api_key
        )
        return self._integrate(route, event, request_id)

    def _take_token(self, api_key: str) -> bool:
        if self.throttle_rate is None:
            return True
        with self._buckets_lock:
            bucket = self._buckets.get(api_key)
            if bucket is None:
                bucket = self._buckets[api_key] = _TokenBucket(self.throttle_rate, self.throttle_burst or 0)
        return bucket.take()

    # -- the proxy event ---------------------------------------------------------------------------

    # -- the integration ---------------------------------------------------------------------------

    def _integrate(self, route: Route, event: dict[str, Any], request_id: str) -> GatewayResponse | str:
        # Lambda hands the function a JSON copy of the event and JSON-serialises what it returns.
        event = json.loads(json.dumps(event))
        context = make_context(route.function_id, self.function_timeout_s, self.memory_mb, account_id=self.account_id)
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                outcome["result"] = self._invoke(route.function_id, event, context)
            except BaseException as exc:  # noqa: BLE001 - reported to the client as a Lambda function error
                # A function run in a child process (devstack.runtime) fails with Lambda's error document; its
                # traceback is already in that function's log.
                error = getattr(exc, "error", None)
                if isinstance(error, dict) and "errorType" in error:
                    outcome["error"] = f"{error['errorType']}: {error.get('errorMessage')}"
                else:
                    outcome["error"] = traceback.format_exc().rstrip()
            finally:
                done.set()

        worker = threading.Thread(
            target=run, name=f"lambda-{route.function_id}-{context.aws_request_id[:8]}", daemon=True
        )
        worker.start()
        if not done.wait(min(self.integration_timeout_s, self.function_timeout_s)):
            if self.integration_timeout_s <= self.function_timeout_s:
                self._log(
                    f"{route.function_id} did not answer within {self.integration_timeout_s:g}s "
                    f"(request {request_id}); it keeps running"
                )
                return "INTEGRATION_TIMEOUT"
            return self._failed(
                request_id, f"{route.function_id}: Task timed out after {self.function_timeout_s:.2f} seconds"
            )

        if "error" in outcome:
            message = f"{route.function_id} raised (request {request_id}):\n{outcome['error']}"
            return self._failed(request_id, message)
        try:
            result = json.loads(json.dumps(outcome["result"], default=lambda_json_default))
        except (TypeError, ValueError) as exc:
            return self._failed(request_id, f"{route.function_id}: Runtime.MarshalError, the result is not JSON: {exc}")
        try:
            status, headers, payload = translate_proxy_response(result)
        except MalformedProxyResponse as exc:
            return self._failed(
                request_id, f"{route.function_id}: malformed Lambda proxy response (request {request_id}): {exc}"
            )
        if unknown := sorted(set(result) - PROXY_RESPONSE_KEYS):
            self._log(f"{route.function_id}: proxy response keys ignored by API Gateway: {', '.join(unknown)}")
        return GatewayResponse(status, headers, payload)
