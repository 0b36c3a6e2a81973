"""Tests of the local Flux Schnell emulator, over real loopback HTTP with `requests`."""

from __future__ import annotations

import http.client
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from devstack import flux_emulator
from devstack.flux_emulator import FAULT_MODES, FluxEmulator
from support.polling import eventually

API_KEY = "test-key"
AUTH = {"Ocp-Apim-Subscription-Key": API_KEY}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL = {"width": 256, "height": 256}
RATE_LIMIT_BODY = {"error": "Rate limit exceeded, please retry later"}


@pytest.fixture
def flux():
    with FluxEmulator(api_key=API_KEY) as emulator:
        yield emulator


def post(emulator: FluxEmulator, body: Any = None, headers: dict[str, str] | None = None, **kwargs: Any):
    payload = {"prompt": "a cozy mountain cabin", "seed": 15, **SMALL} if body is None else body
    return requests.post(emulator.url, json=payload, headers={**AUTH, **(headers or {})}, timeout=5, **kwargs)


def json_of(response: requests.Response) -> Any:
    assert response.headers["Content-Type"] == "application/json"
    return response.json()


def parse_png(data: bytes) -> tuple[int, int, bytes]:
    """Checks signature, chunk CRCs and layout; returns (width, height, decompressed IDAT)."""
    assert data[:8] == PNG_SIGNATURE
    chunks: list[tuple[bytes, bytes]] = []
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + payload) == crc, f"bad CRC in {kind!r}"
        chunks.append((kind, payload))
        pos += 12 + length
    assert pos == len(data)
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR"
    assert kinds[-1] == b"IEND"
    assert b"IDAT" in kinds
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(payload for kind, payload in chunks if kind == b"IDAT"))
    return width, height, raw


def generate_image(emulator: FluxEmulator, **params: Any) -> bytes:
    response = post(emulator, {"prompt": "a red fox", "seed": 1, **SMALL, **params})
    assert response.status_code == 200
    image = requests.get(json_of(response)["output"], timeout=5)
    assert image.status_code == 200
    return image.content


# ------------------------------------------------------------------------------------ authentication


def test_missing_subscription_key_is_401(flux):
    # Given a running emulator
    # When a generation is requested without the subscription key header
    response = requests.post(flux.url, json={"prompt": "a cat"}, timeout=5)
    # Then the documented 401 body comes back as JSON
    assert response.status_code == 401
    assert json_of(response) == {"error": "Invalid or missing authentication"}


def test_wrong_subscription_key_is_401(flux):
    # Given a running emulator expecting API_KEY
    # When a generation is requested with another key
    response = post(flux, headers={"Ocp-Apim-Subscription-Key": "not-the-key"})
    # Then it is refused with 401
    assert response.status_code == 401
    assert json_of(response) == {"error": "Invalid or missing authentication"}


def test_key_rotation_with_set_api_key(flux):
    # Given a key rotation to a new key, with both keys valid during the overlap
    flux.set_api_key("new-key", API_KEY)
    # When both keys are used
    # Then both are accepted
    assert post(flux).status_code == 200
    assert post(flux, headers={"Ocp-Apim-Subscription-Key": "new-key"}).status_code == 200
    # When the old key is retired
    flux.set_api_key("new-key")
    # Then only the new key works
    assert post(flux).status_code == 401
    assert post(flux, headers={"Ocp-Apim-Subscription-Key": "new-key"}).status_code == 200


