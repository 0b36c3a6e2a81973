"""The suite's one polling helper (``support.polling.eventually``), on a fake clock: no test here waits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from support import polling
from support.polling import eventually


@pytest.fixture
def clock(fake_clock, monkeypatch):
    monkeypatch.setattr(polling, "time", SimpleNamespace(monotonic=fake_clock, sleep=fake_clock.sleep))
    return fake_clock


def test_eventually_returns_the_first_truthy_answer_without_sleeping(clock):
    # Given a condition that holds at once
    # When it is awaited
    found = eventually(lambda: ["job"], timeout_s=5, what="a job")
    # Then its answer comes back and nothing slept
    assert found == ["job"]
    assert clock.sleeps == []


def test_eventually_polls_at_the_interval_until_the_condition_holds(clock):
    # Given a condition that holds on its fourth look
    answers = iter([None, 0, "", "done"])
    # When it is awaited every 0.25 s
    found = eventually(lambda: next(answers), timeout_s=5, what="the fourth look", interval_s=0.25)
    # Then it slept three intervals and returned the answer that held
    assert found == "done"
    assert clock.sleeps == [0.25, 0.25, 0.25]


def test_eventually_fails_at_the_deadline_naming_what_it_waited_for(clock):
    # Given a condition that never holds
    looks = []

    def never() -> int:
        looks.append(clock.now)
        return 0

    # When it is awaited for 1 s every 0.4 s
    with pytest.raises(AssertionError, match=r"timed out after 1 s waiting for job j-1 to finish \(last seen: 0\)"):
        eventually(never, timeout_s=1, what="job j-1 to finish", interval_s=0.4)
    # Then the last sleep stopped at the deadline and the condition was looked at once more after it
    assert clock.sleeps == pytest.approx([0.4, 0.4, 0.2])
    assert len(looks) == 4 and looks[-1] == pytest.approx(looks[0] + 1)


def test_eventually_asks_a_callable_description_only_when_it_fails(clock):
    # Given a description that is costly to build (a queue's counters, say)
    asked = []

    def describe() -> str:
        asked.append(1)
        return "the queue to drain (3 messages left)"

    # When a condition that holds is awaited, the description is never built
    eventually(lambda: True, timeout_s=1, what=describe)
    assert asked == []
    # And when one that never holds is awaited, the failure carries it
    with pytest.raises(AssertionError, match=r"the queue to drain \(3 messages left\)"):
        eventually(lambda: False, timeout_s=1, what=describe)
    assert asked == [1]


@pytest.mark.parametrize(("timeout_s", "interval_s", "named"), [(0, 0.1, "timeout_s"), (1, 0, "interval_s")])
def test_eventually_refuses_a_bound_that_is_not_positive(clock, timeout_s, interval_s, named):
    with pytest.raises(ValueError, match=named):
        eventually(lambda: True, timeout_s=timeout_s, what="anything", interval_s=interval_s)
