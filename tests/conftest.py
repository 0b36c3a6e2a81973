"""Suite-wide fixtures and plugins: the one local stack of the session and its helpers (``support/stack_fixtures``),
the reliability report every category records into (``support/reliability``) and the watch on every log line,
answer, event and webhook for secrets (``support/leak_watch``).

Tiers: every test that needs a running stack (the session's local stack, ``make run``'s in a child process, the SAM
CLI and template tools, the built artefact, Chromium) is marked ``stack``, by its folder or by the ``stack``
fixture; ``make unit`` runs the rest (``pytest tests/unit -m "not stack"``), ``make test`` runs everything.

And the test process itself: the template's Powertools service name and namespace before any import, and a garbage
collector tuned for a long-lived process (both explained where they are set)."""

# ruff: noqa: E402 - the imports after POWERTOOLS_IDENTITY below may reach the functions' modules

import functools
import gc
import os
from pathlib import Path

from devstack.aws import POWERTOOLS_IDENTITY

# The functions' modules build their Powertools Logger and Metrics at import, reading the service name and the
# metrics namespace from the environment, which Lambda sets (from the template) before the first import. A test
# process imports those modules earlier than the session's stack sets its environment: through the imports below
# and in the unit tests. A Metrics built then has no namespace and fails when it publishes by itself (a metric at
# 100 values): in one ordering of the suite, items of a 150-item job failed after paying and were paid again.
for _name, _value in POWERTOOLS_IDENTITY.items():
    os.environ.setdefault(_name, _value)

import pytest
from _pytest import unraisableexception
from support import leak_watch
from support import reliability as reliability_report
from support.recording_queue import side_queue  # noqa: F401 - a fixture
from support.routes import invocations  # noqa: F401 - a fixture
from support.stack_fixtures import (  # noqa: F401 - pytest finds fixtures by name in conftest modules
    api,
    captured_logs,
    emulator,
    events,
    invoke,
    moderation,
    repository,
    stack,
    webhook_receiver,
    worker,
)

# Python's cyclic garbage collector, tuned for a test process. With the defaults (700, 10, 10) each make test worker
# spent 4-6 s of CPU in it (20 s of the suite's ~360 s, measured with time.thread_time in gc.callbacks), three
# quarters of that in ~18 full collections each, over ~300,000 objects that mostly live as long as the process:
# modules, the session's stack, botocore's service models. Collections that start ten times less often, and a
# heap frozen once collection has imported the suite (gc.freeze: never scanned again), cut that to 2-4 s per worker.
GC_THRESHOLDS = (10_000, 20, 20)
GC_AT_EXIT = 1  # full collections before pytest reports exceptions raised in finalizers


def pytest_configure(config: pytest.Config) -> None:
    for plugin in (reliability_report, leak_watch):
        if not config.pluginmanager.is_registered(plugin):
            config.pluginmanager.register(plugin, f"flux-{plugin.__name__.rsplit('.', 1)[-1]}")
    gc.set_threshold(*GC_THRESHOLDS)
    # pytest's check for exceptions raised in finalizers ends each process with 5 full collections of the whole heap
    # (`gc_collect_iterations_key`, its default): 1.9-4.4 s of wall at the end of make test with 6 workers, all
    # collecting at once. One finalizes the garbage the tests left, which is what the check is for; the four more
    # only reach garbage that those finalizers made. tests/unit/test_suite_setup.py pins the key.
    config.stash[unraisableexception.gc_collect_iterations_key] = GC_AT_EXIT


def pytest_collection_finish(session: pytest.Session) -> None:
    gc.collect()
    gc.freeze()


TESTS = Path(__file__).resolve().parent
STACK_FOLDERS = frozenset({"integration", "reliability", "template", "artefact", "browser"})


@functools.cache
def _folder(path: str) -> str:
    """The folder of ``tests/`` a test file is in ("unit", "integration", …): read once per file, not per test."""
    try:
        return Path(path).relative_to(TESTS).parts[0]
    except ValueError:
        return ""


def needs_a_stack(item: pytest.Item) -> bool:
    """Whether a test needs more than its own process: by folder, or by asking for the session's local stack."""
    return _folder(str(item.path)) in STACK_FOLDERS or "stack" in getattr(item, "fixturenames", ())


# Under pytest-xdist (make test) these folders stay on one worker each: the artefact tests share one `make build`
# (two workers would build into the same .aws-sam at once) and the browser tests one Chromium.
ONE_WORKER_FOLDERS = frozenset({"artefact", "browser"})


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads xdist_group to place the tests
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if needs_a_stack(item):
            item.add_marker(pytest.mark.stack)
        if (folder := _folder(str(item.path))) in ONE_WORKER_FOLDERS:
            item.add_marker(pytest.mark.xdist_group(folder))
