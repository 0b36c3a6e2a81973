"""Pure translation of what reaches the client: a function's proxy response, or the gateway's own answer.

What lives here:

* :func:`translate_proxy_response`: what the function returned (REST API proxy integration, payload format
  1.0) → status, headers and body as API Gateway renders them: single and multi-value headers merged, reserved
  headers remapped to ``x-amzn-Remapped-*``, a base64 body decoded (always, as if ``binaryMediaTypes`` matched);
  a malformed result raises :class:`MalformedProxyResponse` (API Gateway's 502).
* :func:`gateway_error_response`: the answers the gateway makes itself (``GATEWAY_ERRORS``: no route, invalid
  API key, throttled, integration timeout, function error), customised by the API's ``GatewayResponses``
  (status, ``'literal'`` and ``method.request.header.*`` header mappings, ``$context`` body templates).

What does not: the request side (``devstack.apigw_events``), and sockets, throttling and invocation
(``devstack.gateway``).
"""

from __future__ import annotations

import base64
import binascii
import decimal
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .apigw_events import ApiIdentity, IncomingRequest
from .template import GatewayResponseTemplate

__all__ = [
    "GATEWAY_ERRORS",
    "PROXY_RESPONSE_KEYS",
    "GatewayResponse",
    "MalformedProxyResponse",
    "gateway_error_response",
    "lambda_json_default",
    "render_context_template",
    "translate_proxy_response",
]

# Response headers API Gateway does not pass through from the integration: it renames them to
# ``x-amzn-Remapped-<name>`` and sets its own (Content-Length, Date, Connection).
_REMAPPED_RESPONSE_HEADERS = frozenset(
    {"authorization", "connection", "content-length", "date", "server", "transfer-encoding", "www-authenticate"}
)
PROXY_RESPONSE_KEYS = frozenset({"statusCode", "headers", "multiValueHeaders", "body", "isBase64Encoded"})


