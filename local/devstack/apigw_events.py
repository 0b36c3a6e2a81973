"""Pure translation of an HTTP request into the event a function receives behind a REST API: no sockets.

:func:`build_event` turns an :class:`IncomingRequest` and the route it resolved to into the Lambda proxy
integration event (payload format 1.0), as API Gateway builds it:

* the headers API Gateway adds on the way in (``X-Forwarded-For/Port/Proto``, ``X-Amzn-Trace-Id``), single and
  multi-value maps of headers and of the query string (values decoded);
* ``path`` and ``pathParameters`` keep the client's percent-encoding; ``requestContext.path`` carries the stage
  prefix when the client used it (``/prod/v1/images``), as on AWS;
* request bodies whose content type is not text/JSON/XML/form (or undeclared and not UTF-8) are passed
  base64-encoded, as if the API declared ``binaryMediaTypes`` for them;
* ``requestContext.identity`` carries the API key and a stable :func:`api_key_id` on routes that require a key.

What does not live here: the response side (``devstack.apigw_responses``), routing (``devstack.routes``), and the
server, throttling and invocation (``devstack.gateway``).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from .routes import Route

__all__ = ["ApiIdentity", "IncomingRequest", "api_key_id", "build_event", "is_text", "random_id", "request_time"]

# Content types passed to the function as text; everything else is passed base64-encoded.
_TEXT_MIME_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",
        "application/x-www-form-urlencoded",
        "application/x-yaml",
        "application/yaml",
    }
)

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class IncomingRequest:
    """An HTTP request as the gateway received it, stage prefix already taken off ``path``."""

    method: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    """Every header line in the order received, repeats included."""
    body: bytes = b""
    source_ip: str = "127.0.0.1"
    protocol: str = "HTTP/1.1"
    public_prefix: str = ""
    """``/<stage>`` when the client used the execute-api style URL, else empty."""

    def header(self, name: str) -> str | None:
        """The last value of a header (case-insensitive), or ``None``."""
        lower = name.lower()
        values = [value for key, value in self.headers if key.lower() == lower]
        return values[-1] if values else None


@dataclass(frozen=True)
class ApiIdentity:
    """What the event and the gateway's own answers say about the API that served the request."""

    api_id: str
    stage: str
    account_id: str
    host: str = "127.0.0.1"
    port: int = 3000

    def domain_name(self, request: IncomingRequest) -> str:
        """The ``Host`` the client used, without its port (else the gateway's host)."""
        host = request.header("host") or self.host
        return host if host.endswith("]") else host.rsplit(":", 1)[0]


def random_id(length: int) -> str:
    """A random id of lower-case letters and digits (API ids, like API Gateway's)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def short_hash(text: str, length: int) -> str:
    """A stable short id derived from ``text``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def api_key_id(api_key: str) -> str:
    """The ``requestContext.identity.apiKeyId`` the local gateway reports for an API key (stable)."""
    return short_hash(f"api-key:{api_key}", 10)


def request_time(now: datetime) -> str:
    """``requestContext.requestTime``: ``29/Nov/2026:17:36:08 +0000``."""
    return f"{now:%d}/{_MONTHS[now.month - 1]}/{now:%Y:%H:%M:%S} +0000"


def is_text(content_type: str) -> bool:
    """Whether a request body of this content type reaches the function as text (else base64)."""
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime.startswith("text/") or mime in _TEXT_MIME_TYPES or mime.endswith(("+json", "+xml"))


def build_event(
    request: IncomingRequest,
    route: Route,
    path_params: Mapping[str, str],
    api: ApiIdentity,
    *,
    request_id: str,
    apigw_id: str,
    api_key: str | None = None,
    now: datetime | None = None,
    trace_id: str | None = None,
) -> dict[str, Any]:
    """The REST API proxy event (payload format 1.0) a function receives for ``request`` on ``route``.

    ``now`` and ``trace_id`` (the ``X-Amzn-Trace-Id`` added when the client sent none) default to the clock and
    a random id; tests pass their own."""
    source_ip = request.source_ip
    headers: dict[str, str] = {}
    multi_headers: dict[str, list[str]] = {}
    for name, value in request.headers:
        headers[name] = value
        multi_headers.setdefault(name, []).append(value)
    lower_names = {name.lower(): name for name in headers}

    def set_header(name: str, value: str) -> None:
        name = lower_names.setdefault(name.lower(), name)
        headers[name] = value
        multi_headers[name] = [value]

    # Headers API Gateway adds on the way in.
    forwarded_for = headers.get(lower_names.get("x-forwarded-for", ""))
    set_header("X-Forwarded-For", f"{forwarded_for}, {source_ip}" if forwarded_for else source_ip)
    if "x-forwarded-port" not in lower_names:
        set_header("X-Forwarded-Port", str(api.port))
    if "x-forwarded-proto" not in lower_names:
        set_header("X-Forwarded-Proto", "http")
    if "x-amzn-trace-id" not in lower_names:
        set_header("X-Amzn-Trace-Id", trace_id or f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}")

    query_single: dict[str, str] = {}
    query_multi: dict[str, list[str]] = {}
    for key, value in parse_qsl(request.query, keep_blank_values=True):
        query_single[key] = value
        query_multi.setdefault(key, []).append(value)

    event_body, is_base64 = _event_body(request.body, request.header("content-type"))
    now = now or datetime.now(UTC)
    domain_name = api.domain_name(request)
    identity: dict[str, Any] = {
        "cognitoIdentityPoolId": None,
        "accountId": None,
        "cognitoIdentityId": None,
        "caller": None,
        "sourceIp": source_ip,
        "principalOrgId": None,
        "accessKey": None,
        "cognitoAuthenticationType": None,
        "cognitoAuthenticationProvider": None,
        "userArn": None,
        "userAgent": request.header("user-agent"),
        "user": None,
    }
    if route.api_key_required:
        identity["apiKey"] = api_key
        identity["apiKeyId"] = api_key_id(api_key or "")
    return {
        "resource": route.path,
        "path": request.path,
        "httpMethod": request.method,
        "headers": headers or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": query_single or None,
        "multiValueQueryStringParameters": query_multi or None,
        "pathParameters": dict(path_params) or None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": short_hash(f"{route.api_id}:{route.path}", 6),
            "resourcePath": route.path,
            "httpMethod": request.method,
            "extendedRequestId": apigw_id,
            "requestTime": request_time(now),
            "path": f"{request.public_prefix}{request.path}",
            "accountId": api.account_id,
            "protocol": request.protocol,
            "stage": api.stage,
            "domainPrefix": domain_name.split(".", 1)[0],
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "requestId": request_id,
            "identity": identity,
            "domainName": domain_name,
            "apiId": api.api_id,
        },
        "body": event_body,
        "isBase64Encoded": is_base64,
    }


def _event_body(body: bytes, content_type: str | None) -> tuple[str | None, bool]:
    """The event's ``body`` and ``isBase64Encoded``: text for text types (or undeclared UTF-8), else base64."""
    if not body:
        return None, False
    if content_type is not None and is_text(content_type):
        return body.decode("utf-8", errors="replace"), False
    if content_type is None:
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), True
