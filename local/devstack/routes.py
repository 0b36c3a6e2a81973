"""The API's routes: read from a SAM template's ``Type: Api`` events, and resolved as API Gateway resolves them.

* :func:`load_routes` reads the ``Type: Api`` events of every ``AWS::Serverless::Function`` (through
  ``devstack.template``, so parameters, conditions and ``!If``/``!Sub``/``!Select``... are evaluated), with
  each route's API key requirement.
* :func:`resolve_route` picks the route for a request the way a REST API does. Routes resolve on the
  (resource, method) pair: candidate resources are tried from the most specific (literal segment before
  ``{param}`` before ``{proxy+}``, left to right), and the first one declaring the request's method (or
  ``ANY``) wins; so ``OPTIONS /v1/images`` reaches ``OPTIONS /{proxy+}`` when ``/v1/images`` declares only
  ``POST``. (Measured on AWS and published in ministackorg/ministack#1423 and floci-io/floci#3399.) Path
  parameters keep the client's percent-encoding; a greedy ``{proxy+}`` holds the rest of the path without a
  leading slash.

Pure: no sockets, no events (``devstack.apigw_events``), no server (``devstack.gateway``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .template import IMPLICIT_API_ID, Intrinsics, as_bool, load_template, resources_of_type

__all__ = ["HTTP_METHODS", "Route", "compile_routes", "load_routes", "resolve", "resolve_route"]

HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
"""The methods a REST API routes; ``ANY`` stands for all of them, and no other method matches a route."""


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


def _auth_api_key_required(auth: Any, intrinsics: Intrinsics, where: str) -> bool | None:
    auth = intrinsics.resolve(auth)
    if not isinstance(auth, dict):
        return None
    return as_bool(auth.get("ApiKeyRequired"), f"{where}.ApiKeyRequired")


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
    intrinsics = Intrinsics(template, parameters)
    globals_ = template.get("Globals") or {}
    global_api_key = _auth_api_key_required((globals_.get("Api") or {}).get("Auth"), intrinsics, "Globals.Api.Auth")
    global_handler = (globals_.get("Function") or {}).get("Handler")

    api_defaults: dict[str, bool] = {IMPLICIT_API_ID: bool(global_api_key)}
    for logical_id, resource in resources_of_type(template, "AWS::Serverless::Api"):
        auth = (resource.get("Properties") or {}).get("Auth")
        own = _auth_api_key_required(auth, intrinsics, f"{logical_id}.Properties.Auth")
        api_defaults[logical_id] = own if own is not None else bool(global_api_key)

    routes: list[Route] = []
    for logical_id, resource in resources_of_type(template, "AWS::Serverless::Function"):
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
class CompiledResource:
    """One resource path with its methods, split into segments for matching."""

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


def compile_routes(routes: Iterable[Route]) -> list[CompiledResource]:
    """Routes grouped by resource path; ``ValueError`` for an unknown method or a duplicate route."""
    by_path: dict[str, dict[str, Route]] = {}
    for route in routes:
        methods = by_path.setdefault(route.path, {})
        if route.method != "ANY" and route.method not in HTTP_METHODS:
            raise ValueError(f"{route}: unsupported method {route.method!r}")
        if route.method in methods:
            raise ValueError(f"duplicate route {route.method} {route.path}: {methods[route.method]} and {route}")
        methods[route.method] = route
    return [
        CompiledResource(path=path, segments=_compile_segments(path), methods=methods)
        for path, methods in by_path.items()
    ]


def resolve(
    resources: Iterable[CompiledResource], method: str, request_path: str
) -> tuple[Route, dict[str, str]] | None:
    """The route for ``method request_path`` among compiled resources (``method`` upper case), or ``None``."""
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
    return resolve(compile_routes(routes), method.upper(), path)
