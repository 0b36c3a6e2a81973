"""The lifecycle the local servers share (devstack.serving): serve on a free port, stop promptly, close the port,
and end a stand-in in a child process with the process that started it."""

from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from devstack.serving import ServerThread, check_free, http_url
from support.polling import eventually
from support.processes import parent_process, running

LOCAL_DIR = Path(__file__).resolve().parents[2] / "local"


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


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_check_free_refuses_a_port_with_a_listener_and_tries_the_hosts_own_family(host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as listener:
        try:
            listener.bind((host, 0))
        except OSError:
            pytest.skip(f"{host} cannot be bound on this machine")
        listener.listen()
        port = listener.getsockname()[1]
        # Given a port something listens on: it is refused, as a server binding it would be
        with pytest.raises(OSError) as refused:
            check_free(host, port)
        assert not isinstance(refused.value, socket.gaierror)  # the port is taken, not the address misread
    # And once it is closed, the same host and port are free
    check_free(host, port)


# A parent that starts a child in a session of its own (as LocalAws starts moto), prints the child's pid, then
# waits to be killed; the child watches it with exit_with_parent and would otherwise sleep for a minute.
PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-c", "import time; from devstack.serving import exit_with_parent; "
     f"exit_with_parent({os.getpid()}, interval_s=0.05); time.sleep(60)"],
    start_new_session=True,
)
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_child_started_with_exit_with_parent_ends_when_its_parent_is_killed():
    # Given a parent whose child, in a session of its own, watches it
    with parent_process(PARENT, LOCAL_DIR) as (parent, (child, *_)):
        assert running(int(child))
        # When the parent is killed without a chance to stop it
        parent.kill()
        parent.wait(timeout=10)
        # Then the child exits too (it would sleep on for a minute)
        eventually(lambda: not running(int(child)), 10, "the child to exit after its parent")