# ---------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("body", "expected_error"),
    [
        ({}, "Invalid prompt parameter"),
        ({"prompt": ""}, "Invalid prompt parameter"),
        ({"prompt": "   "}, "Invalid prompt parameter"),
        ({"prompt": 42}, "Invalid prompt parameter"),
        ({"prompt": None}, "Invalid prompt parameter"),
        ({"prompt": "x", "num_steps": 0}, "num_steps"),
        ({"prompt": "x", "num_steps": 9}, "num_steps"),
        ({"prompt": "x", "num_steps": "4"}, "num_steps"),
        ({"prompt": "x", "num_steps": 4.0}, "num_steps"),
        ({"prompt": "x", "num_steps": True}, "num_steps"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "seed": "15"}, "seed"),
        ({"prompt": "x", "seed": 1.5}, "seed"),
        ({"prompt": "x", "width": 240}, "width"),
        ({"prompt": "x", "width": 2064}, "width"),
        ({"prompt": "x", "width": 500}, "width"),
        ({"prompt": "x", "width": "512"}, "width"),
        ({"prompt": "x", "height": 240}, "height"),
        ({"prompt": "x", "height": 4096}, "height"),
        ({"prompt": "x", "height": 520}, "height"),
        ({"prompt": "x", "height": None}, "height"),
        (["prompt", "x"], "JSON object"),
        ("a cat", "JSON object"),
    ],
)
def test_invalid_parameters_are_400(flux, body, expected_error):
    # Given a running emulator
    # When a generation is requested with an invalid body
    response = post(flux, body)
    # Then it is refused with 400 and a message naming the problem
    assert response.status_code == 400
    error = json_of(response)["error"]
    assert expected_error in error
    assert flux.calls_by_status == {400: 1}


def test_body_that_is_not_json_is_400(flux):
    # Given a running emulator
    # When the body is not JSON at all
    response = requests.post(
        flux.url, data=b"{prompt: nope", headers={**AUTH, "Content-Type": "application/json"}, timeout=5
    )
    # Then it is a 400
    assert response.status_code == 400
    assert "JSON" in json_of(response)["error"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_content_type_other_than_json_is_400(flux, content_type):
    # Given a valid JSON body
    headers = dict(AUTH)
    if content_type:
        headers["Content-Type"] = content_type
    # When it is sent with another (or no) Content-Type
    response = requests.post(flux.url, data=b'{"prompt": "a cat"}', headers=headers, timeout=5)
    # Then it is a 400 that says which Content-Type is expected
    assert response.status_code == 400
    assert "application/json" in json_of(response)["error"]


def test_content_type_with_charset_is_accepted(flux):
    # Given a JSON body labelled with a charset parameter
    headers = {**AUTH, "Content-Type": "application/json; charset=utf-8"}
    # When it is sent
    response = requests.post(flux.url, data=b'{"prompt": "a cat", "width": 256, "height": 256}', headers=headers)
    # Then it is accepted
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/flux-1-schnell/v1/other"),
        ("GET", "/flux-1-schnell/v1/getData"),
        ("PUT", "/flux-1-schnell/v1/getData"),
        ("DELETE", "/flux-1-schnell/v1/getData"),
        ("GET", "/"),
    ],
)
def test_other_paths_and_methods_are_404(flux, method, path):
    # Given a running emulator
    # When anything else than POST on the generation endpoint is requested
    response = requests.request(method, flux.base_url + path, json={"prompt": "x"}, headers=AUTH, timeout=5)
    # Then the documented 404 comes back and no generation is counted
    assert response.status_code == 404
    assert json_of(response) == {"error": "Endpoint not found"}
    assert flux.calls == 0


# --------------------------------------------------------------------------------------- generation


def test_success_returns_output_url_to_a_valid_png_of_requested_size(flux):
    # Given a running emulator
    # When a valid generation is requested
    response = post(flux, {"prompt": "a cozy mountain cabin", "seed": 15, "width": 512, "height": 768})
    # Then a 200 with an output URL under the emulator's base URL comes back
    assert response.status_code == 200
    output = json_of(response)["output"]
    assert output.startswith(flux.base_url + "/images/")
    assert output.endswith(".png")
    # And the URL serves a real PNG of exactly the requested size
    image = requests.get(output, timeout=5)
    assert image.status_code == 200
    assert image.headers["Content-Type"] == "image/png"
    assert int(image.headers["Content-Length"]) == len(image.content)
    width, height, raw = parse_png(image.content)
    assert (width, height) == (512, 768)
    assert len(raw) == height * (1 + 3 * width)
    assert all(raw[row * (1 + 3 * width)] == 0 for row in range(height))  # filter bytes