@dataclass
class GatewayResponse:
    """An HTTP answer of the gateway: status, headers in order (repeats allowed), body bytes."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class MalformedProxyResponse(Exception):
    """A Lambda proxy response API Gateway cannot render (it answers 502 instead)."""


# Response type → (default status, message, x-amzn-ErrorType) of the answers the gateway makes itself.
GATEWAY_ERRORS: dict[str, tuple[int, str, str]] = {
    "MISSING_AUTHENTICATION_TOKEN": (403, "Missing Authentication Token", "MissingAuthenticationTokenException"),
    "INVALID_API_KEY": (403, "Forbidden", "ForbiddenException"),
    "THROTTLED": (429, "Too Many Requests", "TooManyRequestsException"),
    "INTEGRATION_TIMEOUT": (504, "Endpoint request timed out", "InternalServerErrorException"),
    # A function error, a timeout of the function itself or a malformed proxy response.
    "DEFAULT_5XX": (502, "Internal server error", "InternalServerErrorException"),
}


def render_context_template(template: str, variables: Mapping[str, str]) -> str:
    """Substitute ``$context.x`` / ``$!{context.x}`` references of a gateway response template."""

    def replace(match: re.Match[str]) -> str:
        name = (match.group(1) or match.group(2)).rstrip(".")
        return variables.get(name, "")

    return re.sub(r"\$!?(?:\{context\.([A-Za-z0-9_.]+)\}|context\.([A-Za-z0-9_.]+))", replace, template)


def lambda_json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` as Lambda's Python runtime serialises a result."""
    # The Lambda Python runtime serialises Decimal results as numbers; anything else is a marshal error.
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _header_value(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    raise MalformedProxyResponse(f"{where} must be a string, got {type(value).__name__}")


def _status_code(value: Any) -> int:
    if isinstance(value, bool):
        raise MalformedProxyResponse("statusCode must be an integer, got a boolean")
    if isinstance(value, int):
        status = value
    elif isinstance(value, str) and value.strip().isdigit():
        status = int(value.strip())
    else:
        raise MalformedProxyResponse(f"statusCode must be an integer, got {value!r}")
    if not 100 <= status <= 599:
        raise MalformedProxyResponse(f"statusCode {status} is not an HTTP status code")
    return status


def translate_proxy_response(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body bytes from a Lambda proxy response, as API Gateway renders them."""
    if not isinstance(result, dict):
        raise MalformedProxyResponse(f"the function returned {type(result).__name__}, not an object")
    if "statusCode" not in result:
        raise MalformedProxyResponse("statusCode is missing")
    status = _status_code(result["statusCode"])

    merged: dict[str, tuple[str, list[str]]] = {}
    multi = result.get("multiValueHeaders")
    if multi is not None:
        if not isinstance(multi, dict):
            raise MalformedProxyResponse("multiValueHeaders must be an object")
        for name, values in multi.items():
            if not isinstance(values, list):
                raise MalformedProxyResponse(f"multiValueHeaders[{name!r}] must be a list")
            entry = merged.setdefault(name.lower(), (name, []))
            entry[1].extend(_header_value(v, f"multiValueHeaders[{name!r}]") for v in values)
    single = result.get("headers")
    if single is not None:
        if not isinstance(single, dict):
            raise MalformedProxyResponse("headers must be an object")
        for name, value in single.items():
            text = _header_value(value, f"headers[{name!r}]")
            entry = merged.setdefault(name.lower(), (name, []))
            # Both maps are merged; a pair present in both appears once.
            if text not in entry[1]:
                entry[1].append(text)

    headers: list[tuple[str, str]] = []
    for lower, (name, values) in merged.items():
        out_name = f"x-amzn-Remapped-{name}" if lower in _REMAPPED_RESPONSE_HEADERS else name
        headers.extend((out_name, value) for value in values)
    if "content-type" not in merged:
        headers.append(("Content-Type", "application/json"))

    body = result.get("body")
    is_base64 = result.get("isBase64Encoded", False)
    if isinstance(is_base64, str) and is_base64.lower() in ("true", "false"):
        is_base64 = is_base64.lower() == "true"
    if not isinstance(is_base64, bool):
        raise MalformedProxyResponse(f"isBase64Encoded must be a boolean, got {is_base64!r}")
    if body is None:
        payload = b""
    elif not isinstance(body, str):
        raise MalformedProxyResponse(f"body must be a string, got {type(body).__name__}")
    elif is_base64:
        try:
            payload = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MalformedProxyResponse(f"body is not valid base64: {exc}") from exc
    else:
        payload = body.encode("utf-8")
    return status, headers, payload


def gateway_error_response(
    response_type: str,
    request: IncomingRequest,
    api: ApiIdentity,
    gateway_responses: Mapping[str, GatewayResponseTemplate],
    *,
    request_id: str,
    apigw_id: str,
    log: Callable[[str], None] = lambda message: None,
) -> GatewayResponse:
    """An answer API Gateway makes itself (a ``GATEWAY_ERRORS`` key), customised by ``gateway_responses``.

    ``log`` hears of a header mapping the local gateway cannot evaluate (that header is left out)."""
    status, message, error_type = GATEWAY_ERRORS[response_type]
    custom = gateway_responses.get(response_type)
    fallback = gateway_responses.get("DEFAULT_5XX" if status >= 500 else "DEFAULT_4XX")
    if custom is None:
        custom = fallback
    if custom is not None and custom.status_code is not None:
        status = custom.status_code
    elif fallback is not None and fallback.status_code is not None:
        status = fallback.status_code
    headers: list[tuple[str, str]] = []
    content_type, template = "application/json", '{"message":$context.error.messageString}'
    if custom is not None:
        for name, expression in custom.headers.items():
            value = _mapping_value(expression, request, log)
            if value is not None:
                headers.append((name, value))
        if custom.templates:
            content_type = (
                "application/json" if "application/json" in custom.templates else next(iter(custom.templates))
            )
            template = custom.templates[content_type]
    variables = {
        "requestId": request_id,
        "extendedRequestId": apigw_id,
        "apiId": api.api_id,
        "stage": api.stage,
        "httpMethod": request.method,
        "path": f"{request.public_prefix}{request.path}",
        "domainName": api.domain_name(request),
        "identity.sourceIp": request.source_ip,
        "identity.userAgent": request.header("user-agent") or "",
        "error.message": message,
        "error.messageString": json.dumps(message),
        "error.responseType": response_type,
    }
    body = render_context_template(template, variables).encode("utf-8")
    headers.insert(0, ("Content-Type", content_type))
    headers.append(("x-amzn-ErrorType", error_type))
    return GatewayResponse(status, headers, body)


def _mapping_value(expression: str, request: IncomingRequest, log: Callable[[str], None]) -> str | None:
    """A gateway response header mapping: ``'literal'`` or ``method.request.header.<name>``."""
    expression = expression.strip()
    if len(expression) >= 2 and expression[0] == expression[-1] == "'":
        return expression[1:-1]
    prefix = "method.request.header."
    if expression.lower().startswith(prefix):
        return request.header(expression[len(prefix) :])
    log(f"gateway response header mapping {expression!r} is not supported locally; header left out")
    return None
