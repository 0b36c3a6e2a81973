"""The lifecycle the local servers share (devstack.serving): serve on a free port, stop promptly, close the port."""

from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from devstack.serving import ServerThread, http_url


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


def _refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_server_thread_serves_on_the_port_it_bound_then_stops_and_frees_it():
    # Given a server on port 0, served by its thread
    serving = ServerThread(ThreadingHTTPServer(("127.0.0.1", 0), Hello), "hello")
    serving.start()
    # When it is asked, then it answers on the port it reports
    assert requests.get(f"{http_url('127.0.0.1', serving.port)}/", timeout=5).text == "hello"
    # When it is stopped (twice: idempotent), then the port is closed
    port = serving.port
    serving.stop()
    serving.stop()
    assert _refused(port)


def test_a_server_bound_but_never_started_is_closed_by_stop():
    serving = ServerThread(ThreadingHTTPServer(("127.0.0.1", 0), Hello), "never-started")
    port = serving.port
    serving.stop()  # no serve loop to end: returns at once
    assert _refused(port)


@pytest.mark.parametrize(
    ("host", "url"),
    [("127.0.0.1", "http://127.0.0.1:3000"), ("::1", "http://[::1]:3000"), ("localhost", "http://localhost:3000")],
)
def test_http_url_brackets_an_ipv6_host(host, url):
    assert http_url(host, 3000) == url
