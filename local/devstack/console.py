"""The web console (``console/``) served locally from its own origin, so a browser calls the API cross-origin.

``make run`` serves the API on ``PORT`` and the console on ``CONSOLE_PORT``: a page on another port is another
origin, so the browser preflights every API call (``OPTIONS`` with ``x-api-key``) exactly as it would for a console
hosted apart from the API, and the local stack puts this origin in the API's CORS allow-list. Deployed, the API
itself serves the same files (``GET /console/``, same origin, no CORS needed: docs/console.md).

A static file server for the few files of ``console/`` (listed when it starts: nothing else is reachable, no path
is joined from the request), with the page's ``api-base`` set to the local API's URL. Development tooling only.
"""

from __future__ import annotations

import html
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from devstack.serving import ServerThread, http_url

CONSOLE_DIR = Path(__file__).resolve().parents[2] / "console"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
API_BASE_META = re.compile(r'<meta name="api-base" content="[^"]*">')


def render_index(text: str, api_base: str) -> str:
    """index.html with the API's base URL in its ``api-base`` meta tag."""
    tag = f'<meta name="api-base" content="{html.escape(api_base, quote=True)}">'
    return API_BASE_META.sub(lambda _: tag, text, count=1)


def security_headers(api_origin: str) -> list[tuple[str, str]]:
    """The page may call only the API and show images from anywhere on the web (presigned URLs of the bucket)."""
    policy = (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        f"connect-src 'self' {api_origin}; img-src 'self' http: https: data:; "
        "base-uri 'self'; form-action 'none'; frame-ancestors 'none'"
    )
    return [
        ("Content-Security-Policy", policy),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("Cache-Control", "no-store"),
    ]


class ConsoleServer:
    """``console/`` on ``http://host:port/console/`` (``/`` and ``/console`` redirect there)."""

    def __init__(
        self, *, api_url: str = "", host: str = "127.0.0.1", port: int = 0, folder: Path = CONSOLE_DIR
    ) -> None:
        self.api_url = api_url.rstrip("/")  # set before start() when the API's port is known only then
        self.host = host
        self.port = port
        self.folder = folder
        self.files: dict[str, Path] = {}
        self._serving: ServerThread | None = None

    @property
    def origin(self) -> str:
        """What a browser sends as ``Origin`` from the console: the API's CORS allow-list needs it."""
        return http_url(self.host, self.port)

    @property
    def url(self) -> str:
        return f"{self.origin}/console/"

    def bind(self) -> ConsoleServer:
        """Take the port (``0``: a free one) before the API starts, so its CORS allow-list can name the origin."""
        if self._serving is None:
            self.files = {path.name: path for path in sorted(self.folder.iterdir()) if path.is_file()}
            if "index.html" not in self.files:
                raise FileNotFoundError(f"no index.html in {self.folder}")
            server = ThreadingHTTPServer((self.host, self.port), _Handler)
            server.daemon_threads = True
            server.console = self  # type: ignore[attr-defined]
            self._serving = ServerThread(server, "console")
            self.port = self._serving.port
        return self

    def start(self) -> ConsoleServer:
        self.bind()
        assert self._serving is not None
        self._serving.start()
        return self

    def stop(self) -> None:
        serving, self._serving = self._serving, None
        if serving is not None:
            serving.stop()

    def answer(self, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        """(status, headers, body) for a GET of ``path``."""
        if path in ("/", "/console", "/index.html"):
            return 302, [("Location", "/console/")], b""
        if not path.startswith("/console/"):
            return 404, [("Content-Type", "text/plain; charset=utf-8")], b"not found: the console is at /console/\n"
        name = path.removeprefix("/console/") or "index.html"
        file = self.files.get(name)
        if file is None:
            return 404, [("Content-Type", "text/plain; charset=utf-8")], b"not found\n"
        body = file.read_bytes()
        if name == "index.html":
            body = render_index(body.decode("utf-8"), self.api_url).encode("utf-8")
        content_type = CONTENT_TYPES.get(file.suffix, "application/octet-stream")
        api_origin = "{0.scheme}://{0.netloc}".format(urlsplit(self.api_url))
        return 200, [("Content-Type", content_type), *security_headers(api_origin)], body


class _Handler(BaseHTTPRequestHandler):
    server_version = "devstack-console"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the API gateway logs the calls that matter
        pass

    def _reply(self, include_body: bool) -> None:
        console: ConsoleServer = self.server.console  # type: ignore[attr-defined]
        status, headers, body = console.answer(urlsplit(self.path).path)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if include_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(include_body=True)

    def do_HEAD(self) -> None:
        self._reply(include_body=False)
