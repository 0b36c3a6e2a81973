"""The API handler fed with the events in events/ (the JSON `sam local invoke -e` uses), under moto + emulator."""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import pytest
import requests
from support.events import load_event
from support.secrets_under_test import ORIGIN, ROTATED_SUBSCRIPTION_KEY, SUBSCRIPTION_KEY

PROMPT = "a cozy mountain cabin under a starry night sky"


def body_of(response: dict[str, Any]) -> Any:
    return json.loads(response["body"])


def header(response: dict[str, Any], name: str) -> str | None:
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    multi = {k.lower(): v for k, v in (response.get("multiValueHeaders") or {}).items()}
    if name.lower() in headers:
        return headers[name.lower()]
    values = multi.get(name.lower())
    return ",".join(values) if values else None


def post_event(payload: Any) -> dict[str, Any]:
    event = load_event("post_image")
    event["body"] = payload if isinstance(payload, str) else json.dumps(payload)
    return event


def get_event(image_id: str) -> dict[str, Any]:
    event = load_event("get_image")
    event["path"] = f"/v1/images/{image_id}"
    event["pathParameters"] = {"id": image_id}
    event["requestContext"]["path"] = f"/prod/v1/images/{image_id}"
    return event


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


# ------------------------------------------------------------------------------------------------ success
def test_handler_201_generates_mirrors_and_records(invoke, stack, emulator):
    # Given the sample event (seed 15, 512×512)
    event = load_event("post_image")

    # When the handler runs
    response = invoke(event)

    # Then it answers 201 with the document, a Location, and the image mirrored into the private bucket
    assert response["statusCode"] == 201, response["body"]
    document = body_of(response)
    # the sample event came through the execute-api URL: the link keeps the stage
    assert header(response, "Location") == f"/prod/v1/images/{document['id']}"
    assert document["status"] == "succeeded"
    assert document["parameters"] == {"prompt": PROMPT, "num_steps": 4, "seed": 15, "width": 512, "height": 512}
    image = document["image"]
    assert image["content_type"] == "image/png"
    assert (image["width"], image["height"]) == (512, 512)
    assert image["s3_uri"].startswith(f"s3://{stack.resources.bucket}/images/")
    assert image["s3_uri"].endswith(f"/{document['id']}.png")
    assert document["timings"]["upstream_ms"] <= document["timings"]["total_ms"]

    downloaded = requests.get(image["url"], timeout=10)
    assert downloaded.status_code == 200
    assert png_size(downloaded.content) == (512, 512)
    assert hashlib.sha256(downloaded.content).hexdigest() == image["sha256"]
    assert len(downloaded.content) == image["bytes"]

    key = image["s3_uri"].split("/", 3)[3]
    head = stack.aws.client("s3").head_object(Bucket=stack.resources.bucket, Key=key)
    assert head["ContentType"] == "image/png"
    assert head["Metadata"]["sha256"] == image["sha256"]
    assert head["Metadata"]["seed"] == "15"
    assert head["Metadata"]["image-id"] == document["id"]
    assert emulator.calls == 1


def test_handler_201_picks_and_returns_a_seed_that_reproduces_the_image(invoke, emulator):
    # Given a request without a seed
    first = body_of(invoke(post_event({"prompt": "seedless", "width": 256, "height": 256})))

    # When the returned seed is sent back
    seed = first["parameters"]["seed"]
    second = body_of(invoke(post_event({"prompt": "seedless", "width": 256, "height": 256, "seed": seed})))

    # Then the same image comes back
    assert 0 <= seed <= 4294967295
    assert second["image"]["sha256"] == first["image"]["sha256"]
    assert second["id"] != first["id"]


def test_handler_get_returns_the_document_with_a_fresh_url(invoke, emulator):
    # Given a generated image
    created = body_of(invoke(load_event("post_image")))

    # When it is fetched by id
    response = invoke(get_event(created["id"]))

    # Then the document is the same, with a working presigned URL
    assert response["statusCode"] == 200
    fetched = body_of(response)
    assert fetched["id"] == created["id"]
    assert fetched["parameters"] == created["parameters"]
    assert fetched["image"]["sha256"] == created["image"]["sha256"]
    assert requests.get(fetched["image"]["url"], timeout=10).content[:8] == b"\x89PNG\r\n\x1a\n"


