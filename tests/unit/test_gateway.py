"""The local API Gateway stand-in (``devstack.gateway``), exercised over real loopback HTTP.

A fake Lambda handler records every event and context it receives, so the tests can check what a function
would see behind API Gateway, and what a client sees in front of it.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from devstack.gateway import (
    GatewayResponseTemplate,
    LocalApiGateway,
    Route,
    api_key_id,
    load_api_config,
    load_routes,
    resolve_route,
)
from devstack.lambda_context import LambdaContext, make_context
from support.events import EVENTS_DIR, load_event

REPO_ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123456789abcdefghijklmnopqrstu"
OTHER_KEY = "test-key-other-000000000000000000000000"
FUNCTION = "ImageFunction"

FIXTURE_TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  CorsAllowedOrigins:
    Type: String
    Default: http://localhost:3000
  UsagePlanRateLimit:
    Type: Number
    Default: 5
Conditions:
  SingleCorsOrigin: !Equals [!Select [0, !Split [",", !Ref CorsAllowedOrigins]], !Ref CorsAllowedOrigins]
Globals:
  Function:
    Runtime: python3.12
    Handler: api_handler.lambda_handler
Resources:
  ImagesTable:
    Type: AWS::DynamoDB::Table
  ImageFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/api/
      Role: !GetAtt FunctionRole.Arn
      Environment:
        Variables:
          IMAGES_TABLE: !Ref ImagesTable
          GREETING: !Sub "hello from ${AWS::Region}"
          CORS: !If [SingleCorsOrigin, !Ref CorsAllowedOrigins, "*"]
      Events:
        CreateImage:
          Type: Api
          Properties: {RestApiId: !Ref ImageApi, Path: /v1/images, Method: post}
        GetImage:
          Type: Api
          Properties: {RestApiId: !Ref ImageApi, Path: "/v1/images/{id}", Method: GET}
        OpenApi:
          Type: Api
          Properties: {RestApiId: !Ref ImageApi, Path: /openapi.json, Method: GET, Auth: {ApiKeyRequired: false}}
        Docs:
          Type: Api
          Properties: {RestApiId: !Ref ImageApi, Path: /docs, Method: GET, Auth: {ApiKeyRequired: false}}
        Preflight:
          Type: Api
          Properties: {RestApiId: !Ref ImageApi, Path: "/{proxy+}", Method: OPTIONS, Auth: {ApiKeyRequired: false}}
        Queue:
          Type: SQS
          Properties: {Queue: !GetAtt Jobs.Arn}
  ImageApi:
    Type: AWS::Serverless::Api
    Properties:
      StageName: v1stage
      Auth:
        ApiKeyRequired: true
        UsagePlan:
          CreateUsagePlan: PER_API
          Throttle: {RateLimit: !Ref UsagePlanRateLimit, BurstLimit: 10}
      GatewayResponses:
        MISSING_AUTHENTICATION_TOKEN:
          StatusCode: "404"
          ResponseParameters:
            Headers:
              Access-Control-Allow-Origin:
                !If [SingleCorsOrigin, !Sub "'${CorsAllowedOrigins}'", method.request.header.origin]
          ResponseTemplates:
            application/json: '{"error": {"code": "not_found", "request_id": "$context.requestId"}}'
"""

EXPECTED_FIXTURE_ROUTES = {
    ("POST", "/v1/images", True),
    ("GET", "/v1/images/{id}", True),
    ("GET", "/openapi.json", False),
    ("GET", "/docs", False),
    ("OPTIONS", "/{proxy+}", False),
}


# ---------------------------------------------------------------------------------------------------- fixtures
class Recorder:
    """A fake Lambda handler: records (event, context, remaining ms) and answers with ``respond``."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], LambdaContext, int]] = []
        self.respond: Callable[[dict[str, Any], LambdaContext], Any] = lambda event, context: {
            "statusCode": 200,
            "headers": {"Content-Type": "application/json"},
            "body": json.dumps({"resource": event["resource"]}),
        }

    def __call__(self, event: dict[str, Any], context: LambdaContext) -> Any:
        self.calls.append((event, context, context.get_remaining_time_in_millis()))
        return self.respond(event, context)

    @property
    def last_event(self) -> dict[str, Any]:
        assert self.calls, "the handler was never invoked"
        return self.calls[-1][0]


@pytest.fixture
def template_path(tmp_path: Path) -> Path:
    path = tmp_path / "template.yaml"
    path.write_text(FIXTURE_TEMPLATE, encoding="utf-8")
    return path


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as client:
        client.trust_env = False  # never through a proxy from the environment
        yield client


GatewayFactory = Callable[..., LocalApiGateway]


@pytest.fixture
def start_gateway(template_path: Path, recorder: Recorder) -> Iterator[GatewayFactory]:
    """Start a gateway on a free loopback port over the fixture template's routes; stopped after the test."""
    started: list[LocalApiGateway] = []

    def start(routes: list[Route] | None = None, **options: Any) -> LocalApiGateway:
        options.setdefault("invoke", {FUNCTION: recorder})
        options.setdefault("api_keys", [API_KEY, OTHER_KEY])
        options.setdefault("log_stream", io.StringIO())
        gateway = LocalApiGateway(routes if routes is not None else load_routes(template_path), port=0, **options)
        started.append(gateway.start())
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def gateway(start_gateway: GatewayFactory) -> LocalApiGateway:
    return start_gateway()


