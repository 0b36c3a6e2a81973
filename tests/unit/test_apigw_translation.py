"""The local gateway's pure parts, called directly (no server, no sockets): request → proxy event
(``devstack.apigw_events``), proxy response / gateway error → HTTP answer (``devstack.apigw_responses``), route
resolution (``devstack.routes``). ``tests/unit/test_gateway.py`` checks the same behaviour end to end over HTTP.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from devstack.apigw_events import ApiIdentity, IncomingRequest, api_key_id, build_event
from devstack.apigw_responses import MalformedProxyResponse, gateway_error_response, translate_proxy_response
from devstack.routes import Route, resolve_route
from devstack.template import GatewayResponseTemplate

API = ApiIdentity(api_id="abc123defg", stage="prod", account_id="123456789012", host="127.0.0.1", port=3000)
ROUTE = Route(path="/v1/images/{image_id}", method="GET", function_id="ApiFunction", api_key_required=True)
NOW = datetime(2026, 11, 29, 17, 36, 8, tzinfo=UTC)


def _event(request: IncomingRequest, route: Route = ROUTE, **kwargs: object) -> dict:
    return build_event(
        request,
        route,
        {"image_id": "img%2001"},
        API,
        request_id="req-1",
        apigw_id="apigw-1",
        now=NOW,
        trace_id="Root=1-test",
        **kwargs,  # type: ignore[arg-type]
    )


def test_build_event_request_fields() -> None:
    # Given a GET with repeated query keys and headers, through the /prod prefix
    request = IncomingRequest(
        method="GET",
        path="/v1/images/img%2001",
        query="tag=a&tag=b&q=two%20words&empty=",
        headers=(("Host", "localhost:3000"), ("Accept", "a"), ("Accept", "b"), ("User-Agent", "ua/1")),
        source_ip="10.0.0.9",
        public_prefix="/prod",
    )

    # When it becomes a proxy event
    event = _event(request, api_key="key-1")

    # Then path parameters stay encoded, query values are decoded, the last repeat wins in the single maps
    assert event["path"] == "/v1/images/img%2001"
    assert event["pathParameters"] == {"image_id": "img%2001"}
    assert event["queryStringParameters"] == {"tag": "b", "q": "two words", "empty": ""}
    assert event["multiValueQueryStringParameters"]["tag"] == ["a", "b"]
    assert event["headers"]["Accept"] == "b"
    assert event["multiValueHeaders"]["Accept"] == ["a", "b"]
    # And API Gateway's own headers are added
    assert event["headers"]["X-Forwarded-For"] == "10.0.0.9"
    assert event["headers"]["X-Forwarded-Port"] == "3000"
    assert event["headers"]["X-Forwarded-Proto"] == "http"
    assert event["headers"]["X-Amzn-Trace-Id"] == "Root=1-test"
    # And the request context carries the stage prefix, the clock and the key's id
    context = event["requestContext"]
    assert context["path"] == "/prod/v1/images/img%2001"
    assert context["domainName"] == "localhost"
    assert context["requestTime"] == "29/Nov/2026:17:36:08 +0000"
    assert context["requestTimeEpoch"] == int(NOW.timestamp() * 1000)
    assert context["identity"]["apiKey"] == "key-1"
    assert context["identity"]["apiKeyId"] == api_key_id("key-1")
    assert context["identity"]["userAgent"] == "ua/1"
    assert event["body"] is None and event["isBase64Encoded"] is False


def test_build_event_appends_to_a_client_forwarded_for_and_keeps_its_trace_id() -> None:
    request = IncomingRequest(
        method="GET",
        path="/v1/images/x",
        headers=(("x-forwarded-for", "1.2.3.4"), ("X-Amzn-Trace-Id", "Root=client")),
        source_ip="10.0.0.9",
    )

    event = _event(request)

    assert event["headers"]["x-forwarded-for"] == "1.2.3.4, 10.0.0.9"
    assert event["headers"]["X-Amzn-Trace-Id"] == "Root=client"


def test_build_event_without_a_key_route_has_no_api_key_in_identity() -> None:
    route = Route(path="/docs", method="GET", function_id="ApiFunction")

    event = _event(IncomingRequest(method="GET", path="/docs"), route=route)

    assert "apiKey" not in event["requestContext"]["identity"]


@pytest.mark.parametrize(
    ("content_type", "body", "expected_body", "expected_base64"),
    [
        ("application/json", b'{"a":1}', '{"a":1}', False),
        ("text/plain; charset=utf-8", b"hello", "hello", False),
        ("application/problem+json", b"{}", "{}", False),
        ("image/png", b"\x89PNG", base64.b64encode(b"\x89PNG").decode(), True),
        (None, b"plain utf-8", "plain utf-8", False),
        (None, b"\xff\xfe", base64.b64encode(b"\xff\xfe").decode(), True),
    ],
)
def test_build_event_body_text_or_base64(
    content_type: str | None, body: bytes, expected_body: str, expected_base64: bool
) -> None:
    headers = (("Content-Type", content_type),) if content_type else ()
    request = IncomingRequest(method="POST", path="/v1/images/x", headers=headers, body=body)

    event = _event(request)

    assert (event["body"], event["isBase64Encoded"]) == (expected_body, expected_base64)


def test_translate_proxy_response_merges_headers_and_remaps_reserved_ones() -> None:
    result = {
        "statusCode": "201",
        "headers": {"X-One": "1", "Date": "yesterday", "X-Num": 5},
        "multiValueHeaders": {"X-One": ["1", "2"], "Set-Cookie": ["a=1", "b=2"]},
        "body": base64.b64encode(b"\x00bin").decode(),
        "isBase64Encoded": "true",
    }

    status, headers, payload = translate_proxy_response(result)

    assert status == 201
    assert [value for name, value in headers if name == "X-One"] == ["1", "2"]
    assert ("x-amzn-Remapped-Date", "yesterday") in headers
    assert ("X-Num", "5") in headers
    assert [value for name, value in headers if name == "Set-Cookie"] == ["a=1", "b=2"]
    assert ("Content-Type", "application/json") in headers  # none given: API Gateway's default
    assert payload == b"\x00bin"


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        ([], "not an object"),
        ({}, "statusCode is missing"),
        ({"statusCode": True}, "boolean"),
        ({"statusCode": 700}, "not an HTTP status code"),
        ({"statusCode": 200, "headers": []}, "headers must be an object"),
        ({"statusCode": 200, "headers": {"X": None}}, "must be a string"),
        ({"statusCode": 200, "body": {"a": 1}}, "body must be a string"),
        ({"statusCode": 200, "body": "!!", "isBase64Encoded": True}, "not valid base64"),
        ({"statusCode": 200, "isBase64Encoded": "maybe"}, "isBase64Encoded must be a boolean"),
    ],
)
def test_translate_proxy_response_rejects_malformed_results(result: object, reason: str) -> None:
    with pytest.raises(MalformedProxyResponse, match=reason):
        translate_proxy_response(result)


def test_gateway_error_default_body_and_type() -> None:
    request = IncomingRequest(method="GET", path="/nowhere")

    response = gateway_error_response(
        "MISSING_AUTHENTICATION_TOKEN", request, API, {}, request_id="req-1", apigw_id="apigw-1"
    )

    assert response.status == 403
    assert json.loads(response.body) == {"message": "Missing Authentication Token"}
    assert response.headers[0] == ("Content-Type", "application/json")
    assert ("x-amzn-ErrorType", "MissingAuthenticationTokenException") in response.headers


def test_gateway_error_customised_by_gateway_responses() -> None:
    # Given a DEFAULT_4XX response with a CORS header mapping, a literal, an unsupported mapping and a template
    custom = GatewayResponseTemplate(
        status_code=None,
        headers={
            "Access-Control-Allow-Origin": "method.request.header.Origin",
            "X-Literal": "'yes'",
            "X-Unsupported": "context.requestId",
        },
        templates={"application/json": '{"error":{"code":"$context.error.responseType","id":"$context.requestId"}}'},
    )
    request = IncomingRequest(method="POST", path="/v1/images", headers=(("Origin", "http://app.test"),))
    logged: list[str] = []

    # When the API key is invalid
    response = gateway_error_response(
        "INVALID_API_KEY",
        request,
        API,
        {"DEFAULT_4XX": custom},
        request_id="req-9",
        apigw_id="apigw-9",
        log=logged.append,
    )

    # Then the fallback customises it: headers mapped, body rendered, status kept, the unsupported mapping logged
    assert response.status == 403
    assert ("Access-Control-Allow-Origin", "http://app.test") in response.headers
    assert ("X-Literal", "yes") in response.headers
    assert not any(name == "X-Unsupported" for name, _ in response.headers)
    assert json.loads(response.body) == {"error": {"code": "INVALID_API_KEY", "id": "req-9"}}
    assert len(logged) == 1 and "context.requestId" in logged[0]


def test_gateway_error_status_override() -> None:
    custom = GatewayResponseTemplate(status_code=503)

    response = gateway_error_response(
        "DEFAULT_5XX",
        IncomingRequest(method="GET", path="/x"),
        API,
        {"DEFAULT_5XX": custom},
        request_id="r",
        apigw_id="a",
    )

    assert response.status == 503


def test_resolve_route_prefers_literal_then_param_then_greedy_and_falls_back_on_method() -> None:
    routes = [
        Route(path="/v1/images", method="POST", function_id="F"),
        Route(path="/v1/images/{image_id}", method="GET", function_id="F"),
        Route(path="/v1/images/latest", method="GET", function_id="F"),
        Route(path="/{proxy+}", method="OPTIONS", function_id="F"),
    ]

    literal = resolve_route(routes, "get", "/v1/images/latest")
    param = resolve_route(routes, "GET", "/v1/images/img_1/")
    greedy = resolve_route(routes, "OPTIONS", "/v1/images")

    assert literal is not None and literal[0].path == "/v1/images/latest" and literal[1] == {}
    assert param is not None and param[1] == {"image_id": "img_1"}
    assert greedy is not None and greedy[0].path == "/{proxy+}" and greedy[1] == {"proxy": "v1/images"}
    assert resolve_route(routes, "DELETE", "/v1/images") is None
