"""The web console as the deployed API serves it (GET /console/, EnableConsole): the real handler, a REST event."""

from __future__ import annotations

import copy
import importlib
from typing import Any

import pytest
from imagegen.settings import HttpSettings
from support.events import load_event


def console_event(path: str, resource: str, path_parameters: dict[str, str] | None = None) -> dict[str, Any]:
    event = copy.deepcopy(load_event("get_openapi"))
    event.update(resource=resource, path=path, pathParameters=path_parameters)
    event["requestContext"].update(path=f"/prod{path}", resourcePath=resource)
    return event


def header(response: dict[str, Any], name: str) -> str | None:
    values = {key.lower(): value for key, value in (response.get("multiValueHeaders") or {}).items()}
    found = values.get(name.lower())
    return found[-1] if found else (response.get("headers") or {}).get(name)


@pytest.mark.parametrize("path", ["/console", "/console/"])
def test_handler_200_console_page_behind_the_stage(invoke, path):
    # Given GET /console (or /console/) through the prod stage
    # When the API function answers
    response = invoke(console_event(path, "/console"))
    # Then it is the console's page, its links and API calls set to go through the stage
    assert response["statusCode"] == 200, response["body"]
    assert header(response, "Content-Type").startswith("text/html")
    assert '<base href="/prod/console/">' in response["body"]
    assert '<meta name="api-base" content="/prod">' in response["body"]
    policy = header(response, "Content-Security-Policy")
    assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert header(response, "X-Content-Type-Options") == "nosniff"


@pytest.mark.parametrize(
    ("name", "media_type", "marker"),
    [("app.js", "text/javascript", "sessionStorage"), ("style.css", "text/css", ".gallery")],
)
def test_handler_200_console_files(invoke, name, media_type, marker):
    response = invoke(console_event(f"/console/{name}", "/console/{file}", {"file": name}))
    assert response["statusCode"] == 200
    assert header(response, "Content-Type").startswith(media_type)
    assert marker in response["body"]


@pytest.mark.parametrize("name", ["secret.txt", "..%2F..%2Ftemplate.yaml", "index.htm", "Makefile"])
def test_handler_404_anything_else_under_console(invoke, name):
    # Given a name that is not one of the console's files
    response = invoke(console_event(f"/console/{name}", "/console/{file}", {"file": name}))
    # Then nothing is read from disk for it: 404 in the service's error shape
    assert response["statusCode"] == 404
    assert '"not_found"' in response["body"]


def test_handler_404_when_enable_console_is_false(invoke, stack, monkeypatch):
    # Given the function deployed with EnableConsole=false (ENABLE_CONSOLE, read when the function starts)
    assert "api_handler" in stack.handlers  # imported with the stack, and with it api_support, whose settings
    module = importlib.import_module("api_support")  # the routes read at request time
    monkeypatch.setattr(module, "http_settings", HttpSettings.model_validate({"ENABLE_CONSOLE": "false"}))
    # When the page or a file is asked for, then they are not there
    for event in (
        console_event("/console/", "/console"),
        console_event("/console/app.js", "/console/{file}", {"file": "app.js"}),
    ):
        response = invoke(event)
        assert response["statusCode"] == 404
        assert "sessionStorage" not in response["body"]
