"""A Docker-free local stand-in for Amazon API Gateway (REST API, Lambda proxy integration v1).

``sam local start-api`` needs Docker; this module serves the same routes in-process instead:

* :func:`load_routes` reads the ``Type: Api`` events of every ``AWS::Serverless::Function`` in a SAM
  template (CloudFormation short tags such as ``!Ref`` are read as plain data; parameters, conditions
  and ``!If``/``!Sub``/``!Select``... are evaluated with the parameters' defaults unless overridden).
* :func:`load_api_config` reads an ``AWS::Serverless::Api``'s stage name, usage-plan throttle and
  ``GatewayResponses``, to pass on with ``LocalApiGateway(..., **config.gateway_kwargs())``.
* :class:`LocalApiGateway` is a threaded HTTP server that behaves like the deployed REST API: the same
  route resolution, API-key check, usage-plan throttling, proxy event (payload format 1.0), integration
  timeout and gateway error answers, and the same translation of the proxy response.

Behaviour chosen to match real API Gateway:

* Routes resolve on the (resource, method) pair: candidate resources are tried from the most specific
  (literal segment before ``{param}`` before ``{proxy+}``, left to right), and the first one declaring
  the request's method (or ``ANY``) wins; so ``OPTIONS /v1/images`` reaches ``OPTIONS /{proxy+}`` when
  ``/v1/images`` declares only ``POST``. No candidate: ``403 {"message":"Missing Authentication Token"}``.
  (Measured on AWS and published in ministackorg/ministack#1423 and floci-io/floci#3399.) Any other method
  (TRACE, CONNECT, PROPFIND, any token) matches no route, ``ANY`` included: the same answer, never http.server's 501.
* ``path`` and ``pathParameters`` keep the client's percent-encoding; query-string values are decoded.
  A greedy ``{proxy+}`` parameter holds the rest of the path without a leading slash.
* The service is served at the root (``http://127.0.0.1:3000/v1/images``), as ``sam local start-api``
  does; ``requestContext.path`` carries the stage prefix (``/prod/v1/images``) as on AWS.

Deliberate simplifications: request bodies whose content type is not text/JSON/XML/form are passed
base64-encoded (as if the API declared ``binaryMediaTypes`` for them), and a proxy response with
``isBase64Encoded: true`` is always decoded. Not emulated: stage-wide ``MethodSettings`` throttling,
usage-plan quotas, payload size limits, and the MOCK ``OPTIONS`` methods SAM adds for an API's ``Cors``.
"""

from __future__ import annotations

import base64
import binascii
import decimal
import hashlib
import json
import math
import re
import secrets
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlsplit

import yaml  # type: ignore[import-untyped]

from .lambda_context import DEFAULT_ACCOUNT_ID, LambdaContext, make_context

__all__ = [
    "ApiConfig",
    "GatewayResponse",
    "GatewayResponseTemplate",
    "Handler",
    "Invoke",
    "LocalApiGateway",
    "Route",
    "api_key_id",
    "load_api_config",
    "load_routes",
    "load_template",
    "resolve_route",
]

Handler = Callable[[dict[str, Any], LambdaContext], Any]
"""A Lambda handler: ``handler(event, context) -> proxy response``."""

Invoke = Callable[[str, dict[str, Any], LambdaContext], Any]
"""An invoker: ``invoke(function_logical_id, event, context) -> proxy response``."""

HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
IMPLICIT_API_ID = "ServerlessRestApi"
LOG_PREFIX = "[gateway]"

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
# Response headers API Gateway does not pass through from the integration: it renames them to
# ``x-amzn-Remapped-<name>`` and sets its own (Content-Length, Date, Connection).
_REMAPPED_RESPONSE_HEADERS = frozenset(
    {"authorization", "connection", "content-length", "date", "server", "transfer-encoding", "www-authenticate"}
)
_PROXY_RESPONSE_KEYS = frozenset({"statusCode", "headers", "multiValueHeaders", "body", "isBase64Encoded"})
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# --------------------------------------------------------------------------------------------------
# SAM template → routes
# --------------------------------------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    """A ``SafeLoader`` that reads CloudFormation short tags (``!Ref``, ``!Sub``, ...) as plain data."""


