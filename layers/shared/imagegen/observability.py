"""Tracing that costs nothing unless asked for.

Powertools ``Tracer`` imports the X-Ray SDK when constructed, even when disabled: ~200 ms of cold start, for an
SDK in maintenance since 2026-02 (end of support 2027-02). The template keeps ``Tracing: Active`` (API Gateway and
the Lambda service still emit their segments); the SDK's per-call subsegments are opt-in with
``XRAY_SDK_TRACING=true`` (template parameter ``EnableXRaySdkTracing``), and then Powertools ``Tracer`` does it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class _NoTracer:
    """The two decorators of Powertools ``Tracer`` the entry points use, as pass-throughs."""

    def capture_lambda_handler(self, handler: F | None = None, **_: Any) -> Any:
        return handler if handler is not None else (lambda function: function)

    def capture_method(self, method: F | None = None, **_: Any) -> Any:
        return method if method is not None else (lambda function: function)


def tracer_from_env() -> Any:
    """Powertools ``Tracer`` when ``XRAY_SDK_TRACING`` is true, else a no-op with the same decorators."""
    if os.environ.get("XRAY_SDK_TRACING", "false").strip().lower() in {"1", "true", "yes"}:
        from aws_lambda_powertools import Tracer

        return Tracer()
    return _NoTracer()