def test_defaults_are_1024_square(flux):
    # Given a request with only a prompt
    # When it is generated
    response = post(flux, {"prompt": "defaults"})
    # Then the image is 1024x1024 (the documented default)
    image = requests.get(json_of(response)["output"], timeout=5)
    assert parse_png(image.content)[:2] == (1024, 1024)


def test_largest_image_is_a_valid_png_of_that_size(flux):
    # Given the largest allowed size (how fast it renders is measured by benchmarks/emulator_render.py)
    # When it is generated and downloaded
    content = generate_image(flux, width=2048, height=2048)
    # Then it is a valid 2048x2048 PNG
    width, height, raw = parse_png(content)
    assert (width, height) == (2048, 2048)
    assert len(raw) == 2048 * (1 + 3 * 2048)


def test_same_parameters_give_same_bytes_and_other_seed_differs(flux):
    # Given two identical requests and one with another seed
    first = generate_image(flux, seed=7)
    second = generate_image(flux, seed=7)
    other_seed = generate_image(flux, seed=8)
    other_steps = generate_image(flux, seed=7, num_steps=2)
    # Then identical parameters give identical bytes, any change gives other bytes
    assert first == second
    assert first != other_seed
    assert first != other_steps


def test_public_base_url_overrides_output_host():
    # Given an emulator announcing a public base URL (e.g. reachable from a container)
    with FluxEmulator(api_key=API_KEY, public_base_url="http://host.docker.internal:9999/") as emulator:
        # When an image is generated
        response = post(emulator)
        # Then the output URL uses that base, with the same image path
        output = json_of(response)["output"]
        assert output.startswith("http://host.docker.internal:9999/images/")
        local = emulator.base_url + output.removeprefix("http://host.docker.internal:9999")
        assert parse_png(requests.get(local, timeout=5).content)[:2] == (256, 256)


def test_unknown_image_is_404(flux):
    # Given a running emulator
    # When an image that was never generated is requested
    response = requests.get(flux.base_url + "/images/prompt-doesnotexist.png", timeout=5)
    # Then it is a 404 and not counted as a download
    assert response.status_code == 404
    assert flux.image_downloads == 0


def test_image_store_is_a_bounded_lru(flux, monkeypatch):
    # Given an image store limited to two images
    monkeypatch.setattr(flux_emulator, "IMAGE_CACHE_SIZE", 2)
    urls = [json_of(post(flux, {"prompt": f"image {i}", "seed": 1, **SMALL}))["output"] for i in range(3)]
    # When a third image is generated
    statuses = [requests.get(url, timeout=5).status_code for url in urls]
    # Then the oldest one is evicted
    assert statuses == [404, 200, 200]


def test_latency_and_per_request_override(flux):
    # Given an emulator with 0.3 s of latency
    flux.set_latency(0.3)
    # When a generation is requested
    started = time.monotonic()
    assert post(flux).status_code == 200
    # Then it took at least the latency
    assert time.monotonic() - started >= 0.3
    # And given a latency of 10 minutes, a request overriding it to 0 with the header
    flux.set_latency(600)
    response = requests.post(
        flux.url,
        json={"prompt": "a cozy mountain cabin", "seed": 15, **SMALL},
        headers={**AUTH, "X-Emulator-Latency": "0"},
        timeout=(5, 60),
    )
    # Then it is answered without the configured latency (else the 60 s read timeout would fire first)
    assert response.status_code == 200
    assert "output" in json_of(response)


