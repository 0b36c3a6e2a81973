"""The template's routes as the access tests walk them, and a record of which requests reached the API function."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
from devstack.gateway import Route, load_routes

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
KEYED_ROUTES = [route for route in load_routes(TEMPLATE) if route.api_key_required]
SAMPLE_IDS = {"image_id": f"img_{'0' * 32}", "job_id": f"job_{'0' * 32}", "id": f"img_{'0' * 32}"}


def concrete(route: Route) -> str:
    """The route's path with a well-formed sample id in each parameter."""
    return re.sub(r"\{([^}+]+)\+?\}", lambda match: SAMPLE_IDS.get(match.group(1), "sample"), route.path)


@pytest.fixture
def invocations(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every request that reached the API function (Powertools' resolver), by path."""
    seen: list[str] = []
    real = ApiGatewayResolver.resolve

    def resolve(self, event, context):  # type: ignore[no-untyped-def]
        seen.append(event.get("path", ""))
        return real(self, event, context)

    monkeypatch.setattr(ApiGatewayResolver, "resolve", resolve)
    yield seen
