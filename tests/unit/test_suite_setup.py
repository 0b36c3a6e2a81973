"""How the suite tunes pytest itself (``tests/conftest.py``), pinned against pytest's private parts it relies on."""

from __future__ import annotations

import collections
import gc
import sys

import pytest
from _pytest import unraisableexception


def test_the_session_ends_with_one_full_collection(request: pytest.FixtureRequest) -> None:
    # tests/conftest.py sets it (GC_AT_EXIT); pytest's own default is 5
    assert request.config.stash[unraisableexception.gc_collect_iterations_key] == 1


def test_pytest_s_finalizer_check_collects_as_often_as_its_key_says(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a session's stash as pytest's unraisable-exception plugin leaves it, with the suite's setting
    setting = request.config.stash[unraisableexception.gc_collect_iterations_key]

    class Session:
        stash = pytest.Stash()

    Session.stash[unraisableexception.gc_collect_iterations_key] = setting
    Session.stash[unraisableexception.unraisable_exceptions] = collections.deque()
    collections_run = []
    monkeypatch.setattr(gc, "collect", lambda *_: collections_run.append(1) or 0)
    # When the plugin's end-of-session clean-up runs (the hook it would restore is the one in place)
    unraisableexception.cleanup(config=Session, prev_hook=sys.unraisablehook)  # type: ignore[arg-type]
    # Then it ran as many full collections as the key says: a pytest that stops reading it fails here
    assert len(collections_run) == setting