def test_a_generation_is_drawn_within_its_latency(flux, monkeypatch):
    # Given an emulator with 5 s of latency whose drawing takes 0.2 s, and whose waits are recorded, not slept
    flux.set_latency(5)
    draw = flux_emulator.render_png

    def slow_draw(**params: Any) -> bytes:
        time.sleep(0.2)
        return draw(**params)

    monkeypatch.setattr(flux_emulator, "render_png", slow_draw)
    waits: list[float] = []
    monkeypatch.setattr(flux, "_sleep", lambda seconds: waits.append(seconds) or True)
    # When a generation is requested
    assert post(flux).status_code == 200
    # Then it waits the latency less the drawing: the answer leaves 5 s after the request arrived, not 5.2 s (the
    # lower bound only says it did wait: a busy machine may add to the drawing's 0.2 s, never take from it)
    assert len(waits) == 1
    assert 2.5 < waits[0] <= 4.8


def test_concurrency_limit_gives_429_when_exceeded():
    # Given an emulator accepting 2 generations in flight, each taking 3 s (long enough for all five requests to
    # overlap even on a loaded machine)
    with FluxEmulator(api_key=API_KEY, latency_s=3.0, concurrency_limit=2) as emulator:
        barrier = threading.Barrier(5)
        results: list[requests.Response] = []
        lock = threading.Lock()

        def worker(index: int) -> None:
            barrier.wait(timeout=5)
            response = post(emulator, {"prompt": f"p{index}", "seed": index, **SMALL})
            with lock:
                results.append(response)

        # When 5 generations are requested at the same time
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        # Then 2 succeed and 3 are rate limited with the documented body and Retry-After: 1
        statuses = Counter(response.status_code for response in results)
        assert statuses == {200: 2, 429: 3}
        for response in results:
            if response.status_code == 429:
                assert json_of(response) == RATE_LIMIT_BODY
                assert response.headers["Retry-After"] == "1"
        assert emulator.max_in_flight == 2
        assert emulator.in_flight == 0


# ------------------------------------------------------------------------------------ simple faults


@pytest.mark.parametrize(
    ("mode", "params", "status", "body", "headers"),
    [
        ("rate_limit", {}, 429, RATE_LIMIT_BODY, {"Retry-After": "1"}),
        ("rate_limit", {"retry_after": 7}, 429, RATE_LIMIT_BODY, {"Retry-After": "7"}),
        ("rate_limit_no_retry_after", {}, 429, RATE_LIMIT_BODY, {"Retry-After": None}),
        (
            "apim_rate_limit",
            {},
            429,
            {"statusCode": 429, "message": "Rate limit is exceeded. Try again in 2 seconds."},
            {"Retry-After": "2"},
        ),
        (
            "apim_unauthorized",
            {},
            401,
            {
                "statusCode": 401,
                "message": "Access denied due to invalid subscription key. "
                "Make sure to provide a valid key for an active subscription.",
            },
            {},
        ),
        (
            "quota_exhausted",
            {},
            403,
            {"statusCode": 403, "message": "Out of call volume quota. Quota will be replenished in 00:10:00."},
            {},
        ),
        ("forbidden", {}, 403, {"error": "Access denied for this operation"}, {}),
        (
            "server_error",
            {},
            500,
            {"error": "An unexpected error occurred, please try again later"},
            {},
        ),
        ("unavailable", {}, 503, None, {"Retry-After": None}),
        ("unavailable", {"retry_after": 5}, 503, None, {"Retry-After": "5"}),
        ("no_output", {}, 200, {"msg": "Image Getting Created"}, {}),
        (
            "output_custom",
            {"url": "https://169.254.169.254/latest/meta-data/x.png"},
            200,
            {"output": "https://169.254.169.254/latest/meta-data/x.png"},
            {},
        ),
    ],
)
def test_injected_json_faults(flux, mode, params, status, body, headers):
    # Given a fault queued for the next generation
    flux.inject(mode, **params)
    # When a valid generation is requested
    response = post(flux)
    # Then the fault's status, JSON body and headers come back
    assert response.status_code == status
    payload = json_of(response)
    if body is not None:
        assert payload == body
    else:
        assert "error" in payload
    for name, value in headers.items():
        assert response.headers.get(name) == value
    # And the fault was consumed: the next request succeeds
    assert post(flux).status_code == 200
    expected_statuses = Counter({status: 1}) + Counter({200: 1})
    assert flux.calls_by_status == dict(expected_statuses)


