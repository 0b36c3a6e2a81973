"""The one retry policy (imagegen.retry): attempts, full-jitter bounds, Retry-After clamp, deadline, no sleep after
the last attempt, and exhaustion reported (never a partial result). Sleeps go to a fake clock; jitter comes from a
seeded ``random.Random``."""

from __future__ import annotations

import random
from typing import Any

import pytest
from imagegen.retry import Retrying, RetryPolicy

SEED = 11


class Transient(Exception):
    pass


def _call(retrying: Retrying, outcomes: list[Any]) -> Any:
    """The loop every call site writes: an attempt, then ``wait`` or raise."""
    for attempt in retrying:
        outcome = outcomes[attempt - 1]
        if not isinstance(outcome, Exception):
            return outcome
        if not retrying.wait(getattr(outcome, "retry_after", None)):
            raise Transient(f"{retrying.why_not}") from outcome
    raise AssertionError("not reached")


# ---------------------------------------------------------------------------------------------------- the policy
def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0, base_s=1, cap_s=1)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(attempts=2, base_s=-1, cap_s=1)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(attempts=2, base_s=1, cap_s=1, retry_after_cap_s=-1)
    with pytest.raises(ValueError, match="deadline_s"):
        RetryPolicy(attempts=2, base_s=1, cap_s=1, deadline_s=0)


