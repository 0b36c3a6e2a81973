"""Access: every route of the template that needs an API key refuses a missing or wrong one on the local stack
the way API Gateway does (403 ``invalid_api_key`` from the template's GatewayResponses, the function never
invoked); CORS answers only the configured origins; ``/docs`` and ``/openapi.json`` switch off with a parameter.

The routes come from template.yaml, so a route added tomorrow is in the matrix without a line of test code.
"""

from __future__ import annotations

import importlib

import pytest
import requests
from devstack.gateway import load_routes, load_template
from imagegen.settings import HttpSettings
from support.routes import KEYED_ROUTES, TEMPLATE, concrete
from support.secrets_under_test import API_KEY, ORIGIN

BAD_KEYS = {
    "no key": None,
    "wrong key": "not-the-key",
    "key in other case": API_KEY.upper(),
    "key with a prefix": f"x{API_KEY}",
    "empty key": "",
    "key of another stage": API_KEY + "-staging",
}


def test_the_template_keys_every_v1_route() -> None:
    # The matrix below is only as good as the routes it finds: every /v1 route, and nothing else, needs a key
    paths = {(route.method, route.path) for route in KEYED_ROUTES}
    assert {
        ("POST", "/v1/images"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/{id}"),
        ("DELETE", "/v1/jobs/{id}"),
    } <= paths
    everything = load_routes(TEMPLATE)
    assert all(
        route.api_key_required for route in everything if route.path.startswith("/v1") and route.method != "OPTIONS"
    )


@pytest.mark.parametrize("key_case", list(BAD_KEYS), ids=list(BAD_KEYS))
@pytest.mark.parametrize("route", KEYED_ROUTES, ids=[f"{r.method} {r.path}" for r in KEYED_ROUTES])
def test_every_keyed_route_refuses_a_bad_key_before_the_function(
    route, key_case, stack, emulator, invocations, reliability
):
    # Given a request to the route with a missing or wrong key
    key = BAD_KEYS[key_case]
    headers = {"content-type": "application/json", "Origin": ORIGIN}
    if key is not None:
        headers["x-api-key"] = key
    body = '{"prompt": "x", "items": [{"prompt": "x"}]}' if route.method in ("POST", "PUT", "PATCH") else None
    # When it is sent to the local API Gateway
    response = requests.request(route.method, f"{stack.url}{concrete(route)}", data=body, headers=headers, timeout=10)
    reliability.record("Access", f"{route.method} {route.path}, {key_case}", f"{response.status_code}")
    # Then API Gateway's answer: 403 invalid_api_key in the service's error shape, CORS headers for the app
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.json()["error"]["request_id"]
    # (API Gateway's own answers name only the first allowed origin: locally, the web console's)
    assert response.headers["Access-Control-Allow-Origin"] == stack.console.origin
    # And the function never ran: nothing invoked, nothing generated
    assert invocations == []
    assert emulator.calls == 0


@pytest.mark.parametrize("route", KEYED_ROUTES, ids=[f"{r.method} {r.path}" for r in KEYED_ROUTES])
def test_every_keyed_route_lets_the_right_key_through(route, stack, emulator, invocations, reliability):
    body = '{"prompt": "through", "width": 256, "height": 256, "items": []}' if route.method == "POST" else None
    response = requests.request(
        route.method,
        f"{stack.url}{concrete(route)}",
        data=body,
        headers={"x-api-key": API_KEY, "content-type": "application/json"},
        timeout=30,
    )
    reliability.record("Access", f"{route.method} {route.path}, right key", f"{response.status_code}")
    assert response.status_code != 403
    assert invocations, "the function was not invoked"


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (ORIGIN, True),
        ("https://app.example.com", True),
        ("https://evil.example.com", False),
        ("null", False),
        (ORIGIN + ".evil.example", False),
        (ORIGIN.upper(), False),
    ],
)
def test_cors_answers_only_the_configured_origins(origin, allowed, stack, reliability):
    # Given a browser on some origin, preflighting and then calling the API
    preflight = requests.options(
        f"{stack.url}/v1/images",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-api-key",
        },
        timeout=10,
    )
    actual = requests.get(
        f"{stack.url}/v1/images/img_{'0' * 32}", headers={"x-api-key": API_KEY, "Origin": origin}, timeout=10
    )
    # Then only a configured origin is echoed, never "*", and never with credentials
    for response in (preflight, actual):
        granted = response.headers.get("Access-Control-Allow-Origin")
        assert granted != "*"
        assert granted == (origin if allowed else None), (response.request.method, granted)
        assert "Access-Control-Allow-Credentials" not in response.headers
    reliability.record("Access", f"CORS from {origin}", "echoed" if allowed else "no Access-Control-Allow-Origin")


@pytest.mark.parametrize("path", ["/docs", "/openapi.json"])
def test_docs_switch_off_with_the_enable_docs_parameter(path, stack, monkeypatch, reliability):
    # Given the function deployed with EnableDocs=false (ENABLE_DOCS, read when the function starts)
    assert "api_handler" in stack.handlers  # imported with the stack, and with it api_support, whose settings
    module = importlib.import_module("api_support")  # the routes read at request time
    assert requests.get(f"{stack.url}{path}", timeout=10).status_code == 200
    monkeypatch.setattr(module, "http_settings", HttpSettings.model_validate({"ENABLE_DOCS": "false"}))
    # When the docs are asked for, then they are not there (with or without a key)
    response = requests.get(f"{stack.url}{path}", timeout=10)
    keyed = requests.get(f"{stack.url}{path}", headers={"x-api-key": API_KEY}, timeout=10)
    assert response.status_code == keyed.status_code == 404
    assert "swagger" not in response.text.lower() and "/v1/images" not in response.text
    reliability.record("Access", f"{path} with EnableDocs=false", "404")


def test_the_enable_docs_parameter_reaches_the_function() -> None:
    template = load_template(TEMPLATE)
    assert template["Parameters"]["EnableDocs"]["AllowedValues"] == ["true", "false"]
    env = template["Resources"]["ApiFunction"]["Properties"]["Environment"]["Variables"]
    assert env["ENABLE_DOCS"] == {"Ref": "EnableDocs"}