def log_text(gateway: LocalApiGateway) -> str:
    stream = gateway._log_stream
    assert isinstance(stream, io.StringIO)
    return stream.getvalue()


def raw_request(
    gateway: LocalApiGateway, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send a request with exactly these header lines (repeats and case kept); answer status, headers, body."""
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        if body:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def assert_gateway_error(response: requests.Response, status: int, message: str) -> None:
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"message": message}
    assert response.headers["x-amzn-RequestId"]
    assert response.headers["x-amz-apigw-id"]


# ---------------------------------------------------------------------------------------------------- template
def test_load_routes_reads_every_api_event_of_the_fixture_template(template_path: Path) -> None:
    # Given the fixture template (short tags, an API-wide key default, per-route overrides, a non-Api event)
    # When its routes are loaded
    routes = load_routes(template_path)

    # Then exactly the five Api events come back, with methods normalised and the key default applied
    assert {(r.method, r.path, r.api_key_required) for r in routes} == EXPECTED_FIXTURE_ROUTES
    assert {r.function_id for r in routes} == {FUNCTION}
    assert {r.handler for r in routes} == {"api_handler.lambda_handler"}  # from Globals.Function
    assert {r.api_id for r in routes} == {"ImageApi"}
    assert load_routes(template_path, function_logical_id="SomeOtherFunction") == []


def test_load_routes_applies_globals_api_key_default_to_the_implicit_api(tmp_path: Path) -> None:
    # Given a template whose implicit API requires keys through Globals, and one event opting out
    template = tmp_path / "template.yaml"
    template.write_text(
        """\
Globals:
  Api:
    Auth: {ApiKeyRequired: true}
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.handler
      Events:
        Secret: {Type: Api, Properties: {Path: /secret, Method: any}}
        Public: {Type: Api, Properties: {Path: /public/, Method: get, Auth: {ApiKeyRequired: "false"}}}
""",
        encoding="utf-8",
    )

    # When the routes are loaded
    routes = {r.path: r for r in load_routes(template)}

    # Then the default applies where the event says nothing, and paths are normalised
    assert routes["/secret"].api_key_required is True
    assert routes["/secret"].method == "ANY"
    assert routes["/secret"].api_id == "ServerlessRestApi"
    assert routes["/public"].api_key_required is False


def test_load_api_config_evaluates_parameters_and_conditions(template_path: Path) -> None:
    # Given the fixture template's API (usage plan throttle from a parameter, a conditional CORS header)
    # When its settings are loaded with the defaults, and with several origins
    single = load_api_config(template_path)
    several = load_api_config(template_path, parameters={"CorsAllowedOrigins": "http://a.test,http://b.test"})

    # Then the stage, the throttle and the gateway responses come out evaluated
    assert (single.api_id, single.stage, single.throttle_rate, single.throttle_burst) == ("ImageApi", "v1stage", 5, 10)
    missing = single.gateway_responses["MISSING_AUTHENTICATION_TOKEN"]
    assert missing.status_code == 404
    assert missing.headers == {"Access-Control-Allow-Origin": "'http://localhost:3000'"}
    assert several.gateway_responses["MISSING_AUTHENTICATION_TOKEN"].headers == {
        "Access-Control-Allow-Origin": "method.request.header.origin"
    }


def test_load_routes_reads_the_real_template_when_present() -> None:
    # Given the service's own template.yaml (written by another teammate; skipped until it exists)
    template = REPO_ROOT / "template.yaml"
    if not template.is_file():
        pytest.skip("template.yaml does not exist yet")

    # When its routes are loaded
    routes = {(r.method, r.path): r for r in load_routes(template)}

    # Then the service's routes are there, keyed where they must be, all served by one handler
    for method, path, keyed in EXPECTED_FIXTURE_ROUTES:
        assert (method, path) in routes, f"{method} {path} missing from template.yaml"
        assert routes[(method, path)].api_key_required is keyed, f"{method} {path}: ApiKeyRequired"
    assert len({(r.function_id, r.handler) for r in routes.values()}) == 1


# ---------------------------------------------------------------------------------------------------- routing
def test_routing_prefers_literal_then_parameter_then_greedy(
    start_gateway: GatewayFactory, recorder: Recorder, session: requests.Session
) -> None:
    # Given a literal, a parameterised and a greedy resource overlapping each other
    routes = [
        Route("/v1/images/latest", "GET", FUNCTION),
        Route("/v1/images/{id}", "GET", FUNCTION),
        Route("/v1/{proxy+}", "ANY", FUNCTION),
    ]
    gateway = start_gateway(routes)

    # When each kind of path is requested
    answers = {
        path: session.get(f"{gateway.url}{path}", timeout=5).json()["resource"]
        for path in ("/v1/images/latest", "/v1/images/img_1", "/v1/images/img_1/thumbnail", "/v1/models")
    }

    # Then the most specific resource wins, and the greedy one catches the rest
    assert answers == {
        "/v1/images/latest": "/v1/images/latest",
        "/v1/images/img_1": "/v1/images/{id}",
        "/v1/images/img_1/thumbnail": "/v1/{proxy+}",
        "/v1/models": "/v1/{proxy+}",
    }
    greedy_event = recorder.last_event
    assert greedy_event["pathParameters"] == {"proxy": "models"}


def test_method_falls_back_to_a_less_specific_resource_declaring_it(
    gateway: LocalApiGateway, recorder: Recorder, session: requests.Session
) -> None:
    # Given /v1/images declares only POST, and /{proxy+} declares OPTIONS
    # When a browser sends a preflight to /v1/images
    response = session.options(
        f"{gateway.url}/v1/images",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
        timeout=5,
    )

    # Then it reaches the greedy resource without an API key (as on AWS: routing is on resource + method)
    assert response.status_code == 200
    assert recorder.last_event["resource"] == "/{proxy+}"
    assert recorder.last_event["pathParameters"] == {"proxy": "v1/images"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nowhere"), ("GET", "/"), ("DELETE", "/v1/images"), ("GET", "/v1/images"), ("POST", "/docs")],
)
def test_unknown_route_or_method_is_missing_authentication_token(
    gateway: LocalApiGateway, recorder: Recorder, session: requests.Session, method: str, path: str
) -> None:
    # Given the fixture routes
    # When a path or a method no resource declares is requested (with a valid key, which does not matter)
    response = session.request(method, f"{gateway.url}{path}", headers={"x-api-key": API_KEY}, timeout=5)

    # Then API Gateway's own answer comes back and no function runs
    assert_gateway_error(response, 403, "Missing Authentication Token")
    assert response.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    assert recorder.calls == []


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PROPFIND", "BREW", "X-FLUX_1"])
@pytest.mark.parametrize("path", ["/v1/images", "/docs", "/anything/else"])
def test_any_other_method_gets_the_gateway_answer_not_a_bare_501(
    start_gateway: GatewayFactory, template_path: Path, recorder: Recorder, method: str, path: str
) -> None:
    # Given the fixture routes plus an ANY route, and the template's customised MISSING_AUTHENTICATION_TOKEN (404)
    routes = [*load_routes(template_path), Route(path="/{proxy+}", method="ANY", function_id=FUNCTION)]
    gateway = start_gateway(routes, gateway_responses=load_api_config(template_path).gateway_responses)

    # When a method that API Gateway does not route (http.server has no do_<METHOD> for it) is sent
    status, headers, body = raw_request(gateway, method, path, [("x-api-key", API_KEY), ("Host", "localhost")])

    # Then it is the gateway's own answer from the template (ANY does not cover it), and no function runs
    answer = dict(headers)
    assert status == 404, body
    assert json.loads(body) == {"error": {"code": "not_found", "request_id": answer["x-amzn-RequestId"]}}
    assert answer["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    assert recorder.calls == []
    assert f"{method} {path} 404" in log_text(gateway)


def test_routing_ignores_one_trailing_slash(
    gateway: LocalApiGateway, recorder: Recorder, session: requests.Session
) -> None:
    # Given GET /docs
    # When /docs/ is requested
    response = session.get(f"{gateway.url}/docs/", timeout=5)

    # Then it is served by /docs, and the event keeps the path as sent
    assert response.status_code == 200
    assert (recorder.last_event["resource"], recorder.last_event["path"]) == ("/docs", "/docs/")


# ---------------------------------------------------------------------------------------------------- API keys
@pytest.mark.parametrize("headers", [{}, {"x-api-key": "not-a-key"}, {"x-api-key": ""}])
def test_keyed_route_without_a_valid_key_is_forbidden(
    gateway: LocalApiGateway, recorder: Recorder, session: requests.Session, headers: dict[str, str]
) -> None:
    # Given POST /v1/images requires an API key
    # When it is called with no key, an unknown key or an empty one
    response = session.post(f"{gateway.url}/v1/images", json={"prompt": "x"}, headers=headers, timeout=5)

    # Then API Gateway refuses it and the function never runs
    assert_gateway_error(response, 403, "Forbidden")
    assert response.headers["x-amzn-ErrorType"] == "ForbiddenException"
    assert recorder.calls == []


def test_keyed_route_with_a_valid_key_reaches_the_function(
    gateway: LocalApiGateway, recorder: Recorder, session: requests.Session
) -> None:
    # Given a valid key, sent with the header name in another case
    # When POST /v1/images is called
    response = session.post(f"{gateway.url}/v1/images", json={"prompt": "x"}, headers={"X-API-Key": API_KEY}, timeout=5)

    # Then the function answers, and the event names the key and its id
    assert response.status_code == 200
    identity = recorder.last_event["requestContext"]["identity"]
    assert (identity["apiKey"], identity["apiKeyId"]) == (API_KEY, api_key_id(API_KEY))


def test_docs_route_needs_no_key_and_the_access_log_never_shows_keys_bodies_or_queries(
    gateway: LocalApiGateway, recorder: Recorder, session: requests.Session
) -> None:
    # Given the docs route, which does not require a key
    # When it is called without a key, and a keyed route is called with a key, a body and a query string
    docs = session.get(f"{gateway.url}/docs", timeout=5)
    session.post(
        f"{gateway.url}/v1/images?token=query-secret",
        json={"prompt": "body-secret"},
        headers={"x-api-key": API_KEY},
        timeout=5,
    )

    # Then the docs answer 200 without identity fields for a key, and the log has one compact line each
    assert docs.status_code == 200
    assert "apiKey" not in recorder.calls[0][0]["requestContext"]["identity"]
    lines = [line for line in log_text(gateway).splitlines() if line.startswith("[gateway] ")]
    assert len(lines) == 2
    assert lines[0].startswith("[gateway] GET /docs 200 ") and lines[0].endswith("ms")
    assert lines[1].startswith("[gateway] POST /v1/images 200 ")
    for secret in (API_KEY, "body-secret", "query-secret"):
        assert secret not in log_text(gateway)


def test_usage_plan_throttle_answers_429_per_key(
    start_gateway: GatewayFactory, recorder: Recorder, session: requests.Session
) -> None:
    # Given a usage plan of 0.01 requests/s with a burst of 2
    gateway = start_gateway(throttle_rate=0.01, throttle_burst=2)

    # When one key makes three requests at once, another key one, and the docs are read
    statuses = [
        session.get(f"{gateway.url}/v1/images/img_1", headers={"x-api-key": API_KEY}, timeout=5) for _ in range(3)
    ]
    other = session.get(f"{gateway.url}/v1/images/img_1", headers={"x-api-key": OTHER_KEY}, timeout=5)
    docs = session.get(f"{gateway.url}/docs", timeout=5)

    # Then the burst passes, the third request is throttled, and other keys and keyless routes are not
    assert [r.status_code for r in statuses[:2]] == [200, 200]
    assert_gateway_error(statuses[2], 429, "Too Many Requests")
    assert other.status_code == 200
    assert docs.status_code == 200
    assert len(recorder.calls) == 4


def test_real_template_throttled_answer_carries_retry_after(
    start_gateway: GatewayFactory, session: requests.Session
) -> None:
    # Given the service's own gateway responses (THROTTLED with a static Retry-After) and a burst of 1
    responses = load_api_config(REPO_ROOT / "template.yaml").gateway_responses
    gateway = start_gateway(throttle_rate=0.01, throttle_burst=1, gateway_responses=responses)

    # When one key makes two requests at once
    url = f"{gateway.url}/v1/images/img_1"
    first, throttled = (session.get(url, headers={"x-api-key": API_KEY}, timeout=5) for _ in range(2))

    # Then the second is throttled in the service's error shape and told when to come back
    assert first.status_code == 200
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "1"
    assert throttled.json()["error"]["code"] == "throttled"


# ---------------------------------------------------------------------------------------------------- event
def test_event_has_the_shape_of_a_real_api_gateway_event(
    gateway: LocalApiGateway, recorder: Recorder, session: requests.Session
) -> None:
    # Given the sample event (from `sam local generate-event`, completed to what AWS sends)
    sample = load_event("post_image")

    # When the same request is sent through the gateway
    response = session.post(
        f"{gateway.url}/v1/images",
        data=sample["body"],
        headers={"content-type": "application/json", "x-api-key": API_KEY, "User-Agent": "curl/8.5.0"},
        timeout=5,
    )

    # Then the event has the same keys at every level, and the values API Gateway derives
    event = recorder.last_event
    assert response.status_code == 200
    assert event.keys() == sample.keys()
    assert event["requestContext"].keys() == sample["requestContext"].keys()
    assert event["requestContext"]["identity"].keys() == sample["requestContext"]["identity"].keys()
    assert (event["resource"], event["path"], event["httpMethod"]) == ("/v1/images", "/v1/images", "POST")
    assert json.loads(event["body"]) == json.loads(sample["body"])
    assert event["isBase64Encoded"] is False
    assert event["pathParameters"] is None
    assert event["queryStringParameters"] is None
    assert event["multiValueQueryStringParameters"] is None
    assert event["stageVariables"] is None
    context = event["requestContext"]
    assert context["path"] == "/v1/images"  # what the client used: the local gateway serves at the root
    assert (context["stage"], context["resourcePath"], context["httpMethod"]) == ("prod", "/v1/images", "POST")
    assert context["protocol"] == "HTTP/1.1"
    assert context["requestId"] == response.headers["x-amzn-RequestId"]
    assert context["extendedRequestId"] == response.headers["x-amz-apigw-id"]
    assert uuid.UUID(context["requestId"]).version == 4
    assert abs(context["requestTimeEpoch"] / 1000 - time.time()) < 60
    assert context["identity"]["sourceIp"] == "127.0.0.1"
    assert context["identity"]["userAgent"] == "curl/8.5.0"
    assert event["headers"]["X-Forwarded-For"] == "127.0.0.1"


def test_event_headers_keep_case_and_repeats(gateway: LocalApiGateway, recorder: Recorder) -> None:
    # Given a client sending a header twice and header names in unusual case
    headers = [
        ("Host", "127.0.0.1"),
        ("X-Custom-Case", "kept"),
        ("x-multi", "one"),
        ("x-multi", "two"),
        ("X-API-KEY", API_KEY),
    ]

    # When it calls a keyed route
    status, _, _ = raw_request(gateway, "GET", "/v1/images/img_1", headers)

    # Then headers hold the last value, multiValueHeaders every value, both under the names as sent
    event = recorder.last_event
    assert status == 200
    assert event["headers"]["X-Custom-Case"] == "kept"
    assert event["headers"]["x-multi"] == "two"
    assert event["multiValueHeaders"]["x-multi"] == ["one", "two"]
    assert event["headers"]["X-API-KEY"] == API_KEY
    assert set(event["headers"]) == set(event["multiValueHeaders"])
    assert "x-custom-case" not in event["headers"]


def test_event_path_and_query_parameters(
    gateway: LocalApiGateway, recorder: Recorder, session: requests.Session
) -> None:
    # Given a keyed parameterised route
    # When it is called with an encoded path parameter and single, repeated, blank and encoded query values
    response = session.get(
        f"{gateway.url}/v1/images/img%2001?size=large&tag=a&tag=b&empty=&q=two%20words",
        headers={"x-api-key": API_KEY},
        timeout=5,
    )

    # Then path values stay encoded like on AWS, query values are decoded, and the last repeat wins
    event = recorder.last_event
    assert response.status_code == 200
    assert event["resource"] == "/v1/images/{id}"
    assert event["path"] == "/v1/images/img%2001"
    assert event["pathParameters"] == {"id": "img%2001"}
    assert event["queryStringParameters"] == {"size": "large", "tag": "b", "empty": "", "q": "two words"}
    assert event["multiValueQueryStringParameters"] == {
        "size": ["large"],
        "tag": ["a", "b"],
        "empty": [""],
        "q": ["two words"],
    }


def test_binary_request_body_arrives_base64_encoded(
    gateway: LocalApiGateway, recorder: Recorder, session: requests.Session
) -> None:
    # Given a non-text body
    payload = b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary"

    # When it is posted with an image content type, then as chunked JSON text
    session.post(
        f"{gateway.url}/v1/images", data=payload, headers={"x-api-key": API_KEY, "Content-Type": "image/png"}, timeout=5
    )
    binary_event = recorder.last_event
    session.post(
        f"{gateway.url}/v1/images",
        data=iter([b'{"prompt": ', b'"caf\xc3\xa9"}']),
        headers={"x-api-key": API_KEY, "Content-Type": "application/json; charset=utf-8"},
        timeout=5,
    )
    text_event = recorder.last_event

    # Then the binary body is base64 with the flag set, and text stays text
    assert binary_event["isBase64Encoded"] is True
    assert base64.b64decode(binary_event["body"]) == payload
    assert text_event["isBase64Encoded"] is False
    assert json.loads(text_event["body"]) == {"prompt": "café"}


# ---------------------------------------------------------------------------------------------------- integration
def test_slow_function_gets_504_after_the_integration_timeout(
    start_gateway: GatewayFactory, recorder: Recorder, session: requests.Session
) -> None:
    # Given a function that answers only once the test releases it (at most 60 s), behind a 0.5 s integration timeout
    release = threading.Event()
    finished = threading.Event()

    def slow(event: Any, context: Any) -> dict[str, Any]:
        release.wait(60)
        finished.set()
        return {"statusCode": 200, "body": "late"}

    recorder.respond = slow
    gateway = start_gateway(integration_timeout_s=0.5)

    # When it is called
    started = time.monotonic()
    try:
        response = session.get(f"{gateway.url}/docs", timeout=30)
        function_done_at_answer = finished.is_set()
    finally:
        release.set()  # let the abandoned invocation finish
    elapsed = time.monotonic() - started

    # Then the client gets API Gateway's timeout answer while the function is still running (not before the
    # integration timeout; the upper bound only catches a hang)
    assert_gateway_error(response, 504, "Endpoint request timed out")
    assert function_done_at_answer is False
    assert 0.4 < elapsed < 30
    assert "did not answer within 0.5s" in log_text(gateway)


def test_function_timeout_shorter_than_the_integration_is_a_502(
    start_gateway: GatewayFactory, recorder: Recorder, session: requests.Session
) -> None:
    # Given a function timing out after 0.3 s (Lambda kills it) behind the default 29 s integration timeout
    release = threading.Event()
    recorder.respond = lambda event, context: (release.wait(2), {"statusCode": 200})[1]
    gateway = start_gateway(function_timeout_s=0.3)

    # When it is called
    try:
        response = session.get(f"{gateway.url}/docs", timeout=5)
    finally:
        release.set()

    # Then the Lambda error surfaces as API Gateway's 502
    assert_gateway_error(response, 502, "Internal server error")
    assert "Task timed out after 0.30 seconds" in log_text(gateway)


def test_function_exception_is_a_502_with_the_traceback_in_the_log(
    gateway: LocalApiGateway, recorder: Recorder, session: requests.Session
) -> None:
    # Given a function that raises
    def boom(event: dict[str, Any], context: LambdaContext) -> Any:
        raise RuntimeError("the model exploded")

    recorder.respond = boom

    # When it is called
    response = session.get(f"{gateway.url}/docs", timeout=5)

    # Then the client gets a bare 502 and the traceback goes to the log only
    assert_gateway_error(response, 502, "Internal server error")
    assert "the model exploded" not in response.text
    assert "RuntimeError: the model exploded" in log_text(gateway)
    assert "Traceback" in log_text(gateway)
    # and the gateway keeps the cause by request id, for a test that meets the 502 to quote
    [(request_id, cause)] = gateway.failures
    assert request_id == response.headers["x-amzn-RequestId"]
    assert "RuntimeError: the model exploded" in cause


@pytest.mark.parametrize(
    "result",
    [
        None,
        "plain text",
        {"body": "no status"},
        {"statusCode": "abc"},
        {"statusCode": True},
        {"statusCode": 200, "body": {"not": "a string"}},
        {"statusCode": 200, "headers": ["x"]},
        {"statusCode": 200, "multiValueHeaders": {"X-A": "not a list"}},
        {"statusCode": 200, "body": "not base64!", "isBase64Encoded": True},
        {"statusCode": 200, "body": {1, 2}},
    ],
    ids=[
        "none",
        "str",
        "no-status",
        "bad-status",
        "bool-status",
        "dict-body",
        "list-headers",
        "scalar-multi",
        "bad-base64",
        "not-json",
    ],
)
def test_invalid_proxy_response_is_a_502(
    gateway: LocalApiGateway, recorder: Recorder, session: requests.Session, result: Any
) -> None:
    # Given a function returning something that is not a valid Lambda proxy response
    recorder.respond = lambda event, context: result

    # When it is called
    response = session.get(f"{gateway.url}/docs", timeout=5)

    # Then API Gateway answers 502 and says why in the log
    assert_gateway_error(response, 502, "Internal server error")
    assert "ImageFunction" in log_text(gateway)


def test_handler_callable_form_receives_the_function_id(
    start_gateway: GatewayFactory, session: requests.Session
) -> None:
    # Given an invoker taking (function id, event, context)
    seen: list[str] = []

    def invoke(function_id: str, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        seen.append(function_id)
        return {"statusCode": "201", "body": context.function_name}

    gateway = start_gateway(invoke=invoke)

    # When a route is called
    response = session.get(f"{gateway.url}/openapi.json", timeout=5)

    # Then it is called with the template's function id (and a string status code is accepted, as on AWS)
    assert seen == [FUNCTION]
    assert (response.status_code, response.text) == (201, FUNCTION)


def test_handler_mapping_must_cover_every_routed_function(template_path: Path) -> None:
    # Given routes to ImageFunction
    # When a gateway is built with handlers for other functions only
    # Then it refuses to start serving routes it cannot invoke
    with pytest.raises(ValueError, match="ImageFunction"):
        LocalApiGateway(load_routes(template_path), {"Other": lambda e, c: {}}, api_keys=[API_KEY], port=0)


# ---------------------------------------------------------------------------------------------------- context
def test_lambda_context_counts_down_within_the_function_timeout(
    start_gateway: GatewayFactory, recorder: Recorder, session: requests.Session
) -> None:
    # Given a function with a 3 s timeout that looks at its remaining time twice, 50 ms apart
    later: list[int] = []

    def respond(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        time.sleep(0.05)
        later.append(context.get_remaining_time_in_millis())
        return {"statusCode": 204}

    recorder.respond = respond
    gateway = start_gateway(function_timeout_s=3)

    # When it is called twice
    session.get(f"{gateway.url}/docs", timeout=5)
    session.get(f"{gateway.url}/docs", timeout=5)

    # Then each invocation gets a fresh context whose remaining time decreases within the timeout
    (_, first_context, first_remaining), (second_event, second_context, _) = recorder.calls
    assert 0 < later[0] < first_remaining <= 3000
    assert first_context.aws_request_id != second_context.aws_request_id
    assert second_context.aws_request_id != second_event["requestContext"]["requestId"]
    assert first_context.function_name == FUNCTION
    assert first_context.memory_limit_in_mb == "512"
    assert first_context.invoked_function_arn.endswith(f":function:{FUNCTION}")


def test_make_context_has_the_runtime_attributes() -> None:
    # Given a context for a 1 s function
    context = make_context("ApiFunction", timeout_s=1, memory_mb=1024)

    # When its remaining time is read before and after a short wait
    before = context.get_remaining_time_in_millis()
    time.sleep(0.02)
    after = context.get_remaining_time_in_millis()

    # Then it counts down from the timeout, and the attributes look like the Lambda runtime's
    assert 0 < after < before <= 1000
    assert context.function_version == "$LATEST"
    assert context.memory_limit_in_mb == "1024"
    assert context.log_group_name == "/aws/lambda/ApiFunction"
    assert "[$LATEST]" in context.log_stream_name
    assert context.invoked_function_arn.startswith("arn:aws:lambda:")
    assert context.identity.cognito_identity_id is None
    assert context.client_context is None
    expired = make_context("ApiFunction", timeout_s=0.001)
    time.sleep(0.01)
    assert expired.get_remaining_time_in_millis() == 0


# ---------------------------------------------------------------------------------------------------- response
def test_proxy_response_headers_are_merged_and_gateway_ids_added(gateway: LocalApiGateway, recorder: Recorder) -> None:
    # Given a function answering with single and multi-valued headers (one pair in both) and a Date header
    recorder.respond = lambda event, context: {
        "statusCode": 201,
        "headers": {"X-Single": "a", "Set-Cookie": "b=2", "Date": "Thu, 01 Jan 1970 00:00:00 GMT"},
        "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"], "X-Multi": ["1", "2"]},
        "body": "created",
    }

    # When it is called
    status, headers, body = raw_request(gateway, "GET", "/docs", [("Host", "127.0.0.1")])

    # Then every value arrives once, Date is remapped like on AWS, and the ids are added
    def values(name: str) -> list[str]:
        return [value for key, value in headers if key.lower() == name.lower()]

    assert (status, body) == (201, b"created")
    assert values("Set-Cookie") == ["a=1", "b=2"]
    assert values("X-Multi") == ["1", "2"]
    assert values("X-Single") == ["a"]
    assert values("x-amzn-Remapped-Date") == ["Thu, 01 Jan 1970 00:00:00 GMT"]
    assert values("Content-Type") == ["application/json"]  # API Gateway's default
    assert len(values("x-amzn-RequestId")) == 1
    assert len(values("x-amz-apigw-id")) == 1


def test_base64_proxy_response_body_is_decoded(
    gateway: LocalApiGateway, recorder: Recorder, session: requests.Session
) -> None:
    # Given a function returning a binary body base64-encoded
    image = bytes(range(256))
    recorder.respond = lambda event, context: {
        "statusCode": 200,
        "headers": {"Content-Type": "image/png"},
        "body": base64.b64encode(image).decode(),
        "isBase64Encoded": True,
    }

    # When it is called
    response = session.get(f"{gateway.url}/docs", timeout=5)

    # Then the client receives the raw bytes
    assert response.content == image
    assert response.headers["Content-Type"] == "image/png"


def test_gateway_responses_customise_the_gateway_answers(
    start_gateway: GatewayFactory, template_path: Path, session: requests.Session
) -> None:
    # Given the fixture template's customised 404 for unknown routes, and a DEFAULT_4XX echoing the Origin
    responses = dict(load_api_config(template_path).gateway_responses)
    responses["DEFAULT_4XX"] = GatewayResponseTemplate(
        headers={"Access-Control-Allow-Origin": "method.request.header.origin"},
        templates={
            "application/json": '{"error": $context.error.messageString, "type": "$context.error.responseType"}'
        },
    )
    gateway = start_gateway(gateway_responses=responses)

    # When an unknown route and a keyed route without key are called
    missing = session.get(f"{gateway.url}/nowhere", timeout=5)
    forbidden = session.post(f"{gateway.url}/v1/images", headers={"Origin": "http://app.test"}, timeout=5)

    # Then the customised answers come back with their status, headers and rendered templates
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "request_id": missing.headers["x-amzn-RequestId"]}}
    assert missing.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert forbidden.status_code == 403  # INVALID_API_KEY keeps its status under DEFAULT_4XX
    assert forbidden.json() == {"error": "Forbidden", "type": "INVALID_API_KEY"}
    assert forbidden.headers["Access-Control-Allow-Origin"] == "http://app.test"
    assert forbidden.headers["Content-Type"] == "application/json"


# ---------------------------------------------------------------------------------------------------- sample events
# API Gateway proxy events only (events/ also holds the SQS event of the worker).
EVENT_NAMES = sorted(
    path.stem for path in EVENTS_DIR.glob("*.json") if "httpMethod" in path.read_text(encoding="utf-8")
)


def test_all_sample_events_exist() -> None:
    # Given the events the tests and `sam local invoke -e` rely on
    # When the events directory is listed
    # Then every one of them is there
    assert set(EVENT_NAMES) >= {
        "post_image",
        "post_image_invalid",
        "post_image_malformed_json",
        "get_image",
        "get_openapi",
        "options_preflight",
    }


@pytest.mark.parametrize("name", EVENT_NAMES)
def test_sample_event_is_internally_consistent(name: str) -> None:
    # Given a sample event
    event = load_event(name)
    context = event["requestContext"]

    # When its parts are compared
    # Then they agree with each other the way API Gateway fills them in
    assert context["resourcePath"] == event["resource"]
    assert context["httpMethod"] == event["httpMethod"]
    assert context["path"] == f"/{context['stage']}{event['path']}"
    assert event["headers"].keys() == event["multiValueHeaders"].keys()
    assert all(event["multiValueHeaders"][k][-1] == v for k, v in event["headers"].items())
    assert event["headers"]["Host"] == context["domainName"]
    assert context["domainPrefix"] == context["domainName"].split(".")[0] == context["apiId"]
    assert event["isBase64Encoded"] is False
    key = event["headers"].get("x-api-key")
    assert context["identity"].get("apiKey") == key
    if key is not None:
        assert context["identity"]["apiKeyId"] == api_key_id(key)
    template = REPO_ROOT / "template.yaml"
    if template.is_file():  # the resource is the one the real API would pick
        resolved = resolve_route(load_routes(template), event["httpMethod"], event["path"])
        assert resolved is not None, f"{name}: no route in template.yaml"
        route, params = resolved
        assert (route.path, route.api_key_required) == (event["resource"], key is not None)
        assert (params or None) == event["pathParameters"]


def test_sample_event_bodies_are_what_their_names_say() -> None:
    # Given the POST samples
    # When their bodies are parsed
    valid = json.loads(load_event("post_image")["body"])
    invalid = json.loads(load_event("post_image_invalid")["body"])

    # Then the valid one is the reference request, the invalid one breaks several rules, the malformed one is not JSON
    assert valid == {
        "prompt": "a cozy mountain cabin under a starry night sky",
        "num_steps": 4,
        "seed": 15,
        "width": 512,
        "height": 512,
    }
    assert invalid["prompt"].strip() == ""
    assert (invalid["num_steps"], invalid["width"]) == (9, 500)
    assert "stepz" in invalid
    with pytest.raises(json.JSONDecodeError):
        json.loads(load_event("post_image_malformed_json")["body"])
    assert load_event("get_image")["pathParameters"] == {"id": "img_5b0c1a3e9d2f4c8a8e6b7d1f2a3c4e5f"}
    preflight = load_event("options_preflight")
    assert preflight["headers"]["Origin"] == "http://localhost:3000"
    assert preflight["headers"]["Access-Control-Request-Method"] == "POST"
    assert preflight["body"] is None
    with pytest.raises(FileNotFoundError, match="post_image"):
        load_event("no_such_event")


def test_gateway_also_serves_under_the_stage_like_the_execute_api_url(
    gateway: LocalApiGateway, recorder: Recorder, session: requests.Session
) -> None:
    # Given a client that uses the deployed URL's shape (…/prod/v1/images)
    response = session.post(
        f"{gateway.url}/prod/v1/images",
        data="{}",
        headers={"content-type": "application/json", "x-api-key": API_KEY},
        timeout=5,
    )
    # Then the route matches without the stage, and requestContext.path keeps it, as API Gateway's does
    event = recorder.last_event
    assert response.status_code == 200
    assert (event["resource"], event["path"]) == ("/v1/images", "/v1/images")
    assert event["requestContext"]["path"] == "/prod/v1/images"