def test_handler_get_unknown_id_404(invoke):
    response = invoke(get_event("img_" + "0" * 32))
    assert response["statusCode"] == 404
    assert body_of(response)["error"]["code"] == "not_found"


def test_handler_sample_get_event_reaches_the_table_as_sam_local_invoke_would(invoke):
    # Given events/get_image.json exactly as `sam local invoke -e` sends it
    # When the handler runs it
    response = invoke(load_event("get_image"))
    # Then the id passes the route's validation and the lookup happens: 404 for an image that was never made
    assert response["statusCode"] == 404, response["body"]
    assert body_of(response)["error"]["code"] == "not_found"


def test_handler_get_malformed_id_422_names_the_field(invoke):
    response = invoke(get_event("not-an-id"))
    assert response["statusCode"] == 422
    assert body_of(response)["error"]["details"][0]["field"] == "image_id"


# ------------------------------------------------------------------------------------------------ bad input
def test_handler_422_lists_every_failing_field(invoke, emulator):
    response = invoke(load_event("post_image_invalid"))

    assert response["statusCode"] == 422
    error = body_of(response)["error"]
    assert error["code"] == "validation_error"
    fields = {detail["field"] for detail in error["details"]}
    assert {"prompt", "num_steps", "width", "stepz"} <= fields
    assert all(detail["message"] and detail["location"].startswith("body.") for detail in error["details"])
    assert error["request_id"]
    assert emulator.calls == 0


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"prompt": "ok", "seed": -1}, "seed"),
        ({"prompt": "ok", "seed": 4294967296}, "seed"),
        ({"prompt": "ok", "num_steps": 0}, "num_steps"),
        ({"prompt": "ok", "num_steps": "4"}, "num_steps"),
        ({"prompt": "ok", "height": 2064}, "height"),
        ({"prompt": "ok", "height": 240}, "height"),
        ({"prompt": 42}, "prompt"),
    ],
)
def test_handler_422_names_the_field(invoke, emulator, payload, field):
    response = invoke(post_event(payload))
    assert response["statusCode"] == 422
    assert field in {detail["field"] for detail in body_of(response)["error"]["details"]}
    assert emulator.calls == 0


@pytest.mark.parametrize("payload", ["[]", '"a string"', "null", "42"])
def test_handler_422_when_the_body_is_not_an_object(invoke, payload):
    response = invoke(post_event(payload))
    assert response["statusCode"] == 422
    assert body_of(response)["error"]["code"] == "validation_error"


def test_handler_400_on_malformed_json(invoke):
    response = invoke(load_event("post_image_malformed_json"))
    assert response["statusCode"] == 400
    assert body_of(response)["error"]["code"] == "malformed_json"


# ------------------------------------------------------------------------------------------------ upstream
def test_handler_retries_429_honouring_retry_after_then_succeeds(invoke, emulator):
    emulator.inject("rate_limit", count=1, retry_after=1)
    response = invoke(load_event("post_image"))
    assert response["statusCode"] == 201
    assert emulator.calls == 2
    assert emulator.calls_by_status == {429: 1, 200: 1}


def test_handler_503_with_retry_after_when_the_upstream_keeps_failing(invoke, emulator):
    emulator.inject("server_error", count=None)
    response = invoke(load_event("post_image"))
    assert response["statusCode"] == 503
    assert body_of(response)["error"]["code"] == "upstream_unavailable"
    assert int(header(response, "Retry-After")) >= 1
    assert emulator.calls == 4  # UPSTREAM_MAX_ATTEMPTS


def test_handler_503_stops_retrying_when_retry_after_exceeds_the_budget(invoke, emulator):
    emulator.inject("rate_limit", count=None, retry_after=120)
    response = invoke(load_event("post_image"))
    assert response["statusCode"] == 503
    assert header(response, "Retry-After") == "120"
    assert emulator.calls == 1


def test_handler_504_when_the_upstream_is_slower_than_the_budget(invoke, emulator):
    # Given an upstream that answers after 30 s and a Lambda with 7 s left (budget 6 s, 4 s kept for the mirror)
    emulator.inject("timeout", delay_s=30)
    response = invoke(load_event("post_image"), timeout_s=7)
    assert response["statusCode"] == 504
    assert body_of(response)["error"]["code"] == "upstream_timeout"


