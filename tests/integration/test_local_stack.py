"""The local stack over real HTTP, as a developer uses it (`make run`)."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from support.secrets_under_test import API_KEY, ORIGIN

ROOT = Path(__file__).resolve().parents[2]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_stack_generates_an_image_the_url_downloads(stack, emulator):
    # Given the running stack and its API key
    # When a client asks for a 768×512 image
    response = requests.post(
        f"{stack.url}/v1/images",
        json={"prompt": "a lighthouse in a storm", "width": 768, "height": 512},
        headers={"x-api-key": API_KEY},
        timeout=30,
    )
    # Then it gets 201 and a URL that downloads a PNG of that size
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/v1/images/{response.json()['id']}"
    image = requests.get(response.json()["image"]["url"], timeout=10)
    assert image.status_code == 200
    assert png_size(image.content) == (768, 512)

    # And the image can be fetched again by id
    again = requests.get(f"{stack.url}{response.headers['Location']}", headers={"x-api-key": API_KEY}, timeout=10)
    assert again.status_code == 200
    assert again.json()["image"]["sha256"] == response.json()["image"]["sha256"]


def test_stack_refuses_requests_without_the_api_key(stack, emulator):
    for headers in ({}, {"x-api-key": "wrong"}):
        response = requests.post(f"{stack.url}/v1/images", json={"prompt": "x"}, headers=headers, timeout=10)
        assert response.status_code == 403
        # API Gateway's INVALID_API_KEY answer, in the service's error shape (template GatewayResponses)
        assert response.json()["error"]["code"] == "invalid_api_key"
        got = requests.get(f"{stack.url}/v1/images/img_{'0' * 32}", headers=headers, timeout=10)
        assert got.status_code == 403
    assert emulator.calls == 0


def test_stack_422_names_the_field(stack):
    response = requests.post(
        f"{stack.url}/v1/images",
        json={"prompt": "x", "width": 1000},
        headers={"x-api-key": API_KEY},
        timeout=10,
    )
    assert response.status_code == 422
    details = response.json()["error"]["details"]
    assert [detail["field"] for detail in details] == ["width"]
    assert "multiple of 16" in details[0]["message"]


def test_stack_serves_docs_and_spec_without_a_key(stack):
    docs = requests.get(f"{stack.url}/docs", timeout=10)
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    spec = requests.get(f"{stack.url}/openapi.json", timeout=10)
    assert spec.status_code == 200
    assert "/v1/images" in spec.json()["paths"]


def test_stack_answers_browser_preflight(stack):
    response = requests.options(
        f"{stack.url}/v1/images",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-api-key",
        },
        timeout=10,
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "x-api-key" in response.headers["Access-Control-Allow-Headers"].lower()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_make_run_entry_point_starts_prints_a_curl_and_stops_on_ctrl_c():
    # Given the command `make run` executes, on free ports
    port = _free_port()
    inherited = ("PATH", "HOME", "LANG", "SYSTEMROOT", "TMPDIR")  # not the session stack's service variables
    env = {
        **{name: os.environ[name] for name in inherited if name in os.environ},
        "PYTHONPATH": os.pathsep.join(str(ROOT / part) for part in ("layers/shared", "functions/api", "local")),
        "PORT": str(port),
        "MOTO_PORT": str(_free_port()),
        "FLUX_EMULATOR_PORT": str(_free_port()),
        "LOCAL_API_KEY": "entry-point-key",
        "FLUX_EMULATOR_LATENCY": "0",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pump: threading.Thread | None = None
    try:
        # Its output is drained by a thread (reads block; a full pipe would stall the child), so waits can time out
        lines, pump = _pump_lines(process)
        # When it is up
        banner = _read_until(lines, "Ctrl-C", timeout_s=60)
        text = "".join(banner)
        # Then it printed a ready-to-paste curl with the key, and the API answers
        assert f"http://127.0.0.1:{port}/v1/images" in text, text
        assert "x-api-key: entry-point-key" in text, text
        response = requests.post(
            f"http://127.0.0.1:{port}/v1/images",
            json={"prompt": "entry point", "width": 256, "height": 256},
            headers={"x-api-key": "entry-point-key"},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        # And Ctrl-C stops it cleanly
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            raise AssertionError("`make run` did not stop within 20 s of Ctrl-C") from None
    finally:
        # Whatever happened above (a timeout included), the child does not outlive the test
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        if pump is not None:
            pump.join(timeout=10)  # the child is gone: its output ends
        if pump is None or not pump.is_alive():  # closing under a blocked reader would block too
            process.stdout.close()
    assert code == 0


def _pump_lines(process: subprocess.Popen[str]) -> tuple[queue.Queue[str | None], threading.Thread]:
    """A queue receiving the child's output lines from a daemon thread (returned too), then None at end of output."""
    stdout = process.stdout
    assert stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        try:
            for line in stdout:
                lines.put(line)
        except (OSError, ValueError):
            pass  # the pipe was closed under us: the test is over
        finally:
            lines.put(None)

    thread = threading.Thread(target=pump, name="devstack-output", daemon=True)
    thread.start()
    return lines, thread


def _read_until(lines: queue.Queue[str | None], marker: str, *, timeout_s: float) -> list[str]:
    """The lines up to the first containing ``marker``; fails when the output ends or ``timeout_s`` passes first."""
    read: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(0.0, remaining))
        except queue.Empty:
            raise AssertionError(f"no {marker!r} within {timeout_s:.0f} s; output so far:\n{''.join(read)}") from None
        if line is None:
            raise AssertionError(f"output ended before {marker!r}; output:\n{''.join(read)}")
        read.append(line)
        if marker in line:
            return read
