"""SnapStart hooks: a restored environment gets its own randomness, clients, connections and cached secrets."""

from __future__ import annotations

import random
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.parameters import base as parameters_base
from imagegen import snapstart, wiring
from imagegen.settings import get_settings

SETTINGS_ENV = {
    "FLUX_SECRET_ID": "flux/subscription-key",
    "IMAGES_BUCKET": "images-bucket",
    "IMAGES_TABLE": "images",
    "JOBS_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/jobs",
    "IDEMPOTENCY_TABLE": "idempotency",
    "EVENT_BUS_NAME": "bus",
    "WEBHOOK_SECRET_ID": "webhook-key",
}


def _wiring_caches() -> dict[str, Any]:
    return {name: value for name, value in vars(wiring).items() if callable(getattr(value, "cache_clear", None))}


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in SETTINGS_ENV.items():
        monkeypatch.setenv(name, value)
    for cached in _wiring_caches().values():
        cached.cache_clear()
    yield
    for cached in _wiring_caches().values():
        cached.cache_clear()


@pytest.fixture
def fake_runtime_library(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Callable[..., Any], tuple[Any, ...], dict]]:
    """``snapshot_restore_py`` as the runtime ships it: a registry of (function, args, kwargs) tuples."""
    registry: list[tuple[Callable[..., Any], tuple[Any, ...], dict]] = []
    module = types.ModuleType("snapshot_restore_py")

    def register_after_restore(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
        registry.append((func, args, kwargs))
        return func

    module.register_after_restore = register_after_restore  # type: ignore[attr-defined]
    module.get_after_restore = lambda: registry  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", module)
    return registry


def test_register_hooks_without_snapstart_imports_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an on-demand initialisation (the default: EnableSnapStart=false)
    monkeypatch.delitem(sys.modules, "snapshot_restore_py", raising=False)
    # When the entry point registers its hooks
    registered = snapstart.register_hooks({"AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand"})
    # Then nothing is registered and the runtime's library is not even imported
    assert registered is False
    assert "snapshot_restore_py" not in sys.modules
    assert snapstart.register_hooks({}) is False


def test_register_hooks_under_snapstart_registers_after_restore(
    fake_runtime_library: list[tuple[Callable[..., Any], tuple[Any, ...], dict]],
) -> None:
    # Given the initialisation Lambda runs to take a SnapStart snapshot
    # When the entry point registers its hooks
    registered = snapstart.register_hooks({"AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"})
    # Then after_restore runs after every restore
    assert registered is True
    assert fake_runtime_library == [(snapstart.after_restore, (), {})]


def test_after_restore_reseeds_random() -> None:
    # Given the random state a snapshot froze (jitter and backoff draw from it)
    random.seed(1234)
    frozen = random.getstate()
    # When two environments are restored from it
    snapstart.after_restore()
    first = [random.random() for _ in range(4)]
    random.setstate(frozen)
    snapstart.after_restore()
    second = [random.random() for _ in range(4)]
    # Then they draw different numbers (without the hook both would repeat the snapshot's sequence)
    random.setstate(frozen)
    assert [random.random() for _ in range(4)] != first
    assert first != second


def test_after_restore_drops_clients_sessions_and_cached_keys(
    settings_env: None, fake_runtime_library: list[Any]
) -> None:
    # Given clients, HTTP sessions and key providers built during init (what a snapshot would freeze)
    before: dict[str, Any] = {
        "image_service": wiring.image_service(),
        "job_queue": wiring.job_queue(),
        "jobs": wiring.job_service(),
    }
    flux = before["image_service"]._flux
    assert all(cached.cache_info().currsize for name, cached in _wiring_caches().items() if name in before)
    boto3.setup_default_session()
    # When the runtime calls the registered after-restore hook
    snapstart.register_hooks({"AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"})
    for hook, args, kwargs in fake_runtime_library:
        hook(*args, **kwargs)
    # Then every cache of the wiring is empty and the next call builds new clients, sessions and key providers
    assert {name: cached.cache_info().currsize for name, cached in _wiring_caches().items()} == dict.fromkeys(
        _wiring_caches(), 0
    )
    assert boto3.DEFAULT_SESSION is None
    rebuilt: Any = wiring.image_service()
    assert rebuilt is not before["image_service"]
    assert rebuilt._flux is not flux and rebuilt._flux._session is not flux._session
    assert rebuilt._flux._rng is not flux._rng
    assert wiring.job_queue() is not before["job_queue"]
    assert get_settings().images_bucket == "images-bucket"  # settings come back from the same environment


def test_after_restore_clears_powertools_parameter_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a value cached by one of Powertools' default providers (parameters.get_secret and friends)
    provider = parameters.SecretsProvider()
    provider.store[("secret", None)] = "cached"  # type: ignore[assignment]
    monkeypatch.setitem(parameters_base.DEFAULT_PROVIDERS, "secrets", provider)
    # When an environment is restored
    snapstart.after_restore()
    # Then the providers (and what they cached) are gone
    assert "secrets" not in parameters_base.DEFAULT_PROVIDERS
