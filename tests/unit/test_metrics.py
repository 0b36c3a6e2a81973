"""Metrics shared by threads: one provider per process, with its metric set behind a lock (imagegen.observability)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider
from imagegen.observability import LockedEMFProvider, shared_metrics

ROOT = Path(__file__).resolve().parents[2]


class AddsWhileIterated(dict):
    """A metric set that, when a publish starts iterating it, has another thread add a metric name meanwhile."""

    def __init__(self, provider_of: list[AmazonCloudWatchEMFProvider]) -> None:
        super().__init__()
        self.provider_of = provider_of
        self.adder: threading.Thread | None = None

    def __iter__(self) -> Iterator[str]:
        names = super().__iter__()
        if self.adder is not None:
            yield from names
            return
        first = next(names)  # the publish is now iterating
        self.adder = threading.Thread(target=self.provider_of[0].add_metric, args=("Late", "Count", 1))
        self.adder.start()
        self.adder.join(timeout=0.5)  # a lock keeps it waiting until the publish ends
        yield first
        yield from names


def _provider(cls: type[AmazonCloudWatchEMFProvider]) -> tuple[AmazonCloudWatchEMFProvider, AddsWhileIterated]:
    holder: list[AmazonCloudWatchEMFProvider] = []
    metric_set = AddsWhileIterated(holder)
    provider = cls(metric_set=metric_set, namespace="Test", service="svc")
    holder.append(provider)
    provider.add_metric(name="Early", unit="Count", value=1)
    return provider, metric_set


def test_a_publish_while_another_thread_adds_a_metric_neither_fails_nor_loses_it(capsys):
    # Given a metric set another thread adds to while a publish reads it
    provider, metric_set = _provider(LockedEMFProvider)

    # When the metrics are published
    provider.flush_metrics()

    # Then the publish held the other thread off: it printed what was there, and the late metric is kept
    assert metric_set.adder is not None
    metric_set.adder.join(timeout=5)
    assert not metric_set.adder.is_alive()
    published = json.loads(capsys.readouterr().out)
    assert published["Early"] == [1.0] and "Late" not in published
    assert dict(metric_set) == {"Late": {"Unit": "Count", "StorageResolution": 60, "Value": [1.0]}}


def test_powertools_own_provider_fails_on_the_same_race():
    """Why the lock exists, and a signal to drop it if Powertools ever locks its own metric set."""
    # Given the same race on Powertools' provider
    provider, metric_set = _provider(AmazonCloudWatchEMFProvider)

    # When the metrics are published, then the metric set changed under the publish
    with pytest.raises(RuntimeError, match="dictionary changed size during iteration"):
        provider.flush_metrics()
    assert metric_set.adder is not None
    metric_set.adder.join(timeout=5)


def test_every_module_s_metrics_share_one_metric_set_behind_the_lock():
    from imagegen import fanout, item_processor, jobs, results, service
    from imagegen.adapters import events, moderation

    providers = [module.metrics.provider for module in (fanout, item_processor, jobs, results, service, events)]
    providers.append(moderation.metrics.provider)
    assert all(isinstance(provider, LockedEMFProvider) for provider in providers)
    assert {id(provider.metric_set) for provider in providers} == {id(shared_metrics().provider.metric_set)}


def test_no_module_builds_metrics_of_its_own():
    sources = [*ROOT.glob("layers/shared/imagegen/**/*.py"), *ROOT.glob("functions/*/*.py")]
    own = [
        str(path.relative_to(ROOT))
        for path in sources
        if path.name != "observability.py" and re.search(r"\bMetrics\(", path.read_text())
    ]
    assert sources and own == []