def test_bad_gateway_fault_answers_html(flux):
    # Given a bad_gateway fault queued
    flux.inject("bad_gateway")
    # When a generation is requested
    response = post(flux)
    # Then a 502 with an HTML (not JSON) body comes back
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text.startswith("<html>")


def test_fault_from_request_header_with_parameters(flux):
    # Given a fault queued programmatically
    flux.inject("server_error")
    # When a request carries its own fault header with a parameter
    response = post(flux, headers={"X-Emulator-Fault": "rate_limit; retry_after=3"})
    # Then the header fault applies, and the queued fault is left for the next request
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert flux.pending_faults == [("server_error", 1)]
    assert post(flux).status_code == 500


def test_unknown_fault_header_is_400_and_unknown_inject_raises(flux):
    # Given a request with a fault header naming no known mode
    response = post(flux, headers={"X-Emulator-Fault": "meteor_strike"})
    # Then it is a 400
    assert response.status_code == 400
    assert "meteor_strike" in json_of(response)["error"]
    # And injecting an unknown mode (or a bad count) raises
    with pytest.raises(ValueError, match="unknown fault mode"):
        flux.inject("meteor_strike")
    with pytest.raises(ValueError, match="count"):
        flux.inject("rate_limit", count=0)


def test_faults_are_fifo_with_counts_and_can_be_persistent_or_cleared(flux):
    # Given two rate limits then a server error queued, then a persistent 503
    flux.inject("rate_limit", count=2)
    flux.inject("server_error")
    flux.inject("unavailable", count=None)
    # When six generations are requested
    statuses = [post(flux).status_code for _ in range(6)]
    # Then the faults apply in order, the persistent one repeating
    assert statuses == [429, 429, 500, 503, 503, 503]
    assert flux.pending_faults == [("unavailable", None)]
    # And once cleared, generations succeed again
    flux.clear_faults()
    assert post(flux).status_code == 200
    assert flux.pending_faults == []


def test_all_documented_fault_modes_exist():
    # Given the fault modes the team relies on
    expected = {
        "rate_limit",
        "rate_limit_no_retry_after",
        "apim_rate_limit",
        "apim_unauthorized",
        "quota_exhausted",
        "forbidden",
        "bad_request",
        "server_error",
        "bad_gateway",
        "unavailable",
        "timeout",
        "drip",
        "no_output",
        "output_http",
        "output_custom",
        "not_image",
        "truncated",
        "oversized",
        "redirect",
        "disconnect",
    }
    # Then the emulator knows exactly those
    assert expected == FAULT_MODES


# ---------------------------------------------------------------------------------- transport faults


def test_timeout_fault_makes_client_read_timeout_fire(flux):
    # Given a timeout fault delaying the answer by 60 s
    flux.inject("timeout", delay_s=60)
    started = time.monotonic()
    # When the client waits at most 0.5 s for the answer
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(flux.url, json={"prompt": "slow", **SMALL}, headers=AUTH, timeout=(2, 0.5))
    # Then its read timeout fired, long before the delay elapsed (the bound only tells the two apart)
    assert time.monotonic() - started < 30