def test_handler_400_passes_the_upstream_rejection_through(invoke, emulator):
    # Given an upstream that refuses the parameters with its documented 400 body
    emulator.inject("bad_request", message="Invalid prompt parameter")
    response = invoke(load_event("post_image"))
    assert response["statusCode"] == 400
    error = body_of(response)["error"]
    assert error["code"] == "upstream_rejected"
    assert "Invalid prompt parameter" in error["message"]


def test_handler_502_when_200_has_no_output(invoke, emulator):
    emulator.inject("no_output")
    response = invoke(load_event("post_image"))
    assert response["statusCode"] == 502
    assert body_of(response)["error"]["code"] == "upstream_bad_response"


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.com/x.png",
        "https://169.254.169.254/latest/meta-data/",
        "ftp://127.0.0.1/x.png",
    ],
)
def test_handler_502_refuses_to_fetch_outside_the_allowlist(invoke, emulator, url):
    emulator.inject("output_custom", url=url)
    response = invoke(load_event("post_image"))
    assert response["statusCode"] == 502
    assert body_of(response)["error"]["code"] in {"image_rejected", "upstream_bad_response"}


def test_handler_502_when_the_output_is_not_an_image(invoke, emulator, stack):
    emulator.inject("not_image")
    response = invoke(load_event("post_image"))
    assert response["statusCode"] == 502
    assert body_of(response)["error"]["code"] == "image_rejected"


def test_handler_refreshes_a_rotated_key_without_a_redeploy(invoke, emulator, stack):
    # Given the key was rotated at the vendor and in Secrets Manager, but the function still caches the old one
    invoke(load_event("post_image"))  # warm the cache
    rotated = ROTATED_SUBSCRIPTION_KEY
    emulator.set_api_key(rotated)
    secrets = stack.aws.client("secretsmanager")
    secrets.put_secret_value(
        SecretId=stack.resources.secret_name, SecretString=json.dumps({"subscription_key": rotated})
    )
    try:
        # When a request comes in
        response = invoke(load_event("post_image"))
        # Then one 401 triggers a forced refresh and the retry succeeds
        assert response["statusCode"] == 201, response["body"]
        assert emulator.calls_by_status.get(401) == 1
    finally:
        secrets.put_secret_value(SecretId=stack.resources.secret_name, SecretString=SUBSCRIPTION_KEY)
        emulator.set_api_key(SUBSCRIPTION_KEY)
        invoke(load_event("post_image"))  # re-warm with the original key


def test_handler_502_upstream_auth_when_the_key_stays_refused(invoke, emulator, captured_logs):
    emulator.inject("apim_unauthorized", count=None)
    response = invoke(load_event("post_image"))
    assert response["statusCode"] == 502
    assert body_of(response)["error"]["code"] == "upstream_auth"
    assert emulator.calls == 2  # the original and one retry with a re-read key
    logs = captured_logs()
    assert '"UpstreamAuthFailures"' in logs  # the metric the alarm watches
    assert SUBSCRIPTION_KEY not in logs
    assert SUBSCRIPTION_KEY not in response["body"]


def test_handler_503_when_the_quota_is_exhausted(invoke, emulator):
    emulator.inject("quota_exhausted")
    response = invoke(load_event("post_image"))
    assert response["statusCode"] == 503
    assert body_of(response)["error"]["code"] == "upstream_quota_exhausted"
    assert header(response, "Retry-After") == "600"


def test_handler_500_hides_internals_and_gives_the_request_id(invoke, stack, monkeypatch, captured_logs):
    service = stack.handlers["api_handler"].image_service()

    def explode(*_: Any, **__: Any) -> None:
        raise RuntimeError("database password is hunter2")

    monkeypatch.setattr(service, "generate", explode)
    event = load_event("post_image")
    response = invoke(event)
    assert response["statusCode"] == 500
    error = body_of(response)["error"]
    assert error["code"] == "internal_error"
    assert "hunter2" not in response["body"]
    assert error["request_id"] == event["requestContext"]["requestId"]
    assert "hunter2" in captured_logs()  # the operator still sees it in the logs


