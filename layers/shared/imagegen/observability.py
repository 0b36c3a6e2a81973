"""Tracing that costs nothing unless asked for, metrics that threads can share, and loggers that never print what
callers sent.

Powertools ``Tracer`` imports the X-Ray SDK when constructed, even when disabled: ~200 ms of cold start, for an
SDK in maintenance since 2026-02 (end of support 2027-02). The template keeps ``Tracing: Active`` (API Gateway and
the Lambda service still emit their segments); the SDK's per-call subsegments are opt-in with
``XRAY_SDK_TRACING=true`` (template parameter ``EnableXRaySdkTracing``), and then Powertools ``Tracer`` does it.

Powertools ``Metrics`` keeps one metric set per process and does not lock it: every module's metrics come from
``shared_metrics()``, whose provider does (see ``LockedEMFProvider``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

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


class LockedEMFProvider(AmazonCloudWatchEMFProvider):
    """Powertools' CloudWatch EMF provider with one lock around its metric set.

    The provider is not thread-safe. The worker adds metrics from its item threads, and the provider publishes by
    itself when a metric reaches 100 values. Serialising the set (a publish) while another thread adds a metric
    name then fails with "dictionary changed size during iteration", and two threads adding a new name at once
    lose a sample. The local stack meets it more often: it runs the API and the worker in one process, so one
    function's publish races the other's items (the likely cause of a 502 a fuzzed ``POST /v1/jobs`` met in CI).
    Powertools documents custom providers as its extension point (``Metrics(provider=...)``).
    """

    _lock = threading.RLock()  # one for the process: providers share the sets; re-entered (add_metric publishes)

    def add_metric(self, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            super().add_metric(*args, **kwargs)

    def add_dimension(self, name: str, value: str) -> None:
        with self._lock:
            super().add_dimension(name, value)

    def add_dimensions(self, **dimensions: str) -> None:
        with self._lock:
            super().add_dimensions(**dimensions)

    def add_metadata(self, key: str, value: Any) -> None:
        with self._lock:
            super().add_metadata(key, value)

    def serialize_metric_set(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return super().serialize_metric_set(*args, **kwargs)

    def flush_metrics(self, raise_on_empty_metrics: bool = False) -> None:
        with self._lock:
            super().flush_metrics(raise_on_empty_metrics=raise_on_empty_metrics)

    def clear_metrics(self) -> None:
        with self._lock:
            super().clear_metrics()


# The process's one metric set, as Powertools' ``Metrics()`` shares its own between instances.
_METRIC_SET: dict[str, Any] = {}
_DIMENSION_SET: dict[str, str] = {}
_METADATA_SET: dict[str, Any] = {}


def shared_metrics() -> Metrics:
    """Powertools ``Metrics`` on a ``LockedEMFProvider`` over the process's one metric set: like ``Metrics()``,
    it reads the namespace and service from the environment now, and shares its metrics with every other."""
    provider = LockedEMFProvider(metric_set=_METRIC_SET, dimension_set=_DIMENSION_SET, metadata_set=_METADATA_SET)
    return Metrics(provider=provider)


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