def test_timeout_fault_answers_normally_after_the_delay(flux):
    # Given a short timeout fault
    flux.inject("timeout", delay_s=0.3)
    started = time.monotonic()
    # When the client is patient
    response = post(flux)
    # Then the normal answer comes after the delay
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_drip_fault_sends_headers_then_body_byte_by_byte(flux):
    # Given a drip fault sending one byte a second: the whole body takes well over a minute
    flux.inject("drip", interval_s=1.0)
    # When the generation is requested, streaming the answer
    with requests.post(
        flux.url, json={"prompt": "a cozy mountain cabin", **SMALL}, headers=AUTH, timeout=(5, 30), stream=True
    ) as response:
        # Then the status line and headers arrive while the body is still dripping (if the emulator held them back
        # until the body was sent, the 30 s read timeout would fire first)
        assert response.status_code == 200
        assert int(response.headers["Content-Length"]) > 60
    # And given a faster drip, one byte every 20 ms
    flux.inject("drip", interval_s=0.02)
    started = time.monotonic()
    response = post(flux, stream=True)
    body = response.raw.read()
    total = time.monotonic() - started
    # Then the body is the normal answer, whole, and came no faster than one byte per interval
    assert response.status_code == 200
    assert len(body) == int(response.headers["Content-Length"])
    assert total >= len(body) * 0.02 * 0.9
    assert body.startswith(b'{"output": "http://')


def test_drip_fault_defeats_a_per_read_timeout(flux):
    # Given a drip fault: each byte comes well within a 0.5 s per-read timeout
    flux.inject("drip", interval_s=0.01)
    started = time.monotonic()
    # When the client only sets a per-read timeout
    response = requests.post(flux.url, json={"prompt": "x", **SMALL}, headers=AUTH, timeout=(2, 0.5))
    # Then no timeout fires although the whole answer takes longer than 0.5 s
    assert time.monotonic() - started > 0.5
    assert response.status_code == 200
    assert "output" in json_of(response)


def test_disconnect_fault_closes_without_answer(flux):
    # Given a disconnect fault
    flux.inject("disconnect")
    # When a generation is requested
    # Then the connection is closed without any HTTP answer
    with pytest.raises(requests.exceptions.ConnectionError):
        post(flux)
    assert flux.calls_by_status == {0: 1}
    # And the emulator keeps serving
    assert post(flux).status_code == 200


def test_stop_interrupts_a_pending_timeout_fault():
    # Given a generation stuck in a 60 s timeout fault
    emulator = FluxEmulator(api_key=API_KEY).start()
    emulator.inject("timeout", delay_s=60)
    outcome: list[BaseException | int] = []

    def call() -> None:
        try:
            # patient enough to get the fault's late answer, were the stop not to cut it short
            response = requests.post(flux_url, json={"prompt": "stuck", **SMALL}, headers=AUTH, timeout=(10, 90))
            outcome.append(response.status_code)
        except requests.RequestException as exc:
            outcome.append(exc)

    flux_url = emulator.url
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    eventually(lambda: emulator.calls, 30, "the request to reach the emulator", interval_s=0.01)
    assert emulator.calls == 1
    # When the emulator is stopped
    started = time.monotonic()
    emulator.stop()
    thread.join(timeout=30)
    # Then it stops without waiting for the fault's delay (the bound only tells the two apart) and the client sees
    # a closed connection
    assert time.monotonic() - started < 30
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], requests.exceptions.ConnectionError)


# ------------------------------------------------------------------------------- output URL faults


def test_output_http_fault_gives_plain_http_url_to_a_real_image():
    # Given an emulator announcing https output URLs (e.g. behind a TLS proxy)
    with FluxEmulator(api_key=API_KEY, public_base_url="https://images.example.test") as emulator:
        emulator.inject("output_http")
        # When a generation is requested
        response = post(emulator)
        # Then the output URL has the http scheme
        output = json_of(response)["output"]
        assert output.startswith("http://images.example.test/images/")
        # And its path serves the image the request asked for
        local = emulator.base_url + output.removeprefix("http://images.example.test")
        assert parse_png(requests.get(local, timeout=5).content)[:2] == (256, 256)


