"""Moderation faults: the ApplyGuardrail stand-in throttling, down or unreachable, on the API path and on the queue
path, and content blocked in a job. Moderation fails closed: never an unchecked prompt sent upstream, never an
unchecked image stored or handed out; a synchronous caller gets 503 with Retry-After, a job item is retried like an
upstream outage (and failed on its last receive), and a blocked item fails for good without blocking its batch."""

from __future__ import annotations

import pytest
from devstack.lambda_context import make_context
from support.stack_fixtures import image_object_count, item_messages, make_job, post_image, s3_keys, sqs_event

MAX_RECEIVES = 5  # the local stack's maxReceiveCount, as the template's default


# ------------------------------------------------------------------------------------------------ the API path
@pytest.mark.parametrize(
    ("mode", "fault", "upstream_calls", "retry_after"),
    [
        ("both", "throttled", 0, 2),  # the prompt check fails: nothing is sent upstream
        ("both", "down", 0, 5),
        ("both", "reset", 0, 5),
        ("image", "throttled", 1, 2),  # the image check fails: paid for, but never stored nor handed out
        ("image", "down", 1, 5),
    ],
)
def test_moderation_fault_on_the_api_fails_closed_with_503_and_retry_after(
    invoke, emulator, moderation, stack, reliability, mode, fault, upstream_calls, retry_after
) -> None:
    # Given the moderation service failing on every call
    standin = moderation(mode)
    standin.inject(fault, count=None)
    before = image_object_count(stack)
    # When a client asks for an image
    status, body, headers = post_image(invoke)
    # Then 503 moderation_unavailable with Retry-After, after one bounded retry; nothing unchecked gets through
    assert status == 503, body
    assert body["error"]["code"] == "moderation_unavailable"
    assert int(headers["retry-after"]) == retry_after
    assert emulator.calls == upstream_calls
    assert standin.faulted == 2
    assert image_object_count(stack) == before
    side = "prompt" if mode == "both" else "image"
    reliability.record(
        "Upstream faults",
        f"moderation {fault} on the {side} check",
        f"503 moderation_unavailable, Retry-After {retry_after}, nothing stored",
        upstream_calls=upstream_calls,
    )


def test_moderation_one_throttle_is_absorbed(invoke, emulator, moderation, stack, reliability) -> None:
    standin = moderation("both")
    standin.inject("throttled", count=1)
    status, body, _ = post_image(invoke)
    assert status == 201, body
    assert emulator.calls == 1 and standin.faulted == 1
    reliability.record("Upstream faults", "moderation throttled once", "201 created (one retry)", upstream_calls=1)


# ------------------------------------------------------------------------------------------------ the queue path
def test_moderation_down_in_a_job_is_retried_then_succeeds(
    worker, repository, stack, emulator, moderation, reliability
):
    # Given moderation down while a one-item job is delivered
    standin = moderation("both")
    standin.inject("down", count=None)
    job_id = make_job(repository, ["a harbour"])
    bodies = item_messages(job_id, ["a harbour"])
    # When the worker gets the message
    first = worker.lambda_handler(sqs_event(bodies), make_context("WorkerFunction", 120))
    # Then the message is reported failed (it comes back later), the item waits, and nothing was sent upstream
    assert len(first["batchItemFailures"]) == 1
    item = repository.get_item(job_id, 0)
    assert item.status == "queued"
    assert emulator.calls == 0
    # When moderation is back and the message is redelivered
    standin.clear_faults()
    second = worker.lambda_handler(sqs_event(bodies, receive_count=2), make_context("WorkerFunction", 120))
    # Then the item succeeds, screened on both sides, with one upstream call in all
    assert second == {"batchItemFailures": []}
    assert repository.get_item(job_id, 0).status == "succeeded"
    assert emulator.calls == 1 and standin.calls == {"INPUT": 1, "OUTPUT": 1}
    reliability.record(
        "Queue faults",
        "moderation down for a job item, then back",
        "retried (message put back), then succeeded; nothing sent upstream while down",
        upstream_calls=1,
        receives=2,
    )


def test_moderation_throttled_on_the_last_receive_fails_the_item(
    worker, repository, stack, emulator, moderation, reliability
):
    # Given moderation throttling, and a message on its last receive
    standin = moderation("both")
    standin.inject("throttled", count=None)
    job_id = make_job(repository, ["a harbour"])
    answer = worker.lambda_handler(
        sqs_event(item_messages(job_id, ["a harbour"]), receive_count=MAX_RECEIVES),
        make_context("WorkerFunction", 120),
    )
    # Then the item fails for good (not left running, the message is not dead-lettered) with the reason
    assert answer == {"batchItemFailures": []}
    item = repository.get_item(job_id, 0)
    assert item.status == "failed" and item.error.code == "moderation_unavailable"
    assert f"gave up after {MAX_RECEIVES} attempts" in item.error.message
    assert emulator.calls == 0 and s3_keys(stack, job_id, 0) == []
    reliability.record(
        "Queue faults",
        "moderation throttled on the last receive",
        "failed (moderation_unavailable, gave up after 5 attempts), acknowledged",
        upstream_calls=0,
    )


def test_moderation_blocked_items_in_a_batch_of_ten(worker, repository, stack, emulator, moderation, reliability):
    # Given a batch of ten where one prompt and one image are blocked
    moderation("both")
    prompts = [f"harbour {i}" for i in range(10)]
    prompts[3] += " [[unsafe]]"
    prompts[7] += " [[unsafe-image]]"
    job_id = make_job(repository, prompts)
    bodies = item_messages(job_id, prompts)
    # When the batch is delivered twice (at-least-once)
    first = worker.lambda_handler(sqs_event(bodies), make_context("WorkerFunction", 120))
    second = worker.lambda_handler(sqs_event(bodies, receive_count=2), make_context("WorkerFunction", 120))
    # Then eight succeeded, the two blocked failed with content_blocked and were not retried, nine paid calls
    assert first == second == {"batchItemFailures": []}
    statuses = [repository.get_item(job_id, i).status for i in range(10)]
    assert statuses.count("succeeded") == 8 and statuses[3] == statuses[7] == "failed"
    assert {repository.get_item(job_id, i).error.code for i in (3, 7)} == {"content_blocked"}
    assert emulator.calls == 9  # not the blocked prompt's; nothing again on the redelivery
    assert s3_keys(stack, job_id, 3) == [] and s3_keys(stack, job_id, 7) == []
    assert repository.get_job(job_id).status == "partially_failed"
    reliability.record(
        "Queue faults",
        "content blocked in a batch of ten (prompt and image)",
        "8 succeeded, 2 failed (content_blocked), not retried; blocked image not stored",
        upstream_calls=9,
    )
