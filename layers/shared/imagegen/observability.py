"""Tracing that costs nothing unless asked for, and loggers that never print what callers sent.

Powertools ``Tracer`` imports the X-Ray SDK when constructed, even when disabled: ~200 ms of cold start, for an
SDK in maintenance since 2026-02 (end of support 2027-02). The template keeps ``Tracing: Active`` (API Gateway and
the Lambda service still emit their segments); the SDK's per-call subsegments are opt-in with
``XRAY_SDK_TRACING=true`` (template parameter ``EnableXRaySdkTracing``), and then Powertools ``Tracer`` does it.
"""

from __future__ import annotations

import logging
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


# Libraries that log payloads at DEBUG. botocore: request and response bodies (the secret's value, prompts in
# item writes). Powertools' event handler: every route's arguments ("Calling API Route Handler: {...}", prompts,
# webhook URLs). Powertools' batch utility: record processing details.
_PAYLOAD_LOGGERS = {
    "botocore": logging.WARNING,
    "aws_lambda_powertools.event_handler": logging.INFO,
    "aws_lambda_powertools.utilities.batch": logging.INFO,
}


def quiet_sensitive_loggers() -> None:
    """Give the loggers that print payloads a level of their own. Lambda's log-level setting (or any DEBUG root
    logger) would let them through; prompts are never logged in full, keys never at all. A level someone set
    explicitly at INFO or above is kept, and so is ``POWERTOOLS_DEBUG`` (Powertools' own troubleshooting switch)."""
    powertools_debug = os.environ.get("POWERTOOLS_DEBUG", "").strip().lower() in {"1", "true", "yes"}
    for name, level in _PAYLOAD_LOGGERS.items():
        if powertools_debug and name.startswith("aws_lambda_powertools"):
            continue
        logger = logging.getLogger(name)
        if logger.level < logging.INFO:  # NOTSET (inherits the root's level) or DEBUG
            logger.setLevel(level)


# Both entry points import this module before their first log line: the levels hold from the cold start on.
quiet_sensitive_loggers()
