"""Access, what the matrix of ``test_access_matrix.py`` leaves out: keys that differ from the right one only by
whitespace, with API Gateway's 403 compared field by field with the template's ``INVALID_API_KEY`` response.

Whitespace around a header value is not part of it in HTTP (optional whitespace, RFC 9110 5.5), but whitespace inside
the value, or a no-break space (U+00A0, which HTTP does not trim and Python's ``str.strip`` does), makes another key.
A gateway that tidied keys up before comparing them (``split``, ``strip``) would let these through; they must get the
same 403 as any wrong key, with the function never invoked. Sent with ``http.client``: ``requests`` refuses a header
value that starts with a space of any kind.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest
from devstack.gateway import GatewayResponseTemplate, load_api_config
from support.routes import KEYED_ROUTES, TEMPLATE, concrete
from support.secrets_under_test import API_KEY, ORIGIN

INVALID_API_KEY = load_api_config(TEMPLATE).gateway_responses.get("INVALID_API_KEY", GatewayResponseTemplate())
HALF = len(API_KEY) // 2
WHITESPACE_KEYS = {
    "a space inside": f"{API_KEY[:HALF]} {API_KEY[HALF:]}",
    "a tab inside": f"{API_KEY[:HALF]}\t{API_KEY[HALF:]}",
    "a no-break space after": f"{API_KEY}\xa0",
    "a no-break space before": f"\xa0{API_KEY}",
    "spaces between its characters": " ".join(API_KEY),
}


def send(
    url: str, method: str, path: str, headers: dict[str, str], body: bytes | None
) -> tuple[http.client.HTTPResponse, bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)  # header values go out as Latin-1 bytes
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


def expected_header(expression: str) -> str:
    assert expression.startswith("'") and expression.endswith("'"), f"not a literal mapping: {expression}"
    return expression[1:-1]


def test_the_template_defines_the_invalid_key_response() -> None:
    # The 403 below is compared with this: a literal header map and a JSON body in the service's error shape
    assert INVALID_API_KEY.status_code in (None, 403)
    assert "application/json" in INVALID_API_KEY.templates, "GatewayResponses.INVALID_API_KEY has no JSON body"
    assert {name.lower() for name in INVALID_API_KEY.headers} >= {"access-control-allow-origin", "vary"}


@pytest.mark.parametrize("variant", list(WHITESPACE_KEYS))
@pytest.mark.parametrize("route", KEYED_ROUTES, ids=[f"{r.method} {r.path}" for r in KEYED_ROUTES])
def test_a_key_that_differs_only_by_whitespace_is_refused(route, variant, stack, emulator, invocations, reliability):
    # Given the right key with whitespace inside it or a no-break space around it
    headers = {"x-api-key": WHITESPACE_KEYS[variant], "Origin": ORIGIN, "Content-Type": "application/json"}
    body = b'{"prompt": "x", "items": [{"prompt": "x"}]}' if route.method in ("POST", "PUT", "PATCH") else None
    # When it is sent to the local API Gateway
    response, content = send(stack.url, route.method, concrete(route), headers, body)
    reliability.record("Access", f"{route.method} {route.path}, key with {variant}", f"{response.status}")
    # Then API Gateway's 403, exactly as the template's INVALID_API_KEY gateway response defines it (with the
    # parameters the stack deploys it with: CorsAllowedOrigins lists the web console's origin first)
    invalid = load_api_config(TEMPLATE, parameters=stack.gateway_parameters).gateway_responses["INVALID_API_KEY"]
    assert "application/json" in invalid.templates, "GatewayResponses.INVALID_API_KEY has no JSON body"
    assert response.status == (invalid.status_code or 403), content
    for name, expression in invalid.headers.items():
        assert response.getheader(name) == expected_header(expression), name
    assert response.getheader("Content-Type", "").startswith("application/json")
    assert response.getheader("x-amzn-ErrorType") == "ForbiddenException"
    document = json.loads(content)
    request_id = document["error"]["request_id"]
    assert request_id
    template_body = invalid.templates["application/json"].replace("$context.requestId", request_id)
    assert document == json.loads(template_body)
    # And the function never ran: nothing invoked, nothing generated
    assert invocations == []
    assert emulator.calls == 0


@pytest.mark.parametrize("route", KEYED_ROUTES[:1], ids=[f"{r.method} {r.path}" for r in KEYED_ROUTES[:1]])
def test_the_same_client_with_the_right_key_gets_through(route, stack, emulator, invocations, reliability):
    # Given the client above, but with the key as issued (so the 403s are about the key, not the request)
    headers = {"x-api-key": API_KEY, "Origin": ORIGIN, "Content-Type": "application/json"}
    body = b'{"prompt": "through", "width": 256, "height": 256}' if route.method == "POST" else None
    # When it is sent, then the function answers
    response, content = send(stack.url, route.method, concrete(route), headers, body)
    reliability.record("Access", f"{route.method} {route.path}, right key over http.client", f"{response.status}")
    assert response.status != 403, content
    assert invocations
