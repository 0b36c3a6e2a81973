"""The one retry policy (imagegen.retry): attempts, full-jitter bounds, Retry-After clamp, deadline, no sleep after
the last attempt, and exhaustion reported (never a partial result). Sleeps go to a fake clock; jitter comes from a
seeded ``random.Random``."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest
from botocore.exceptions import ClientError
from imagegen.adapters.events import EventPublisher
from imagegen.adapters.jobs_table import JobRepository
from imagegen.adapters.queue import JobQueue
from imagegen.adapters.webhooks import WebhookSender
from imagegen.models import CancelOrder, ControlMessage
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


# ---------------------------------------------------------------------------------------------------- call sites
def _canceled(*codes: str) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": "TransactionCanceledException", "Message": "canceled"},
            "CancellationReasons": [{"Code": code} for code in codes],
        },
        "TransactWriteItems",
    )


class _Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def test_events_publish_does_not_sleep_after_the_last_attempt() -> None:
    # Given an EventBridge that fails every PutEvents
    calls: list[Any] = []

    class Failing:
        def put_events(self, **kwargs: Any) -> dict[str, Any]:
            calls.append(kwargs)
            raise ClientError({"Error": {"Code": "InternalException", "Message": "down"}}, "PutEvents")

    sleeps = _Sleeps()
    # When an event is published with 3 attempts
    published = EventPublisher(Failing(), "bus", sleep=sleeps).publish("Image Generated", {"id": "img_1"})
    # Then it is reported lost after 3 calls and 2 waits (there was a third, useless one before), none above its
    # ceiling (0.2 s, then 0.4 s)
    assert published is False
    assert len(calls) == 3
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.2 and 0 <= sleeps[1] <= 0.4


def test_queue_send_retries_only_transient_failures_and_reports_what_stayed_unsent() -> None:
    # Given SQS failing entry 1 transiently every time and entry 2 as the sender's fault
    batches: list[list[str]] = []

    class PartlyFailing:
        def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
            batches.append([entry["Id"] for entry in Entries])
            failed = [{"Id": entry["Id"], "SenderFault": entry["Id"] == "2"} for entry in Entries if entry["Id"] != "0"]
            return {"Failed": failed}

    sleeps = _Sleeps()
    messages = [ControlMessage(cancel=CancelOrder(job_id=f"job_{n:032x}")) for n in range(3)]
    # When the three are sent with 4 attempts
    not_sent = JobQueue(PartlyFailing(), "url", attempts=4, sleep=sleeps).send(messages)
    # Then entry 1 was sent 4 times in all, with 3 waits, and both failures are returned (nothing claimed as sent)
    assert sorted(not_sent) == [1, 2]
    assert batches == [["0", "1", "2"], ["1"], ["1"], ["1"]]
    assert len(sleeps) == 3 and all(0 <= wait <= 1.0 for wait in sleeps)


def test_queue_send_of_several_batches_sends_them_at_once_and_reports_every_batch_s_unsent() -> None:
    # Given 25 messages (three SendMessageBatch calls) and an SQS that answers no call before all three arrived, and
    # refuses one entry of the first batch and one of the last as the sender's fault
    arrived = threading.Barrier(3, timeout=10)
    batches: list[list[str]] = []

    class AllAtOnce:
        def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
            arrived.wait()  # BrokenBarrierError (a failed send) if the calls came one after another
            ids = [entry["Id"] for entry in Entries]
            batches.append(ids)
            return {"Failed": [{"Id": n, "SenderFault": True} for n in ids if n in ("3", "24")]}

    messages = [ControlMessage(cancel=CancelOrder(job_id=f"job_{n:032x}")) for n in range(25)]
    # When they are sent
    not_sent = JobQueue(AllAtOnce(), "url", attempts=1, sleep=_Sleeps()).send(messages)
    # Then the three calls were in flight together, each message went once, and both refusals are reported
    assert sorted(len(batch) for batch in batches) == [5, 10, 10]
    assert sorted(int(n) for batch in batches for n in batch) == list(range(25))
    assert sorted(not_sent) == [3, 24]


def test_jobs_table_batch_write_raises_when_items_stay_unprocessed() -> None:
    # Given DynamoDB leaving one write unprocessed every time
    calls: list[Any] = []

    class Throttled:
        def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
            calls.append(RequestItems)
            return {"UnprocessedItems": {"jobs": RequestItems["jobs"][:1]}}

    sleeps = _Sleeps()
    repository = JobRepository(Throttled(), "jobs", 7, sleep=sleeps, rng=random.Random(SEED))
    # When two writes are made, Then the repository raises after 8 calls and 7 waits: no job with items missing
    with pytest.raises(RuntimeError, match="1 unwritten"):
        repository._batch_write([{"PutRequest": {"Item": {}}}, {"PutRequest": {"Item": {}}}])
    assert len(calls) == 8 and len(sleeps) == 7
    assert all(0 <= wait <= 2.0 for wait in sleeps)


def test_jobs_table_transaction_conflicts_are_retried_then_raised_with_conflict_retries_counted() -> None:
    # Given transactions that always collide with a concurrent one
    calls: list[Any] = []

    class Colliding:
        def transact_write_items(self, TransactItems: list[Any]) -> None:
            calls.append(TransactItems)
            raise _canceled("None", "TransactionConflict")

    sleeps = _Sleeps()
    repository = JobRepository(Colliding(), "jobs", 7, sleep=sleeps, rng=random.Random(SEED))
    # When a transaction is run, Then 6 attempts, 5 jittered waits (at least 20 ms each), 5 retries counted, then
    # the conflict is raised
    with pytest.raises(ClientError):
        repository._transact([{"Update": {}}], [{"Update": {}}])
    assert len(calls) == 6 and repository.conflict_retries == 5
    assert len(sleeps) == 5
    assert all(0.02 <= wait <= 0.05 * 2**n for n, wait in enumerate(sleeps))


def test_webhook_delivery_starts_no_wait_after_which_no_attempt_fits(
    http_server: Any, fake_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a receiver answering 503, a 7.5 s budget, 5 s per attempt, and jitter pinned to its ceiling (1 s, 2 s)
    for _ in range(4):
        http_server.reply_json(503, {"error": "busy"})
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    sender = WebhookSender(
        lambda: "secret",
        allow_http=True,
        allowed_private_networks=["127.0.0.0/8"],
        attempts=4,
        backoff_base_s=1.0,
        timeout_s=5.0,
        budget_s=7.5,
        sleep=fake_clock.sleep,
        clock=fake_clock,
    )
    # When a webhook is delivered
    delivery = sender.deliver(http_server.url("/hook"), "msg_1", {"id": "job_1"})
    # Then after the 1 s wait and the second attempt, the 2 s wait is not started (2 + 5 s would pass the budget):
    # every wait was followed by an attempt, and the failure is reported
    assert (delivery.delivered, delivery.attempts, delivery.status_code) == (False, 2, 503)
    assert len(http_server.received) == 2
    assert fake_clock.sleeps == [1.0]