def _construct_cfn_tag(loader: _CfnLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if tag_suffix in ("Ref", "Condition"):
        return {tag_suffix: value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_cfn_tag)


def load_template(template_path: str | Path) -> dict[str, Any]:
    """Parse a SAM/CloudFormation YAML template, keeping intrinsic functions as ``{"Fn::X": ...}``."""
    with Path(template_path).open(encoding="utf-8") as stream:
        document = yaml.load(stream, Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(document, dict):
        raise ValueError(f"{template_path}: not a CloudFormation template (top level is not a mapping)")
    return document


@dataclass(frozen=True)
class Route:
    """One ``Type: Api`` event of a function: ``method path`` → function."""

    path: str
    method: str
    function_id: str
    handler: str | None = None
    api_key_required: bool = False
    api_id: str = IMPLICIT_API_ID
    event_id: str = ""

    def __str__(self) -> str:
        key = " (api key)" if self.api_key_required else ""
        return f"{self.method} {self.path} -> {self.function_id}{key}"


_NO_VALUE = object()
_PSEUDO_PARAMETERS = {
    "AWS::AccountId": DEFAULT_ACCOUNT_ID,
    "AWS::Partition": "aws",
    "AWS::Region": "us-east-1",
    "AWS::StackName": "local",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::NotificationARNs": "",
    "AWS::StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/local/local",
}


class _Intrinsics:
    """Evaluates the intrinsic functions a local gateway needs: parameters, conditions, strings.

    Parameters take their ``Default`` unless overridden; a reference to a resource evaluates to its
    logical id and ``Fn::GetAtt`` to ``"Id.Attribute"`` (placeholders; nothing is deployed locally).
    """

    def __init__(self, template: Mapping[str, Any], parameters: Mapping[str, Any] | None = None) -> None:
        self._conditions: Mapping[str, Any] = template.get("Conditions") or {}
        self._condition_values: dict[str, bool] = {}
        self._parameters: dict[str, str] = {}
        for name, spec in (template.get("Parameters") or {}).items():
            if isinstance(spec, dict) and "Default" in spec:
                self._parameters[name] = self._text(spec["Default"])
        for name, value in (parameters or {}).items():
            self._parameters[name] = self._text(value)

    @staticmethod
    def _text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, list):
            return ",".join(_Intrinsics._text(item) for item in value)
        return str(value)

    def condition(self, name: str) -> bool:
        if name not in self._condition_values:
            if name not in self._conditions:
                raise ValueError(f"unknown condition {name!r}")
            self._condition_values[name] = bool(self.resolve(self._conditions[name]))
        return self._condition_values[name]

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in self._parameters:
            return self._parameters[name]
        return _PSEUDO_PARAMETERS.get(name, name)

    def _sub(self, text: str, variables: Mapping[str, Any]) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return self._text(variables[name])
            return self._text(self._ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [item for item in (self.resolve(v) for v in value) if item is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {k: r for k, r in ((k, self.resolve(v)) for k, v in value.items()) if r is not _NO_VALUE}
        ((key, arg),) = value.items()
        if key == "Ref":
            return self._ref(arg)
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::If":
            name, when_true, when_false = arg
            return self.resolve(when_true if self.condition(name) else when_false)
        if key == "Fn::Equals":
            left, right = (self._text(self.resolve(item)) for item in arg)
            return left == right
        if key == "Fn::Not":
            return not self.resolve(arg[0])
        if key == "Fn::And":
            return all(self.resolve(item) for item in arg)
        if key == "Fn::Or":
            return any(self.resolve(item) for item in arg)
        if key == "Fn::Select":
            index, items = self.resolve(arg[0]), self.resolve(arg[1])
            return items[int(index)]
        if key == "Fn::Split":
            delimiter, text = self.resolve(arg[0]), self.resolve(arg[1])
            return self._text(text).split(delimiter)
        if key == "Fn::Join":
            delimiter, items = self.resolve(arg[0]), self.resolve(arg[1])
            return delimiter.join(self._text(item) for item in items)
        if key == "Fn::Sub":
            if isinstance(arg, str):
                return self._sub(arg, {})
            text, variables = arg
            return self._sub(text, self.resolve(variables))
        if key == "Fn::GetAtt":
            return ".".join(self._text(part) for part in arg)
        return {key: self.resolve(arg)}


def _as_bool(value: Any, where: str) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{where}: expected a boolean, got {value!r}")


def _auth_api_key_required(auth: Any, intrinsics: _Intrinsics, where: str) -> bool | None:
    auth = intrinsics.resolve(auth)
    if not isinstance(auth, dict):
        return None
    return _as_bool(auth.get("ApiKeyRequired"), f"{where}.ApiKeyRequired")


def _resources_of_type(template: Mapping[str, Any], type_name: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (logical_id, resource)
        for logical_id, resource in (template.get("Resources") or {}).items()
        if isinstance(resource, dict) and resource.get("Type") == type_name
    ]


def load_routes(
    template_path: str | Path,
    function_logical_id: str | None = None,
    *,
    parameters: Mapping[str, Any] | None = None,
) -> list[Route]:
    """Every ``Type: Api`` event of every ``AWS::Serverless::Function`` (or only of one function).

    ``Auth.ApiKeyRequired`` of an event wins; otherwise the default of the API it belongs to applies:
    the ``AWS::Serverless::Api`` named by ``RestApiId`` (its ``Auth.ApiKeyRequired``, else
    ``Globals.Api.Auth.ApiKeyRequired``), or the implicit API (``Globals.Api.Auth.ApiKeyRequired``).
    Intrinsic functions are evaluated with the parameters' defaults, overridden by ``parameters``.
    """
    template = load_template(template_path)
    intrinsics = _Intrinsics(template, parameters)
    globals_ = template.get("Globals") or {}
    global_api_key = _auth_api_key_required((globals_.get("Api") or {}).get("Auth"), intrinsics, "Globals.Api.Auth")
    global_handler = (globals_.get("Function") or {}).get("Handler")

    api_defaults: dict[str, bool] = {IMPLICIT_API_ID: bool(global_api_key)}
    for logical_id, resource in _resources_of_type(template, "AWS::Serverless::Api"):
        auth = (resource.get("Properties") or {}).get("Auth")
        own = _auth_api_key_required(auth, intrinsics, f"{logical_id}.Properties.Auth")
        api_defaults[logical_id] = own if own is not None else bool(global_api_key)

    routes: list[Route] = []
    for logical_id, resource in _resources_of_type(template, "AWS::Serverless::Function"):
        if function_logical_id is not None and logical_id != function_logical_id:
            continue
        properties = resource.get("Properties") or {}
        handler = intrinsics.resolve(properties.get("Handler", global_handler))
        for event_id, event in (properties.get("Events") or {}).items():
            if not isinstance(event, dict) or event.get("Type") != "Api":
                continue
            where = f"{logical_id}.Events.{event_id}.Properties"
            event_props = event.get("Properties") or {}
            path, method = intrinsics.resolve(event_props.get("Path")), intrinsics.resolve(event_props.get("Method"))
            if not isinstance(path, str) or not isinstance(method, str):
                raise ValueError(f"{where}: Path and Method must be strings, got {path!r} {method!r}")
            rest_api = event_props.get("RestApiId")
            api_id = rest_api["Ref"] if isinstance(rest_api, dict) and "Ref" in rest_api else IMPLICIT_API_ID
            own = _auth_api_key_required(event_props.get("Auth"), intrinsics, f"{where}.Auth")
            routes.append(
                Route(
                    path=_normalise_route_path(path),
                    method=method.strip().upper(),
                    function_id=logical_id,
                    handler=handler if isinstance(handler, str) else None,
                    api_key_required=own if own is not None else api_defaults.get(api_id, bool(global_api_key)),
                    api_id=api_id,
                    event_id=event_id,
                )
            )
    return routes


@dataclass(frozen=True)
class GatewayResponseTemplate:
    """A customised gateway response (``GatewayResponses.<TYPE>`` of an ``AWS::Serverless::Api``).

    ``headers`` map a header name to an API Gateway mapping expression: ``'literal'`` or
    ``method.request.header.<name>``. ``templates`` map a content type to a body template in which
    ``$context.*`` variables are substituted (``$context.error.messageString`` is JSON-quoted).
    """

    status_code: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    templates: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiConfig:
    """Settings of one REST API from the template, for :class:`LocalApiGateway`'s keyword arguments."""

    api_id: str
    stage: str = "prod"
    throttle_rate: float | None = None
    throttle_burst: int | None = None
    gateway_responses: Mapping[str, GatewayResponseTemplate] = field(default_factory=dict)

    def gateway_kwargs(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "throttle_rate": self.throttle_rate,
            "throttle_burst": self.throttle_burst,
            "gateway_responses": self.gateway_responses,
        }


def load_api_config(
    template_path: str | Path,
    api_logical_id: str | None = None,
    *,
    parameters: Mapping[str, Any] | None = None,
) -> ApiConfig:
    """Stage name, usage-plan throttle and gateway responses of an ``AWS::Serverless::Api``.

    With no ``api_logical_id`` the template must declare exactly one ``AWS::Serverless::Api`` (or none:
    the implicit API, which has no such settings). Not read: stage-wide ``MethodSettings`` throttling,
    usage-plan quotas and CORS.
    """
    template = load_template(template_path)
    intrinsics = _Intrinsics(template, parameters)
    apis = dict(_resources_of_type(template, "AWS::Serverless::Api"))
    if api_logical_id is None:
        if not apis:
            return ApiConfig(api_id=IMPLICIT_API_ID)
        if len(apis) > 1:
            raise ValueError(f"several APIs in the template ({', '.join(apis)}); name one")
        api_logical_id = next(iter(apis))
    if api_logical_id not in apis:
        raise ValueError(f"no AWS::Serverless::Api named {api_logical_id!r}")
    globals_api = intrinsics.resolve((template.get("Globals") or {}).get("Api") or {})
    properties = {**globals_api, **intrinsics.resolve(apis[api_logical_id].get("Properties") or {})}

    throttle = ((properties.get("Auth") or {}).get("UsagePlan") or {}).get("Throttle") or {}
    rate, burst = throttle.get("RateLimit"), throttle.get("BurstLimit")
    responses: dict[str, GatewayResponseTemplate] = {}
    for response_type, spec in (properties.get("GatewayResponses") or {}).items():
        spec = spec or {}
        status = spec.get("StatusCode")
        responses[str(response_type)] = GatewayResponseTemplate(
            status_code=int(status) if status is not None else None,
            headers={str(k): str(v) for k, v in ((spec.get("ResponseParameters") or {}).get("Headers") or {}).items()},
            templates={str(k): str(v) for k, v in (spec.get("ResponseTemplates") or {}).items()},
        )
    return ApiConfig(
        api_id=api_logical_id,
        stage=str(properties.get("StageName") or "prod"),
        throttle_rate=float(rate) if rate is not None else None,
        throttle_burst=int(burst) if burst is not None else (None if rate is None else max(1, math.ceil(float(rate)))),
        gateway_responses=responses,
    )


# --------------------------------------------------------------------------------------------------
# Route resolution
# --------------------------------------------------------------------------------------------------

_LITERAL, _PARAM, _GREEDY = 0, 1, 2


def _normalise_route_path(path: str) -> str:
    path = "/" + path.strip().strip("/")
    return path


def _split_path(path: str) -> list[str]:
    """Segments of a request or resource path; ``/`` → ``[]``; one trailing slash is ignored."""
    trimmed = path[1:] if path.startswith("/") else path
    if trimmed.endswith("/"):
        trimmed = trimmed[:-1]
    return trimmed.split("/") if trimmed else []


@dataclass(frozen=True)
class _CompiledResource:
    path: str
    segments: tuple[tuple[int, str], ...]
    methods: Mapping[str, Route]

    def match(self, request_segments: list[str]) -> tuple[tuple[int, ...], dict[str, str]] | None:
        rank: list[int] = []
        params: dict[str, str] = {}
        for index, (kind, text) in enumerate(self.segments):
            if kind == _GREEDY:
                rest = request_segments[index:]
                if not rest or not any(rest):
                    return None
                params[text] = "/".join(rest)
                rank.append(_GREEDY)
                return tuple(rank), params
            if index >= len(request_segments):
                return None
            segment = request_segments[index]
            if kind == _LITERAL:
                if segment != text:
                    return None
            elif not segment:
                return None
            else:
                params[text] = segment
            rank.append(kind)
        if len(request_segments) != len(self.segments):
            return None
        return tuple(rank), params


def _compile_segments(path: str) -> tuple[tuple[int, str], ...]:
    compiled: list[tuple[int, str]] = []
    segments = _split_path(path)
    for index, segment in enumerate(segments):
        if segment.startswith("{") and segment.endswith("+}"):
            if index != len(segments) - 1:
                raise ValueError(f"{path}: a greedy path variable must be the last segment")
            compiled.append((_GREEDY, segment[1:-2]))
        elif segment.startswith("{") and segment.endswith("}"):
            compiled.append((_PARAM, segment[1:-1]))
        else:
            compiled.append((_LITERAL, segment))
    return tuple(compiled)


def _compile_routes(routes: Iterable[Route]) -> list[_CompiledResource]:
    by_path: dict[str, dict[str, Route]] = {}
    for route in routes:
        methods = by_path.setdefault(route.path, {})
        if route.method != "ANY" and route.method not in HTTP_METHODS:
            raise ValueError(f"{route}: unsupported method {route.method!r}")
        if route.method in methods:
            raise ValueError(f"duplicate route {route.method} {route.path}: {methods[route.method]} and {route}")
        methods[route.method] = route
    return [
        _CompiledResource(path=path, segments=_compile_segments(path), methods=methods)
        for path, methods in by_path.items()
    ]


def _resolve(
    resources: Iterable[_CompiledResource], method: str, request_path: str
) -> tuple[Route, dict[str, str]] | None:
    request_segments = _split_path(request_path)
    candidates = []
    for resource in resources:
        matched = resource.match(request_segments)
        if matched is not None:
            candidates.append((matched[0], resource, matched[1]))
    candidates.sort(key=lambda candidate: candidate[0])
    for _rank, resource, params in candidates:
        route = resource.methods.get(method) or resource.methods.get("ANY")
        if route is not None:
            return route, params
    return None


def resolve_route(routes: Iterable[Route], method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The route API Gateway would pick for ``method path`` and its (still encoded) path parameters."""
    return _resolve(_compile_routes(routes), method.upper(), path)


# --------------------------------------------------------------------------------------------------
# Throttling
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# The gateway
# --------------------------------------------------------------------------------------------------


@dataclass
class GatewayResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class _MalformedProxyResponse(Exception):
    pass


# Response type → (default status, message, x-amzn-ErrorType) of the answers the gateway makes itself.
_GATEWAY_ERRORS: dict[str, tuple[int, str, str]] = {
    "MISSING_AUTHENTICATION_TOKEN": (403, "Missing Authentication Token", "MissingAuthenticationTokenException"),
    "INVALID_API_KEY": (403, "Forbidden", "ForbiddenException"),
    "THROTTLED": (429, "Too Many Requests", "TooManyRequestsException"),
    "INTEGRATION_TIMEOUT": (504, "Endpoint request timed out", "InternalServerErrorException"),
    # A function error, a timeout of the function itself or a malformed proxy response.
    "DEFAULT_5XX": (502, "Internal server error", "InternalServerErrorException"),
}


def _random_id(length: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _short_hash(text: str, length: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def api_key_id(api_key: str) -> str:
    """The ``requestContext.identity.apiKeyId`` the local gateway reports for an API key (stable)."""
    return _short_hash(f"api-key:{api_key}", 10)


def _render_context_template(template: str, variables: Mapping[str, str]) -> str:
    """Substitute ``$context.x`` / ``$!{context.x}`` references of a gateway response template."""

    def replace(match: re.Match[str]) -> str:
        name = (match.group(1) or match.group(2)).rstrip(".")
        return variables.get(name, "")

    return re.sub(r"\$!?(?:\{context\.([A-Za-z0-9_.]+)\}|context\.([A-Za-z0-9_.]+))", replace, template)


def _request_time(now: datetime) -> str:
    return f"{now:%d}/{_MONTHS[now.month - 1]}/{now:%Y:%H:%M:%S} +0000"


def _is_text(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime.startswith("text/") or mime in _TEXT_MIME_TYPES or mime.endswith(("+json", "+xml"))


def _lambda_json_default(value: Any) -> Any:
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
    raise _MalformedProxyResponse(f"{where} must be a string, got {type(value).__name__}")


def _status_code(value: Any) -> int:
    if isinstance(value, bool):
        raise _MalformedProxyResponse("statusCode must be an integer, got a boolean")
    if isinstance(value, int):
        status = value
    elif isinstance(value, str) and value.strip().isdigit():
        status = int(value.strip())
    else:
        raise _MalformedProxyResponse(f"statusCode must be an integer, got {value!r}")
    if not 100 <= status <= 599:
        raise _MalformedProxyResponse(f"statusCode {status} is not an HTTP status code")
    return status


def _translate_proxy_response(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body bytes from a Lambda proxy response, as API Gateway renders them."""
    if not isinstance(result, dict):
        raise _MalformedProxyResponse(f"the function returned {type(result).__name__}, not an object")
    if "statusCode" not in result:
        raise _MalformedProxyResponse("statusCode is missing")
    status = _status_code(result["statusCode"])

    merged: dict[str, tuple[str, list[str]]] = {}
    multi = result.get("multiValueHeaders")
    if multi is not None:
        if not isinstance(multi, dict):
            raise _MalformedProxyResponse("multiValueHeaders must be an object")
        for name, values in multi.items():
            if not isinstance(values, list):
                raise _MalformedProxyResponse(f"multiValueHeaders[{name!r}] must be a list")
            entry = merged.setdefault(name.lower(), (name, []))
            entry[1].extend(_header_value(v, f"multiValueHeaders[{name!r}]") for v in values)
    single = result.get("headers")
    if single is not None:
        if not isinstance(single, dict):
            raise _MalformedProxyResponse("headers must be an object")
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
        raise _MalformedProxyResponse(f"isBase64Encoded must be a boolean, got {is_base64!r}")
    if body is None:
        payload = b""
    elif not isinstance(body, str):
        raise _MalformedProxyResponse(f"body must be a string, got {type(body).__name__}")
    elif is_base64:
        try:
            payload = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _MalformedProxyResponse(f"body is not valid base64: {exc}") from exc
    else:
        payload = body.encode("utf-8")
    return status, headers, payload


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 drops bursts of new connections (many clients at once)
    gateway: LocalApiGateway


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    public_prefix = ""

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
        self._resources = _compile_routes(self.routes)
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
        self.api_id = _random_id(10)
        self._gateway_responses = dict(gateway_responses or {})
        # Local only: a GET of one of these paths (with or without a trailing slash) answers 302 to the URL before
        # any route is looked at, e.g. /console to the console served on its own origin (devstack.console).
        self._redirects = {path.rstrip("/"): url for path, url in (redirects or {}).items()}
        self._log_stream = log_stream
        self._log_lock = threading.Lock()
        self._buckets: dict[str, _TokenBucket] = {}
        self._buckets_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

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
        if self._server is not None:
            raise RuntimeError("the gateway is already running")
        server = _Server((self.host, self.port), _RequestHandler)
        server.gateway = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="local-api-gateway", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> LocalApiGateway:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- logging -----------------------------------------------------------------------------------

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
        request.public_prefix = ""
        if path == f"/{self.stage}" or path.startswith(f"/{self.stage}/"):
            request.public_prefix, path = f"/{self.stage}", path[len(self.stage) + 1 :] or "/"
        request_id = str(uuid.uuid4())
        apigw_id = base64.b64encode(secrets.token_bytes(10)).decode("ascii")[:15] + "="
        outcome: GatewayResponse | str
        try:
            body = self._read_body(request)
            outcome = self._handle(request, method, path, split.query, body, request_id, apigw_id)
        except Exception:  # noqa: BLE001 - the gateway must answer, whatever went wrong locally
            self._log(f"internal error while handling {method} {path}:\n{traceback.format_exc().rstrip()}")
            outcome = "DEFAULT_5XX"
        if isinstance(outcome, str):
            response = self._gateway_error(outcome, request, method, path, request_id, apigw_id)
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

    def _gateway_error(
        self,
        response_type: str,
        request: _RequestHandler,
        method: str,
        path: str,
        request_id: str,
        apigw_id: str,
    ) -> GatewayResponse:
        """An answer API Gateway makes itself, customised by ``gateway_responses`` when configured."""
        status, message, error_type = _GATEWAY_ERRORS[response_type]
        custom = self._gateway_responses.get(response_type)
        fallback = self._gateway_responses.get("DEFAULT_5XX" if status >= 500 else "DEFAULT_4XX")
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
                value = self._mapping_value(expression, request)
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
            "apiId": self.api_id,
            "stage": self.stage,
            "httpMethod": method,
            "path": f"{request.public_prefix}{path}",
            "domainName": self._domain_name(request),
            "identity.sourceIp": request.client_address[0],
            "identity.userAgent": self._last_header(request, "user-agent") or "",
            "error.message": message,
            "error.messageString": json.dumps(message),
            "error.responseType": response_type,
        }
        body = _render_context_template(template, variables).encode("utf-8")
        headers.insert(0, ("Content-Type", content_type))
        headers.append(("x-amzn-ErrorType", error_type))
        return GatewayResponse(status, headers, body)

    def _mapping_value(self, expression: str, request: _RequestHandler) -> str | None:
        expression = expression.strip()
        if len(expression) >= 2 and expression[0] == expression[-1] == "'":
            return expression[1:-1]
        prefix = "method.request.header."
        if expression.lower().startswith(prefix):
            return self._last_header(request, expression[len(prefix) :])
        self._log(f"gateway response header mapping {expression!r} is not supported locally; header left out")
        return None

    def _domain_name(self, request: _RequestHandler) -> str:
        host = self._last_header(request, "host") or self.host
        return host if host.endswith("]") else host.rsplit(":", 1)[0]

    def _handle(
        self,
        request: _RequestHandler,
        method: str,
        path: str,
        query: str,
        body: bytes,
        request_id: str,
        apigw_id: str,
    ) -> GatewayResponse | str:
        redirect = self._redirects.get(path.rstrip("/")) if method in ("GET", "HEAD") else None
        if redirect is not None:
            return GatewayResponse(302, [("Location", redirect), ("Content-Type", "text/plain")], b"")
        # ``ANY`` stands for API Gateway's seven methods; another method (TRACE, CONNECT, ...) matches no route.
        resolved = _resolve(self._resources, method, path) if method in HTTP_METHODS else None
        if resolved is None:
            return "MISSING_AUTHENTICATION_TOKEN"
        route, path_params = resolved

        api_key: str | None = None
        if route.api_key_required:
            api_key = self._last_header(request, "x-api-key")
            if api_key is None or api_key not in self._api_keys:
                return "INVALID_API_KEY"
            if not self._take_token(api_key):
                return "THROTTLED"

        event = self._build_event(request, route, method, path, query, path_params, body, request_id, apigw_id, api_key)
        return self._integrate(route, event, request_id)

    @staticmethod
    def _last_header(request: _RequestHandler, name: str) -> str | None:
        values = request.headers.get_all(name)
        return values[-1] if values else None

    def _take_token(self, api_key: str) -> bool:
        if self.throttle_rate is None:
            return True
        with self._buckets_lock:
            bucket = self._buckets.get(api_key)
            if bucket is None:
                bucket = self._buckets[api_key] = _TokenBucket(self.throttle_rate, self.throttle_burst or 0)
        return bucket.take()

    # -- the proxy event ---------------------------------------------------------------------------

    def _build_event(
        self,
        request: _RequestHandler,
        route: Route,
        method: str,
        path: str,
        query: str,
        path_params: dict[str, str],
        body: bytes,
        request_id: str,
        apigw_id: str,
        api_key: str | None,
    ) -> dict[str, Any]:
        source_ip = request.client_address[0]
        headers: dict[str, str] = {}
        multi_headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
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
            set_header("X-Forwarded-Port", str(self.port))
        if "x-forwarded-proto" not in lower_names:
            set_header("X-Forwarded-Proto", "http")
        if "x-amzn-trace-id" not in lower_names:
            set_header("X-Amzn-Trace-Id", f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}")

        query_single: dict[str, str] = {}
        query_multi: dict[str, list[str]] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            query_single[key] = value
            query_multi.setdefault(key, []).append(value)

        content_type = self._last_header(request, "content-type")
        event_body: str | None = None
        is_base64 = False
        if body and content_type is not None and _is_text(content_type):
            event_body = body.decode("utf-8", errors="replace")
        elif body and content_type is None:
            try:
                event_body = body.decode("utf-8")
            except UnicodeDecodeError:
                event_body, is_base64 = base64.b64encode(body).decode("ascii"), True
        elif body:
            event_body, is_base64 = base64.b64encode(body).decode("ascii"), True

        now = datetime.now(UTC)
        domain_name = self._domain_name(request)
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
            "userAgent": self._last_header(request, "user-agent"),
            "user": None,
        }
        if route.api_key_required:
            identity["apiKey"] = api_key
            identity["apiKeyId"] = api_key_id(api_key or "")
        return {
            "resource": route.path,
            "path": path,
            "httpMethod": method,
            "headers": headers or None,
            "multiValueHeaders": multi_headers or None,
            "queryStringParameters": query_single or None,
            "multiValueQueryStringParameters": query_multi or None,
            "pathParameters": path_params or None,
            "stageVariables": None,
            "requestContext": {
                "resourceId": _short_hash(f"{route.api_id}:{route.path}", 6),
                "resourcePath": route.path,
                "httpMethod": method,
                "extendedRequestId": apigw_id,
                "requestTime": _request_time(now),
                "path": f"{request.public_prefix}{path}",
                "accountId": self.account_id,
                "protocol": request.request_version,
                "stage": self.stage,
                "domainPrefix": domain_name.split(".", 1)[0],
                "requestTimeEpoch": int(now.timestamp() * 1000),
                "requestId": request_id,
                "identity": identity,
                "domainName": domain_name,
                "apiId": self.api_id,
            },
            "body": event_body,
            "isBase64Encoded": is_base64,
        }

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
            self._log(f"{route.function_id}: Task timed out after {self.function_timeout_s:.2f} seconds")
            return "DEFAULT_5XX"

        if "error" in outcome:
            self._log(f"{route.function_id} raised (request {request_id}):\n{outcome['error']}")
            return "DEFAULT_5XX"
        try:
            result = json.loads(json.dumps(outcome["result"], default=_lambda_json_default))
        except (TypeError, ValueError) as exc:
            self._log(f"{route.function_id}: Runtime.MarshalError, the result is not JSON: {exc}")
            return "DEFAULT_5XX"
        try:
            status, headers, payload = _translate_proxy_response(result)
        except _MalformedProxyResponse as exc:
            self._log(f"{route.function_id}: malformed Lambda proxy response (request {request_id}): {exc}")
            return "DEFAULT_5XX"
        if unknown := sorted(set(result) - _PROXY_RESPONSE_KEYS):
            self._log(f"{route.function_id}: proxy response keys ignored by API Gateway: {', '.join(unknown)}")
        return GatewayResponse(status, headers, payload)


@dataclass(frozen=True)
class SqsMapping:
    """One ``Type: SQS`` event of a function: what the local event source mapping must emulate."""

    function_id: str
    handler: str | None
    queue_id: str | None
    batch_size: int
    batching_window_s: float
    maximum_concurrency: int
    function_timeout_s: float
    report_batch_item_failures: bool


def load_sqs_mappings(template_path: str | Path, *, parameters: Mapping[str, Any] | None = None) -> list[SqsMapping]:
    """Every ``Type: SQS`` event of every function, with the template's defaults (Lambda's when absent)."""
    template = load_template(template_path)
    intrinsics = _Intrinsics(template, parameters)
    globals_function = (template.get("Globals") or {}).get("Function") or {}
    mappings = []
    for function_id, resource in _resources_of_type(template, "AWS::Serverless::Function"):
        properties = resource.get("Properties") or {}
        timeout = intrinsics.resolve(properties.get("Timeout", globals_function.get("Timeout", 3)))
        for event in (properties.get("Events") or {}).values():
            if not isinstance(event, dict) or event.get("Type") != "SQS":
                continue
            spec = event.get("Properties") or {}
            scaling = {key: intrinsics.resolve(value) for key, value in (spec.get("ScalingConfig") or {}).items()}
            queue = spec.get("Queue")
            queue_id = None
            if isinstance(queue, dict):
                target = queue.get("Fn::GetAtt") or queue.get("GetAtt")
                queue_id = (target[0] if isinstance(target, list) else str(target).split(".")[0]) if target else None
            mappings.append(
                SqsMapping(
                    function_id=function_id,
                    handler=properties.get("Handler", globals_function.get("Handler")),
                    queue_id=queue_id,
                    batch_size=int(intrinsics.resolve(spec.get("BatchSize", 10))),
                    batching_window_s=float(intrinsics.resolve(spec.get("MaximumBatchingWindowInSeconds", 0))),
                    maximum_concurrency=int(scaling.get("MaximumConcurrency", 1000)),
                    function_timeout_s=float(timeout),
                    report_batch_item_failures="ReportBatchItemFailures"
                    in (intrinsics.resolve(spec.get("FunctionResponseTypes") or []) or []),
                )
            )
    return mappings
