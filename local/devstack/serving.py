"""A loopback HTTP server served by a daemon thread: the lifecycle the local stand-ins share.

The local API Gateway, the Flux emulator, the moderation stand-in and the web console each answer HTTP on a port
of their own, from a ``socketserver`` server run by a daemon thread. ``ServerThread`` is that part: serve, stop
promptly (the loop looks for a stop every ``POLL_INTERVAL_S``, not ``serve_forever``'s default 0.5 s, which a test
teardown would wait out), the bound port. ``http_url`` writes a host and port as a URL. ``check_free`` tries a port
before anything is started on it. ``exit_with_parent`` ends a stand-in run in a child process with the process that
started it.

Not here: what each server answers, and what else its stop ends (the emulator's held connections).
"""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time

POLL_INTERVAL_S = 0.05


def check_free(host: str, port: int) -> None:
    """Raise the ``OSError`` a server binding ``host:port`` would meet, without keeping the port. With
    ``SO_REUSEADDR``, as the servers bind: a port left in TIME_WAIT has no owner. An IPv6 host is tried as IPv6."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


class ServerThread:
    """``server`` served by a daemon thread named ``name``, from ``start()`` until ``stop()``."""

    def __init__(self, server: socketserver.TCPServer, name: str) -> None:
        self.server = server
        self._name = name
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the server is bound to (the one the OS picked for port 0)."""
        return int(self.server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL_S},
            name=self._name,
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket; a server bound but never started is closed too. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self.server.shutdown()
        self.server.server_close()
        if thread is not None:
            thread.join(timeout=5)


def http_url(host: str, port: int) -> str:
    """``http://host:port``, with an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# Names the process that started a stand-in in a child process (LocalAws, for moto). moto runs in a session of its
# own, so a stack killed without its stop() (SIGKILL, a test runner's timeout) would leave it listening, and the next
# `make run` would find MOTO_PORT taken.
PARENT_PID_VARIABLE = "DEVSTACK_PARENT_PID"


def exit_with_parent(parent_pid: int, interval_s: float = 0.5) -> threading.Thread:
    """Exit this process once ``parent_pid`` is no longer its parent (the parent died and it was re-parented)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(0)

    watcher = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    watcher.start()
    return watcher
