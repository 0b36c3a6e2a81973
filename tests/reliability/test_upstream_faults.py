"""Upstream faults, one injected emulator mode per case, each with its documented answer (README "Errors").

Every case runs the real API handler with the API Gateway event in ``events/post_image.json`` against the local
stack's emulator, moto and mirror, and checks four things: the status and error ``code`` the README documents,
the number of upstream calls (bounded retries, never more), the ``Retry-After`` a 503 promises, and that a failed
request stored nothing (no S3 object, no record). The cases that need a short Lambda budget (timeouts, drips)
pass it in the context, which is how the handler learns it in AWS too.

The address guard is on in the local stack for everything but loopback, so the link-local and private cases run
the production guard; the cases that need the production *scheme* guard (https only) switch the local stack's
http allowance off for their duration.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from imagegen.adapters.netguard import UrlGuard
from support.events import load_event
from support.secrets_under_test import API_KEY, ROTATED_SUBSCRIPTION_KEY, SUBSCRIPTION_KEY

METADATA_URL = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"


@dataclass(frozen=True)
class Fault:
    """One row of the matrix: what the emulator does, and what the caller must get."""

    name: str
    mode: str | None  # an emulator fault mode (None: the case sets its fault up itself)
    status: int
    code: str | None  # the error code (None for a success)
    calls: int | tuple[int, int]  # upstream generation calls: exact, or (min, max)
    params: dict[str, Any] = field(default_factory=dict)
    count: int | None = None  # how many requests the fault hits (None: every one)
    budget_s: float = 29.0  # the Lambda's remaining time
    retry_after: bool = False  # a 503 must say when to come back
    message: str | None = None  # a fragment the error message must carry


MATRIX = [
    Fault("429 with Retry-After, once", "rate_limit", 201, None, 2, {"retry_after": 1}, count=1),
    Fault(
        "429 with Retry-After, persistent",
        "rate_limit",
        503,
        "upstream_unavailable",
        4,
        {"retry_after": 1},
        retry_after=True,
    ),
    Fault("429 without Retry-After, once", "rate_limit_no_retry_after", 201, None, 2, count=1),
    Fault(
        "429 without Retry-After, persistent",
        "rate_limit_no_retry_after",
        503,
        "upstream_unavailable",
        4,
        retry_after=True,
    ),
    Fault(
        "429 with Retry-After beyond the budget",
        "rate_limit",
        503,
        "upstream_unavailable",
        1,
        {"retry_after": 120},
        retry_after=True,
    ),
    Fault("500, once", "server_error", 201, None, 2, count=1),
    Fault("500, persistent", "server_error", 503, "upstream_unavailable", 4, retry_after=True),
    Fault("502 (HTML from a proxy), persistent", "bad_gateway", 503, "upstream_unavailable", 4, retry_after=True),
    Fault("503, persistent", "unavailable", 503, "upstream_unavailable", 4, retry_after=True),
    Fault("connection reset, persistent", "disconnect", 503, "upstream_unavailable", 4, retry_after=True),
    Fault("read timeout past the budget", "timeout", 504, "upstream_timeout", 1, {"delay_s": 30}, budget_s=7),
    Fault("slow drip past the budget", "drip", 504, "upstream_timeout", 1, {"interval_s": 0.5}, budget_s=7),
    Fault("200 without output", "no_output", 502, "upstream_bad_response", 1),
    Fault(
        "output on a disallowed host",
        "output_custom",
        502,
        "image_rejected",
        1,
        {"url": "https://images.evil.example/x.png"},
        message="not on the allowlist",
    ),
    Fault(
        "output on a link-local address",
        "output_custom",
        502,
        "image_rejected",
        1,
        {"url": "http://169.254.169.254/x.png"},
        message="not on the allowlist",
    ),
    Fault(
        "output redirecting to 169.254.169.254",
        "redirect",
        502,
        "image_rejected",
        1,
        {"location": METADATA_URL},
        message="not on the allowlist",
    ),
    Fault("body is not an image", "not_image", 502, "image_rejected", 1, message="not an image"),
    Fault("oversized body (declared)", "oversized", 502, "image_rejected", 1, {"size": 64 << 20}, message="too large"),
    Fault(
        "oversized body (streamed, no length)",
        "oversized",
        502,
        "image_rejected",
        1,
        {"size": 64 << 20, "declare_length": False},
        message="too large",
    ),
    Fault("truncated body", "truncated", 502, "image_rejected", 1, message="truncated"),
    Fault("API Management 429 body", "apim_rate_limit", 503, "upstream_unavailable", 4, retry_after=True),
    Fault("API Management 401 body, key stays refused", "apim_unauthorized", 502, "upstream_auth", 2),
    Fault("403 quota exhausted", "quota_exhausted", 503, "upstream_quota_exhausted", 1, retry_after=True),
    Fault(
        "400 from the upstream",
        "bad_request",
        400,
        "upstream_rejected",
        1,
        {"message": "Invalid prompt"},
        message="Invalid prompt",
    ),
]


def answer(response: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    for name, values in (response.get("multiValueHeaders") or {}).items():
        headers.setdefault(name.lower(), ",".join(values))
    return response["statusCode"], json.loads(response["body"]), headers


JOB_PREFIXES = frozenset({"jobs/", "images/jobs/"})  # what jobs write; a synchronous request never does


@pytest.fixture
def stored(stack) -> Callable[[], int]:
    """How many objects the images bucket holds outside the jobs' folders. The session's jobs leave thousands of
    objects there, and listing them twice per test cost seconds of CPU (a timestamp parsed per object)."""
    s3 = stack.aws.client("s3")

    def count(prefix: str = "") -> int:
        found = 0
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=stack.resources.bucket, Prefix=prefix, Delimiter="/"
        )
        for page in pages:
            found += len(page.get("Contents", []))
            for folder in page.get("CommonPrefixes", []):
                if folder["Prefix"] not in JOB_PREFIXES:
                    found += count(folder["Prefix"])
        return found

    return count


def check(fault: Fault, response: dict[str, Any], emulator: Any, objects_before: int, objects_after: int) -> None:
    status, body, headers = answer(response)
    assert status == fault.status, body
    calls = emulator.calls
    low, high = fault.calls if isinstance(fault.calls, tuple) else (fault.calls, fault.calls)
    assert low <= calls <= high, f"{calls} upstream calls, expected {fault.calls}"
    if fault.code is None:
        assert objects_after == objects_before + 1  # the image is mirrored once
        return
    error = body["error"]
    assert error["code"] == fault.code
    assert error["request_id"]
    if fault.message:
        assert fault.message in error["message"]
    if fault.retry_after:
        assert int(headers["retry-after"]) >= 1
    assert objects_after == objects_before, "a failed request stored an object"
    assert SUBSCRIPTION_KEY not in response["body"]


@pytest.mark.parametrize("fault", MATRIX, ids=[fault.name for fault in MATRIX])
def test_upstream_fault_gets_its_documented_answer(fault: Fault, invoke, emulator, stored, reliability) -> None:
    # Given the emulator injecting the fault
    emulator.inject(fault.mode, count=fault.count, **fault.params)
    before = stored()
    # When a client asks for an image
    response = invoke(load_event("post_image"), timeout_s=fault.budget_s)
    reliability.record(
        "Upstream faults", fault.name, f"{fault.status} {fault.code or 'created'}", upstream_calls=emulator.calls
    )
    # Then it gets the documented answer, after a bounded number of calls, and nothing half-done is stored
    check(fault, response, emulator, before, stored())


# ---------------------------------------------------------------------------------------- the guards, as deployed
@pytest.fixture
def production_guard(stack) -> Iterator[Callable[..., None]]:
    """Swap the running mirror's URL guard (and the client's output-scheme check) for the deployed settings."""
    service = stack.handlers["api_handler"].image_service()
    mirror, flux = service._mirror, service._flux
    saved = (mirror._guard, flux._output_schemes)

    def apply(allowlist: tuple[str, ...], *, allow_http: bool) -> None:
        mirror._guard = UrlGuard(allowlist, allow_http=allow_http)
        flux._output_schemes = ("https", "http") if allow_http else ("https",)

    yield apply
    mirror._guard, flux._output_schemes = saved


def test_output_over_plain_http_is_refused_as_deployed(invoke, emulator, stored, production_guard, reliability):
    # Given the deployed scheme rule (https only) and an output URL on the allowlisted host, over http
    production_guard(("127.0.0.1",), allow_http=False)
    emulator.inject("output_http")
    before = stored()
    # When a client asks for an image, then the URL is not fetched, and the answer is a refusal (image_rejected,
    # as for any other refused output: a queued item is not retried for it) rather than a bad response
    response = invoke(load_event("post_image"))
    fault = Fault("output over http", None, 502, "image_rejected", 1, message="https only")
    check(fault, response, emulator, before, stored())
    assert emulator.image_downloads == 0
    reliability.record("Upstream faults", fault.name, "502 image_rejected, nothing fetched", upstream_calls=1)


@pytest.mark.parametrize(
    ("name", "mode", "params"),
    [
        ("allowlisted host on a link-local address", "output_custom", {"url": "http://169.254.169.254/x.png"}),
        ("allowlisted host on a private address", "output_custom", {"url": "http://10.20.30.40/x.png"}),
        ("allowlisted host on a private IPv6 address", "output_custom", {"url": "http://[fd00:ec2::254]/x.png"}),
        ("redirect to 169.254.169.254, allowlist '*'", "redirect", {"location": METADATA_URL}),
    ],
)
def test_the_address_guard_refuses_what_the_allowlist_lets_through(
    name, mode, params, invoke, emulator, stored, production_guard, reliability
):
    # Given an allowlist that would let the host through (a misconfiguration, or DNS pointing somewhere it should
    # not): only the address guard stands between the function and the metadata service or the VPC
    production_guard(("*",), allow_http=True)
    emulator.inject(mode, **params)
    before = stored()
    # When a client asks for an image
    response = invoke(load_event("post_image"))
    # Then the connection is refused on its address, before a byte is sent
    fault = Fault(name, None, 502, "image_rejected", 1, message="non-public address")
    check(fault, response, emulator, before, stored())
    reliability.record("Upstream faults", name, "502 image_rejected (non-public address)", upstream_calls=1)


def test_redirect_to_the_metadata_service_over_http_through_the_local_gateway(stack, emulator, stored, reliability):
    # Given the emulator's output URL redirecting to the instance metadata service
    emulator.inject("redirect", location=METADATA_URL)
    before = stored()
    # When a client calls the API over HTTP, through the local API Gateway
    response = requests.post(
        f"{stack.url}/v1/images",
        json={"prompt": "a lighthouse", "width": 256, "height": 256},
        headers={"x-api-key": API_KEY},
        timeout=30,
    )
    # Then it gets the documented 502, the redirect was not followed, and nothing was stored
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "image_rejected"
    assert "169.254.169.254" in response.json()["error"]["message"]
    assert stored() == before
    reliability.record("Upstream faults", "redirect to 169.254.169.254 (over HTTP)", "502 image_rejected")


# ---------------------------------------------------------------------------------------- connect timeout
@pytest.fixture
def black_hole() -> Iterator[str]:
    """A loopback port whose accept queue is full: the kernel drops new SYNs, so a connect times out."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(("127.0.0.1", port))
        pytest.skip("this kernel accepts connections beyond a full backlog: no black hole on loopback")
    except TimeoutError:
        pass
    finally:
        probe.close()
    yield f"http://127.0.0.1:{port}/getData"
    for sock in (*fillers, listener):
        sock.close()