@pytest.mark.parametrize(
    "failure",
    [
        "read_timeout",
        "connection_refused",
        "throttled",
        "server_error",
    ],
)
def test_handler_503_when_storage_is_slow_or_unavailable(invoke, stack, monkeypatch, captured_logs, failure):
    # Given DynamoDB timing out, refusing connections, throttling or failing after botocore's own retries
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

    errors = {
        "read_timeout": ReadTimeoutError(endpoint_url="http://dynamodb"),
        "connection_refused": EndpointConnectionError(endpoint_url="http://dynamodb"),
        "throttled": ClientError(
            {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}}, "GetItem"
        ),
        "server_error": ClientError(
            {"Error": {"Code": "InternalServerError"}, "ResponseMetadata": {"HTTPStatusCode": 500}}, "GetItem"
        ),
    }
    service = stack.handlers["api_handler"].image_service()

    def fail(*_: Any, **__: Any) -> None:
        raise errors[failure]

    monkeypatch.setattr(service, "generate", fail)

    # When a request needs it
    response = invoke(load_event("post_image"))

    # Then the caller is told to come back, not that the service is broken
    assert response["statusCode"] == 503
    assert body_of(response)["error"]["code"] == "service_unavailable"
    assert int(header(response, "Retry-After")) > 0
    assert '"InternalErrors"' not in captured_logs()  # the rollback alarm's metric: an AWS outage is not a bad release


def test_handler_500_for_an_aws_error_that_is_the_request_s_own(invoke, stack, monkeypatch):
    from botocore.exceptions import ClientError

    service = stack.handlers["api_handler"].image_service()

    def fail(*_: Any, **__: Any) -> None:
        raise ClientError({"Error": {"Code": "ValidationException"}, "ResponseMetadata": {"HTTPStatusCode": 400}}, "X")

    monkeypatch.setattr(service, "generate", fail)
    response = invoke(load_event("post_image"))
    assert response["statusCode"] == 500
    assert body_of(response)["error"]["code"] == "internal_error"


def test_the_subscription_key_never_reaches_logs_or_answers(invoke, emulator, captured_logs):
    answers = [invoke(load_event("post_image"))]
    emulator.inject("server_error", count=None)
    answers.append(invoke(load_event("post_image")))
    emulator.clear_faults()
    emulator.inject("apim_unauthorized", count=None)
    answers.append(invoke(load_event("post_image")))
    emulator.clear_faults()
    text = captured_logs() + "".join(json.dumps(answer) for answer in answers)
    assert SUBSCRIPTION_KEY not in text
    assert [answer["statusCode"] for answer in answers] == [201, 503, 502]


def test_prompts_are_not_logged_in_full(invoke, emulator, captured_logs, caplog):
    secret_prompt = "a private prompt about project bluebird"
    response = invoke(post_event({"prompt": secret_prompt, "width": 256, "height": 256}))
    # Everything written, and every log record with all its attributes: the text alone lacks the structured
    # (Powertools) keys, which is where a prompt would most likely slip in
    logs = captured_logs() + "\n".join(repr(vars(record)) for record in caplog.records)
    # The request went all the way through and its logs were captured (else the check below would prove nothing):
    # the record of the generation carries the prompt's length
    assert response["statusCode"] == 201
    assert [getattr(record, "prompt_chars", None) for record in caplog.records if hasattr(record, "prompt_chars")] == [
        len(secret_prompt)
    ]
    assert "prompt_chars" in logs
    # And the prompt itself is in none of them
    assert secret_prompt not in logs


# ------------------------------------------------------------------------------------------------ CORS and docs
def test_handler_preflight_echoes_an_allowed_origin(invoke):
    response = invoke(load_event("options_preflight"))
    assert response["statusCode"] == 204
    assert header(response, "Access-Control-Allow-Origin") == ORIGIN
    assert "POST" in header(response, "Access-Control-Allow-Methods")
    assert "x-api-key" in header(response, "Access-Control-Allow-Headers").lower()


def test_handler_preflight_ignores_other_origins(invoke):
    event = load_event("options_preflight")
    for headers in (event["headers"], event.get("multiValueHeaders") or {}):
        for name in list(headers):
            if name.lower() == "origin":
                headers[name] = (
                    "https://evil.example.com" if headers is event["headers"] else ["https://evil.example.com"]
                )
    response = invoke(event)
    assert header(response, "Access-Control-Allow-Origin") is None


def test_handler_serves_the_openapi_spec(invoke):
    response = invoke(load_event("get_openapi"))
    assert response["statusCode"] == 200
    spec = body_of(response)
    assert spec["openapi"].startswith("3.")
    assert {"/v1/images", "/v1/images/{image_id}"} <= set(spec["paths"])
    post = spec["paths"]["/v1/images"]["post"]
    assert {"201", "400", "422", "502", "503", "504"} <= set(post["responses"])
    assert spec["components"]["securitySchemes"]["apiKey"]["name"] == "x-api-key"