def test_not_image_fault_serves_html(flux):
    # Given a not_image fault
    flux.inject("not_image")
    # When the output URL is downloaded
    output = json_of(post(flux))["output"]
    download = requests.get(output, timeout=5)
    # Then it is HTML, not a PNG
    assert download.status_code == 200
    assert download.headers["Content-Type"].startswith("text/html")
    assert download.content.startswith(b"<html>")
    assert flux.image_downloads == 1


def test_truncated_fault_sends_less_than_content_length(flux):
    # Given a truncated fault
    flux.inject("truncated")
    output = json_of(post(flux))["output"]
    # When the image is downloaded with a bare HTTP client
    parts = urlsplit(output)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        connection.request("GET", parts.path)
        raw_response = connection.getresponse()
        declared = int(raw_response.headers["Content-Length"])
        with pytest.raises(http.client.IncompleteRead) as incomplete:
            raw_response.read()
    finally:
        connection.close()
    received = incomplete.value.partial
    # Then fewer bytes than declared arrive, starting like a PNG
    assert raw_response.headers["Content-Type"] == "image/png"
    assert received.startswith(PNG_SIGNATURE)
    assert 0 < len(received) < declared
    # And a normal download fails
    flux.inject("truncated")
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(json_of(post(flux))["output"], timeout=5)


def test_oversized_fault_streams_requested_size(flux):
    # Given an oversized fault of 5 MiB
    flux.inject("oversized", size=5 << 20)
    output = json_of(post(flux))["output"]
    # When the image is downloaded in chunks
    response = requests.get(output, stream=True, timeout=5)
    first = b""
    total = 0
    for chunk in response.iter_content(64 << 10):
        first = first or chunk
        total += len(chunk)
    # Then it starts with a valid PNG signature and IHDR, and has exactly the declared length
    assert first.startswith(PNG_SIGNATURE + struct.pack(">I", 13) + b"IHDR")
    assert total == int(response.headers["Content-Length"])
    assert total > 5 << 20


def test_oversized_fault_default_is_64_mib_and_client_can_stop_early(flux):
    # Given an oversized fault with the default size
    flux.inject("oversized")
    output = json_of(post(flux))["output"]
    # When a client reads only the first 1 MiB and gives up
    response = requests.get(output, stream=True, timeout=5)
    read = 0
    for chunk in response.iter_content(64 << 10):
        read += len(chunk)
        if read >= 1 << 20:
            break
    response.close()
    # Then the declared length is over 64 MiB, and the emulator still serves afterwards
    assert int(response.headers["Content-Length"]) > 64 << 20
    assert post(flux).status_code == 200


def test_oversized_fault_without_content_length(flux):
    # Given an oversized fault that does not declare its length
    flux.inject("oversized", size=1 << 20, declare_length=False)
    output = json_of(post(flux))["output"]
    # When the image is downloaded
    response = requests.get(output, timeout=5)
    # Then there is no Content-Length and the body ends with the connection
    assert "Content-Length" not in response.headers
    assert len(response.content) > 1 << 20


def test_redirect_fault_answers_302_with_location(flux):
    # Given a redirect fault towards a private address
    flux.inject("redirect", location="http://10.0.0.1/secret.png")
    output = json_of(post(flux))["output"]
    # When the output URL is requested without following redirects
    response = requests.get(output, allow_redirects=False, timeout=5)
    # Then it is a 302 to that location
    assert response.status_code == 302
    assert response.headers["Location"] == "http://10.0.0.1/secret.png"


def test_redirect_fault_default_location_is_a_real_image(flux):
    # Given a redirect fault without a location
    flux.inject("redirect")
    output = json_of(post(flux))["output"]
    # When the client follows the redirect
    response = requests.get(output, timeout=5)
    # Then it ends on a real PNG
    assert response.history[0].status_code == 302
    assert parse_png(response.content)[:2] == (256, 256)


