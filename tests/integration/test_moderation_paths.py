"""Content moderation through the real handlers, against the local stack: the Flux emulator, moto and the
ApplyGuardrail stand-in. A blocked prompt costs no upstream call; a blocked image is never stored, so nothing of it
can be fetched; a job item that is blocked fails with ``content_blocked`` and is announced as "Image Blocked"."""

from __future__ import annotations

import json

import pytest
import requests
from devstack.lambda_context import make_context
from support.secrets_under_test import API_KEY
from support.stack_fixtures import image_object_count, item_messages, make_job, post_image, s3_keys, sqs_event


def test_moderation_blocked_prompt_422_and_no_upstream_call(invoke, emulator, moderation, stack) -> None:
    # Given moderation of prompts and images
    standin = moderation("both")
    before = image_object_count(stack)
    # When a prompt the guardrail flags is submitted
    status, body, _ = post_image(invoke, "a scene [[unsafe]]")
    # Then 422 content_blocked names body.prompt and the category, and the upstream was never called (not paid)
    assert status == 422, body
    error = body["error"]
    assert error["code"] == "content_blocked"
    assert error["details"][0]["location"] == "body.prompt"
    assert error["details"][0]["categories"] == ["VIOLENCE"]
    assert "[[unsafe]]" not in json.dumps(body)  # the prompt is not echoed
    assert emulator.calls == 0
    assert standin.calls == {"INPUT": 1}
    assert image_object_count(stack) == before


def test_moderation_blocked_image_422_and_nothing_stored_or_fetchable(
    invoke, emulator, moderation, stack, events
) -> None:
    # Given moderation of prompts and images
    standin = moderation("both")
    before = image_object_count(stack)
    # When the generated image is one the guardrail flags
    status, body, _ = post_image(invoke, "a lighthouse [[unsafe-image]]")
    # Then 422 content_blocked names output.image; one upstream call was made, and no object, record or URL exists
    assert status == 422, body
    assert body["error"]["code"] == "content_blocked"
    assert body["error"]["details"][0]["location"] == "output.image"
    assert body["error"]["details"][0]["categories"] == ["SEXUAL"]
    assert "http" not in json.dumps(body)  # no URL of any kind
    assert emulator.calls == 1
    assert standin.calls == {"INPUT": 1, "OUTPUT": 1}
    assert image_object_count(stack) == before
    # And the worker announced it (the API hands it over the queue): categories, no URL, no prompt
    [event] = events(1)
    assert event["detail-type"] == "Image Blocked"
    assert event["detail"]["target"] == "image" and event["detail"]["categories"] == ["SEXUAL"]
    assert event["detail"]["image_id"].startswith("img_") and event["detail"]["job_id"] is None
    assert "http" not in json.dumps(event["detail"]) and "lighthouse" not in json.dumps(event["detail"])


def test_moderation_clean_request_is_screened_twice_and_stored(invoke, emulator, moderation, stack) -> None:
    standin = moderation("both")
    status, body, _ = post_image(invoke, "a lighthouse at dawn")
    assert status == 201, body
    assert standin.calls == {"INPUT": 1, "OUTPUT": 1} and not standin.blocked
    assert requests.get(body["image"]["url"], timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("mode", "prompt", "status", "calls"),
    [
        ("off", "a scene [[unsafe]] [[unsafe-image]]", 201, {}),
        ("prompt", "a lighthouse [[unsafe-image]]", 201, {"INPUT": 1}),  # the image is not checked
        ("prompt", "a scene [[unsafe]]", 422, {"INPUT": 1}),
        ("image", "a scene [[unsafe]]", 201, {"OUTPUT": 1}),  # the prompt is not checked
        ("image", "a lighthouse [[unsafe-image]]", 422, {"OUTPUT": 1}),
    ],
)
def test_moderation_mode_decides_what_is_checked(invoke, emulator, moderation, mode, prompt, status, calls) -> None:
    standin = moderation(mode)
    got, body, _ = post_image(invoke, prompt)
    assert got == status, body
    assert dict(standin.calls) == calls


def test_moderation_over_http_through_the_local_gateway(stack, emulator, moderation) -> None:
    # The "done when" of the issue, as a user of `make run` sees it
    moderation("both")
    for prompt, location in (("x [[unsafe]]", "body.prompt"), ("x [[unsafe-image]]", "output.image")):
        response = requests.post(
            f"{stack.url}/v1/images",
            json={"prompt": prompt, "width": 256, "height": 256},
            headers={"x-api-key": API_KEY},
            timeout=30,
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "content_blocked"
        assert response.json()["error"]["details"][0]["location"] == location
    assert emulator.calls == 1  # only the [[unsafe-image]] prompt reached the upstream


# ------------------------------------------------------------------------------------------------ job items
def test_moderation_job_items_blocked_fail_with_content_blocked_and_are_announced(
    worker, repository, stack, emulator, moderation, events
) -> None:
    # Given a job of three items: clean, an unsafe image, an unsafe prompt
    moderation("both")
    prompts = ["a clean harbour", "a harbour [[unsafe-image]]", "a harbour [[unsafe:HATE]]"]
    job_id = make_job(repository, prompts)
    bodies = item_messages(job_id, prompts)
    # When the worker gets the batch, and then the same batch again (at-least-once delivery)
    first = worker.lambda_handler(sqs_event(bodies), make_context("WorkerFunction", 120))
    second = worker.lambda_handler(sqs_event(bodies, receive_count=2), make_context("WorkerFunction", 120))
    # Then the blocked items failed for good with content_blocked (not retried), the clean one succeeded
    assert first == second == {"batchItemFailures": []}
    items = [repository.get_item(job_id, index) for index in range(3)]
    assert [item.status for item in items] == ["succeeded", "failed", "failed"]
    assert [item.error.code for item in items[1:]] == ["content_blocked", "content_blocked"]
    # Two upstream calls: the clean prompt and the unsafe image's; none for the blocked prompt, none on redelivery
    assert emulator.calls == 2
    assert len(s3_keys(stack, job_id, 0)) == 1 and s3_keys(stack, job_id, 1) == [] and s3_keys(stack, job_id, 2) == []
    job = repository.get_job(job_id)
    assert job.counts.succeeded == 1 and job.counts.failed == 2
    # And each block was announced once, with its categories and no URL
    received = events(6)
    blocked = sorted(
        (e["detail"]["index"], e["detail"]["target"], tuple(e["detail"]["categories"]))
        for e in received
        if e["detail-type"] == "Image Blocked"
    )
    assert blocked == [(1, "image", ("SEXUAL",)), (2, "prompt", ("HATE",))]
    for event in received:
        if event["detail-type"] == "Image Blocked":
            assert event["detail"]["job_id"] == job_id
            assert "url" not in json.dumps(event["detail"])
