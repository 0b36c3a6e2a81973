"""One local stack per test session: moto + the Flux emulator + the local API Gateway, all on loopback.

Handler tests call the real ``lambda_handler`` with the JSON in ``events/``; local-stack tests go over HTTP.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from devstack.lambda_context import make_context
from devstack.stack import LocalStack
from support.secrets_under_test import API_KEY, ORIGIN, SUBSCRIPTION_KEY


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    local = LocalStack(
        port=0,
        api_key=API_KEY,
        flux_api_key=SUBSCRIPTION_KEY,
        extra_env={
            "CORS_ALLOWED_ORIGINS": f"{ORIGIN},https://app.example.com",
            "UPSTREAM_BACKOFF_BASE_SECONDS": "0.2",
            "UPSTREAM_BACKOFF_MAX_SECONDS": "0.5",
            "POWERTOOLS_METRICS_DISABLED": "false",
        },
    )
    local.start()
    yield local
    local.stop()


@pytest.fixture
def emulator(stack: LocalStack) -> Iterator[Any]:
    assert stack.emulator is not None
    stack.emulator.clear_faults()
    stack.emulator.reset_counters()
    stack.emulator.set_api_key(SUBSCRIPTION_KEY)
    yield stack.emulator
    stack.emulator.clear_faults()
    stack.emulator.set_api_key(SUBSCRIPTION_KEY)


@pytest.fixture
def invoke(stack: LocalStack) -> Callable[..., dict[str, Any]]:
    """Call the real API handler with an event; ``timeout_s`` is the Lambda's remaining time."""
    handler = stack.handlers["api_handler"].lambda_handler

    def call(event: dict[str, Any], timeout_s: float = 29.0) -> dict[str, Any]:
        return handler(copy.deepcopy(event), make_context("ApiFunction", timeout_s))

    return call


@pytest.fixture
def captured_logs(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Callable[[], str]:
    """Everything the test wrote: Powertools logs and metrics go to stdout, the rest through logging."""
    caplog.set_level(logging.DEBUG)

    def text() -> str:
        out, err = capsys.readouterr()
        return out + err + caplog.text

    return text
