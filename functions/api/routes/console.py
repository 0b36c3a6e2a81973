"""The web console (``EnableConsole``): ``GET /console/`` and its files, a static page with no API key (it asks
for one). Not in the OpenAPI document: it is no part of the API's contract, like ``/docs``.

Not here: the files and their security headers (``console_assets``, which loads only when the console is asked
for), the console itself (``console/``).
"""

import api_support
from api_support import public_link
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.exceptions import NotFoundError

router = Router()


@router.get("/console", include_in_schema=False)  # /console/ too: Powertools matches either
def console_page():
    return _console_answer("index.html")


@router.get("/console/<name>", include_in_schema=False)
def console_asset(name: str):
    return _console_answer(name)


def _console_answer(name: str) -> Response:
    from console_assets import SECURITY_HEADERS, console_file

    found = console_file(name, public_link(router, "")) if api_support.http_settings.enable_console else None
    if found is None:
        raise NotFoundError()
    content_type, body = found
    return Response(status_code=200, content_type=content_type, body=body, headers=dict(SECURITY_HEADERS))