def with_origin(event: dict[str, Any], origin: str) -> dict[str, Any]:
    for headers in (event["headers"], event.get("multiValueHeaders") or {}):
        for name in [name for name in headers if name.lower() == "origin"]:
            del headers[name]
    event["headers"]["Origin"] = origin
    event.setdefault("multiValueHeaders", {})["Origin"] = [origin]
    return event


@pytest.mark.parametrize("origin", [ORIGIN, "https://evil.example.com"])
@pytest.mark.parametrize("name", ["options_preflight", "get_openapi", "get_image", "post_image_invalid"])
def test_handler_answers_vary_by_origin(invoke, name, origin):
    # Given a request from an allowed origin or another one (whose answer leaves the CORS headers out)
    response = invoke(with_origin(load_event(name), origin))
    # Then the answer says it depends on Origin, so a shared cache never serves one origin's answer to another
    assert header(response, "Vary") == "Origin"
    assert header(response, "Access-Control-Allow-Origin") == (ORIGIN if origin == ORIGIN else None)


def test_handler_openapi_servers_name_the_stage_it_was_fetched_under(invoke):
    # Given the spec fetched through the execute-api URL (…/prod/openapi.json) and at the root (a custom domain)
    under_stage = body_of(invoke(load_event("get_openapi")))
    event = load_event("get_openapi")
    event["requestContext"]["path"] = "/openapi.json"
    at_root = body_of(invoke(event))
    # Then "Try it out" calls /prod/v1/... in the first case and /v1/... in the second
    assert [server["url"] for server in under_stage["servers"]] == ["/prod"]
    assert [server["url"] for server in at_root["servers"]] == ["/"]


def test_handler_swagger_ui_under_the_stage_calls_the_stage(invoke):
    event = load_event("get_openapi")
    event["path"], event["resource"] = "/docs", "/docs"
    event["requestContext"].update(path="/prod/docs", resourcePath="/docs")
    response = invoke(event)
    assert response["statusCode"] == 200
    assert '"url": "/prod"' in response["body"]


def test_handler_openapi_lists_only_schemas_an_operation_uses(invoke):
    spec = body_of(invoke(load_event("get_openapi")))
    schemas = spec["components"]["schemas"]
    text = json.dumps({key: value for key, value in spec.items() if key != "components"})
    # Reachable from the operations, directly or through another schema
    reachable = {name for name in schemas if f'"#/components/schemas/{name}"' in text}
    for _ in range(len(schemas)):
        inside = json.dumps([schemas[name] for name in reachable])
        reachable |= {name for name in schemas if f'"#/components/schemas/{name}"' in inside}
    assert set(schemas) == reachable
    assert not {"HTTPValidationError", "ValidationError", "ResponseValidationError"} & set(schemas)


# ---------------------------------------------------------------------------------------- body media types
def with_media_type(event: dict[str, Any], declared: str) -> dict[str, Any]:
    for headers in (event["headers"], event.get("multiValueHeaders") or {}):
        for name in [name for name in headers if name.lower() == "content-type"]:
            del headers[name]
    event["headers"]["Content-Type"] = declared
    event.setdefault("multiValueHeaders", {})["Content-Type"] = [declared]
    return event


@pytest.mark.parametrize("name", ["post_image", "post_job"])
@pytest.mark.parametrize("declared", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_handler_415_names_the_media_type_on_every_body_route(invoke, name, declared):
    # Given each route that takes a body (api_json_body.JSON_BODY), When its body is declared as something else
    response = invoke(with_media_type(load_event(name), declared))
    # Then 415, naming what was declared (not a form parsed into fields, not a 500 for a missing boundary)
    assert response["statusCode"] == 415
    error = body_of(response)["error"]
    assert error["code"] == "unsupported_media_type"
    assert error["message"] == f"the request body must be application/json, not {declared}"


def test_handler_202_for_a_job_declared_as_json_in_capitals(invoke):
    # Given POST /v1/jobs with its media type in capitals, When the API answers, Then the job is queued
    response = invoke(with_media_type(load_event("post_job"), "APPLICATION/JSON; charset=UTF-8"))
    assert response["statusCode"] == 202, response["body"]
    assert body_of(response)["id"].startswith("job_")
