"""The local web console server (devstack.console) and how the local stack fits it into CORS."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from devstack.console import ConsoleServer, render_index
from devstack.gateway import LocalApiGateway, Route
from devstack.stack import LocalStack


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "index.html").write_text(
        '<head><base href="/console/"><meta name="api-base" content=""></head>', encoding="utf-8"
    )
    (tmp_path / "app.js").write_text("console.log('app')", encoding="utf-8")
    (tmp_path / "style.css").write_text("body {}", encoding="utf-8")
    return tmp_path


def test_index_gets_the_api_base_escaped() -> None:
    page = render_index('<meta name="api-base" content="">', 'http://127.0.0.1:3000/"><script>')
    assert page == '<meta name="api-base" content="http://127.0.0.1:3000/&quot;&gt;&lt;script&gt;">'


@pytest.mark.parametrize(
    ("path", "status", "content_type"),
    [
        ("/console/", 200, "text/html; charset=utf-8"),
        ("/console/index.html", 200, "text/html; charset=utf-8"),
        ("/console/app.js", 200, "text/javascript; charset=utf-8"),
        ("/console/style.css", 200, "text/css; charset=utf-8"),
        ("/console/../template.yaml", 404, "text/plain; charset=utf-8"),
        ("/console/%2e%2e/template.yaml", 404, "text/plain; charset=utf-8"),
        ("/console/missing.js", 404, "text/plain; charset=utf-8"),
        ("/elsewhere", 404, "text/plain; charset=utf-8"),
    ],
)
def test_only_the_console_files_are_served(folder: Path, path: str, status: int, content_type: str) -> None:
    # Given the console server over a folder of three files
    server = ConsoleServer(api_url="http://127.0.0.1:3000/", folder=folder)
    server.files = {file.name: file for file in folder.iterdir()}
    # When a path is asked for
    answer_status, headers, body = server.answer(path)
    # Then only those files come back, with their media type
    assert answer_status == status
    assert dict(headers)["Content-Type"] == content_type
    if path.endswith("/"):
        assert b'<meta name="api-base" content="http://127.0.0.1:3000">' in body


@pytest.mark.parametrize("path", ["/", "/console", "/index.html"])
def test_the_root_redirects_to_the_console(folder: Path, path: str) -> None:
    status, headers, _ = ConsoleServer(folder=folder).answer(path)
    assert (status, dict(headers)["Location"]) == (302, "/console/")


def test_the_page_may_call_only_its_api(folder: Path) -> None:
    server = ConsoleServer(api_url="http://127.0.0.1:3000", folder=folder)
    server.files = {file.name: file for file in folder.iterdir()}
    _, headers, _ = server.answer("/console/")
    policy = dict(headers)["Content-Security-Policy"]
    assert "connect-src 'self' http://127.0.0.1:3000;" in policy
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy


def test_served_over_http_on_a_free_port(folder: Path) -> None:
    server = ConsoleServer(api_url="http://127.0.0.1:3000", folder=folder).start()
    try:
        assert server.port != 0 and server.url == f"http://127.0.0.1:{server.port}/console/"
        response = requests.get(f"{server.origin}/", timeout=5)
        assert response.status_code == 200 and response.url == server.url
        assert requests.head(f"{server.origin}/console/app.js", timeout=5).status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("configured", "expected"),
    [
        ("http://localhost:3000", "{console},http://localhost:3000"),
        ("http://localhost:3000,{console}", "{console},http://localhost:3000"),
        ("", "{console}"),
        ("*", "*"),
    ],
)
def test_the_console_origin_comes_first_in_the_allow_list(configured: str, expected: str) -> None:
    # Given a stack with the console and some configured origins
    stack = LocalStack(port=0, console_port=0)
    assert stack.console is not None
    try:
        origin = stack.console.bind().origin
        env = {"CORS_ALLOWED_ORIGINS": configured.format(console=origin)}
        # When the stack works out CORS
        parameters = stack._console_cors(env)
        # Then the console's origin leads the function's list and the gateway's own answers (the first one)
        assert env["CORS_ALLOWED_ORIGINS"] == expected.format(console=origin) or expected == "*"
        assert parameters == {"CorsAllowedOrigins": expected.format(console=origin)}
    finally:
        stack.console.stop()


def test_the_gateway_redirects_a_configured_path_before_any_route() -> None:
    route = Route(function_id="Fn", method="GET", path="/console", api_key_required=False, handler=None)
    gateway = LocalApiGateway(
        [route],
        {"Fn": lambda event, context: {"statusCode": 200, "body": "function"}},
        api_keys=[],
        port=0,
        redirects={"/console": "http://127.0.0.1:9/console/"},
    ).start()
    try:
        for path in ("/console", "/console/", "/prod/console/"):
            response = requests.get(f"{gateway.url}{path}", allow_redirects=False, timeout=5)
            assert (response.status_code, response.headers["Location"]) == (302, "http://127.0.0.1:9/console/")
        assert requests.post(f"{gateway.url}/console", timeout=5).status_code == 403  # no POST route: as before
    finally:
        gateway.stop()
