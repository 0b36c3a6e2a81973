"""The web console's files (``console/``, copied next to this module by the build), as the API serves them.

Served by the API itself (``GET /console/``, EnableConsole): same origin as the API, so no CORS, no public bucket
and no CDN; the image bucket stays private. The page learns where it is from two tags set here: ``<base>`` (the
stage, ``/prod/console/``) and the ``api-base`` meta (``/prod``). Files are read when asked for, never at import.
"""

import html
import re
from functools import lru_cache
from pathlib import Path

CONTENT_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page calls only this API and shows images from their presigned URLs (the bucket's https endpoint).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' https: data:; "
        "base-uri 'self'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_BASE = re.compile(r'<base href="[^"]*">')
_API_BASE = re.compile(r'<meta name="api-base" content="[^"]*">')


@lru_cache(maxsize=1)
def console_folder() -> Path | None:
    """``console/`` in the built artefact (next to this module), or at the top of the source tree (make run)."""
    here = Path(__file__).resolve().parent
    for folder in (here / "console", here.parent.parent / "console"):
        if (folder / "index.html").is_file():
            return folder
    return None


def console_file(name: str, public_prefix: str) -> tuple[str, str] | None:
    """(content type, text) of one of the console's files, or None for any other name. ``public_prefix`` is the
    stage or base path the caller used (``/prod``): the page's links and API calls go through it."""
    folder = console_folder()
    if name not in CONTENT_TYPES or folder is None:
        return None
    text = (folder / name).read_text(encoding="utf-8")
    if name == "index.html":
        base = html.escape(f"{public_prefix}/console/", quote=True)
        text = _BASE.sub(lambda _: f'<base href="{base}">', text, count=1)
        api_base = html.escape(public_prefix, quote=True)
        text = _API_BASE.sub(lambda _: f'<meta name="api-base" content="{api_base}">', text, count=1)
    return CONTENT_TYPES[name], text