def test_retry_policy_ceiling_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(attempts=10, base_s=0.5, cap_s=3.0)
    assert [policy.ceiling(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.ceiling(10_000) == 3.0  # no overflow for a huge attempt number


def test_retry_policy_full_jitter_stays_within_zero_and_the_ceiling() -> None:
    # Given a seeded random source and many draws per attempt
    policy = RetryPolicy(attempts=10, base_s=1.0, cap_s=8.0)
    rng = random.Random(SEED)
    for attempt in range(1, 8):
        draws = [policy.backoff(attempt, rng) for _ in range(500)]
        # Then every draw lies in [0, ceiling], and the draws spread over the range (jitter, not a constant)
        ceiling = policy.ceiling(attempt)
        assert all(0.0 <= draw <= ceiling for draw in draws)
        assert min(draws) < ceiling * 0.1 and max(draws) > ceiling * 0.9


def test_retry_policy_floor_is_the_shortest_backoff_but_never_above_the_ceiling() -> None:
    policy = RetryPolicy(attempts=10, base_s=5.0, cap_s=900.0, floor_s=1.0)
    rng = random.Random(SEED)
    assert all(1.0 <= policy.backoff(1, rng) <= 5.0 for _ in range(200))
    tiny = RetryPolicy(attempts=3, base_s=0.01, cap_s=1.0, floor_s=0.02)
    assert tiny.backoff(1, rng) == 0.01  # floor above the ceiling: the ceiling


def test_retry_policy_is_reproducible_with_a_seeded_random() -> None:
    policy = RetryPolicy(attempts=5, base_s=0.5, cap_s=8.0)
    first = [policy.backoff(n, random.Random(SEED)) for n in range(1, 5)]
    again = [policy.backoff(n, random.Random(SEED)) for n in range(1, 5)]
    expected = [random.Random(SEED).uniform(0, ceiling) for ceiling in (0.5, 1.0, 2.0, 4.0)]
    assert first == again == pytest.approx(expected)


def test_retry_policy_honours_retry_after_clamped_to_the_cap() -> None:
    # Given a policy capped at 8 s (no separate Retry-After cap)
    policy = RetryPolicy(attempts=3, base_s=0.5, cap_s=8.0)
    # Then a Retry-After below the cap is waited exactly, one above it is clamped, a negative one is no wait
    assert policy.delay(1, 3.0) == 3.0
    assert policy.delay(1, 3600.0) == 8.0
    assert policy.delay(1, -5.0) == 0.0


def test_retry_policy_retry_after_has_its_own_cap_and_jitter() -> None:
    policy = RetryPolicy(attempts=3, base_s=0.5, cap_s=8.0, retry_after_cap_s=60.0, retry_after_jitter_s=0.25)
    rng = random.Random(SEED)
    expected_jitter = random.Random(SEED).uniform(0, 0.25)
    assert policy.delay(1, 20.0, rng) == pytest.approx(20.0 + expected_jitter)
    assert 60.0 <= policy.delay(1, 1e9, rng) <= 60.25


# ---------------------------------------------------------------------------------------------------- Retrying
def test_retrying_makes_every_attempt_and_sleeps_only_between_them(fake_clock: Any) -> None:
    # Given an operation failing twice, then succeeding
    policy = RetryPolicy(attempts=3, base_s=1.0, cap_s=8.0)
    retrying = Retrying(policy, sleep=fake_clock.sleep, clock=fake_clock, rng=random.Random(SEED))
    # When it is called
    result = _call(retrying, [Transient(), Transient(), "ok"])
    # Then it returns the third answer after two full-jitter waits
    assert result == "ok" and retrying.attempt == 3
    rng = random.Random(SEED)
    assert fake_clock.sleeps == pytest.approx([rng.uniform(0, 1.0), rng.uniform(0, 2.0)])


def test_retrying_raises_when_attempts_run_out_without_sleeping_after_the_last(fake_clock: Any) -> None:
    # Given an operation that always fails, 4 attempts allowed
    policy = RetryPolicy(attempts=4, base_s=1.0, cap_s=8.0)
    retrying = Retrying(policy, sleep=fake_clock.sleep, clock=fake_clock, rng=random.Random(SEED))
    # When it is called, Then it raises (no partial result), after 4 attempts and exactly 3 sleeps
    with pytest.raises(Transient, match="gave up after 4 attempts"):
        _call(retrying, [Transient()] * 10)
    assert retrying.attempt == 4
    assert len(fake_clock.sleeps) == 3


def test_retrying_with_one_attempt_never_sleeps(fake_clock: Any) -> None:
    retrying = Retrying(RetryPolicy(attempts=1, base_s=1.0, cap_s=1.0), sleep=fake_clock.sleep, clock=fake_clock)
    with pytest.raises(Transient):
        _call(retrying, [Transient(), "never reached"])
    assert fake_clock.sleeps == []


def test_retrying_waits_out_retry_after_instead_of_the_backoff(fake_clock: Any) -> None:
    failure = Transient()
    failure.retry_after = 5.0  # type: ignore[attr-defined]
    policy = RetryPolicy(attempts=3, base_s=0.1, cap_s=10.0)
    retrying = Retrying(policy, sleep=fake_clock.sleep, clock=fake_clock, rng=random.Random(SEED))
    assert _call(retrying, [failure, "ok"]) == "ok"
    assert fake_clock.sleeps == [5.0]


def test_retrying_never_starts_a_wait_that_would_pass_the_deadline(fake_clock: Any) -> None:
    # Given many attempts, backoff capped at 4 s, and a 10 s overall deadline
    policy = RetryPolicy(attempts=50, base_s=1.0, cap_s=4.0, deadline_s=10.0)
    retrying = Retrying(policy, sleep=fake_clock.sleep, clock=fake_clock, rng=random.Random(SEED))
    started = fake_clock.now
    # When the operation always fails
    with pytest.raises(Transient, match="deadline"):
        _call(retrying, [Transient()] * 50)
    # Then no sleep ended past the deadline, and the deadline (not the attempts) ended it
    assert fake_clock.now - started <= 10.0
    assert fake_clock.sleeps and retrying.attempt < 50
    assert retrying.attempt == len(fake_clock.sleeps) + 1


def test_retrying_keeps_the_reserve_for_the_next_attempt(fake_clock: Any) -> None:
    # Given a caller's deadline 10 s away, a Retry-After of 9 s, and 1 s needed per attempt
    failure = Transient()
    failure.retry_after = 9.0  # type: ignore[attr-defined]
    expires_at = fake_clock.now + 10.0
    policy = RetryPolicy(attempts=5, base_s=0.5, cap_s=60.0, reserve_s=1.0)
    retrying = Retrying(policy, sleep=fake_clock.sleep, clock=fake_clock, remaining=lambda: expires_at - fake_clock())
    # Then 9 s fits exactly (9 + 1 <= 10) ...
    next(retrying)
    assert retrying.next_delay(9.0) == 9.0
    # ... and 9.5 s does not: no sleep, the caller raises at once
    assert retrying.next_delay(9.5) is None and "deadline" in retrying.why_not
    assert fake_clock.sleeps == []


def test_retrying_uses_the_tighter_of_its_deadline_and_the_callers(fake_clock: Any) -> None:
    expires_at = fake_clock.now + 3.0
    policy = RetryPolicy(attempts=5, base_s=0.5, cap_s=60.0, deadline_s=100.0)
    retrying = Retrying(policy, sleep=fake_clock.sleep, clock=fake_clock, remaining=lambda: expires_at - fake_clock())
    next(retrying)
    assert retrying.time_left() == pytest.approx(3.0)
    assert not retrying.wait(5.0)
    assert fake_clock.sleeps == []