def test_connect_timeout_is_retried_then_503(stack, invoke, emulator, stored, black_hole, reliability):
    # Given an upstream that never completes the TCP handshake
    flux = stack.handlers["api_handler"].image_service()._flux
    real_url = flux.url
    flux.url = black_hole
    try:
        before = stored()
        # When a client asks for an image with 12 s left in the Lambda
        response = invoke(load_event("post_image"), timeout_s=12)
    finally:
        flux.url = real_url
    # Then the connect attempts are bounded by the budget and the caller is told to retry later
    fault = Fault("connect timeout", None, 503, "upstream_unavailable", 0, retry_after=True)
    check(fault, response, emulator, before, stored())
    reliability.record("Upstream faults", fault.name, "503 upstream_unavailable + Retry-After")


# ---------------------------------------------------------------------------------------- key rotation
def test_401_until_the_secret_is_rotated_then_success_without_a_redeploy(stack, invoke, emulator, reliability):
    # Given the vendor has rotated the key but Secrets Manager still holds the old one
    secrets = stack.aws.client("secretsmanager")
    rotated = ROTATED_SUBSCRIPTION_KEY
    emulator.set_api_key(rotated)
    try:
        # When a client asks for an image, then it is told the upstream refuses our key (after one forced re-read)
        refused = invoke(load_event("post_image"))
        status, body, _ = answer(refused)
        assert (status, body["error"]["code"]) == (502, "upstream_auth")
        assert emulator.calls_by_status == {401: 2}
        # When the secret is rotated in Secrets Manager (no deployment, no restart)
        secrets.put_secret_value(
            SecretId=stack.resources.secret_name, SecretString=json.dumps({"subscription_key": rotated})
        )
        # Then the next request succeeds with the new key
        accepted = invoke(load_event("post_image"))
        assert accepted["statusCode"] == 201, accepted["body"]
        assert rotated not in accepted["body"] and rotated not in refused["body"]
    finally:
        secrets.put_secret_value(SecretId=stack.resources.secret_name, SecretString=SUBSCRIPTION_KEY)
        emulator.set_api_key(SUBSCRIPTION_KEY)
        invoke(load_event("post_image"))  # re-warm the cache with the original key
    reliability.record(
        "Upstream faults", "401 until the secret is rotated", "502 upstream_auth, then 201 after rotation"
    )