# ------------------------------------------------------------------------------ counters & logging


def test_counters_and_received_requests(flux):
    # Given a few generations: one success, one 401, one injected 500
    assert post(flux).status_code == 200
    assert post(flux, headers={"Ocp-Apim-Subscription-Key": "bad"}).status_code == 401
    flux.inject("server_error")
    assert post(flux).status_code == 500
    # When the success's image is downloaded twice
    first_request = flux.received[0]
    url = json_of(post(flux))["output"]
    requests.get(url, timeout=5)
    requests.get(url, timeout=5)
    # Then the counters reflect it
    assert flux.calls == 4
    assert flux.calls_by_status == {200: 2, 401: 1, 500: 1}
    assert flux.image_downloads == 2
    # And the received requests keep headers and body for assertions
    assert first_request.headers["Ocp-Apim-Subscription-Key"] == API_KEY
    assert first_request.json()["prompt"] == "a cozy mountain cabin"
    # And counters can be reset
    flux.reset_counters()
    assert (flux.calls, flux.calls_by_status, flux.image_downloads, flux.received) == (0, {}, 0, [])


def test_counters_are_thread_safe_under_parallel_load(flux):
    # Given 8 threads each making 5 generations
    def worker() -> None:
        for i in range(5):
            post(flux, {"prompt": f"load {i}", "seed": i, **SMALL})

    threads = [threading.Thread(target=worker) for _ in range(8)]
    # When they run in parallel
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    # Then every call is counted exactly once
    assert flux.calls == 40
    assert flux.calls_by_status == {200: 40}


def test_request_bodies_are_never_logged(flux, caplog):
    # Given logging captured at DEBUG for the emulator
    caplog.set_level(logging.DEBUG, logger="devstack.flux_emulator")
    secret_prompt = "my very secret prompt 8c1f"
    # When a generation with that prompt is made
    assert post(flux, {"prompt": secret_prompt, **SMALL}).status_code == 200
    # Then neither the prompt nor the key appears in any log record, and nothing is logged at INFO
    assert secret_prompt not in caplog.text
    assert API_KEY not in caplog.text
    assert all(record.levelno < logging.INFO for record in caplog.records)


def test_cli_serves_until_interrupted():
    # Given the emulator started from the command line on a free port
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "local")}
    with subprocess.Popen(
        [sys.executable, "-m", "devstack.flux_emulator", "--port", "0", "--api-key", "cli-key"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        # Ctrl-C as in a terminal even when the suite itself runs in the background (`make test &`, a CI runner):
        # a shell starts background jobs with SIGINT ignored, and a Python started so never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as process:
        try:
            assert process.stdout is not None
            first_line = process.stdout.readline()
            # When its printed URL is called with the key
            url = first_line.split("Flux emulator: ", 1)[1].strip()
            response = requests.post(
                url,
                json={"prompt": "cli", **SMALL},
                headers={"Ocp-Apim-Subscription-Key": "cli-key"},
                timeout=5,
            )
            # Then it answers like the in-process emulator
            assert url.endswith("/flux-1-schnell/v1/getData")
            assert response.status_code == 200
        finally:
            # And Ctrl-C stops it cleanly (the bound only catches a hang: a loaded machine can take seconds)
            process.send_signal(signal.SIGINT)
            try:
                assert process.wait(timeout=60) == 0
            finally:
                if process.poll() is None:
                    process.kill()  # a hang fails the assertion above, not the session's timeout


def test_fault_bad_request_answers_the_documented_400_body(flux):
    # Given an emulator told to refuse the next request's parameters
    flux.inject("bad_request", message="Invalid prompt parameter")
    # When a valid request arrives
    response = post(flux)
    # Then it answers 400 with the documented error shape, once
    assert response.status_code == 400
    assert json_of(response) == {"error": "Invalid prompt parameter"}
    assert post(flux).status_code == 200
