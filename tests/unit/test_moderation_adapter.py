"""The moderation adapter (Bedrock Guardrails ApplyGuardrail) against the local stand-in, through a real boto3
client: the request and answer wire format, the verdicts, and failing closed on every fault."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config
from devstack.flux_emulator import render_png
from devstack.moderation_standin import GUARDRAIL_ID, ModerationStandIn, png_text_chunks
from imagegen.adapters.moderation import MAX_IMAGE_BYTES, GuardrailModerator, blocked_categories
from imagegen.errors import ConfigurationError, ContentBlockedError, ImageRejectedError, ModerationUnavailableError
from imagegen.settings import load_settings

CLEAN_PNG = render_png("a lighthouse", 1, 4, 256, 256)
UNSAFE_PNG = render_png("a lighthouse [[unsafe-image]]", 1, 4, 256, 256)


@pytest.fixture
def standin() -> Iterator[ModerationStandIn]:
    with ModerationStandIn() as server:
        yield server


def client_for(standin: ModerationStandIn) -> Any:
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=standin.url,
        config=Config(retries={"mode": "standard", "total_max_attempts": 2}, connect_timeout=1, read_timeout=2),
    )


@pytest.fixture
def moderator(standin: ModerationStandIn) -> GuardrailModerator:
    return GuardrailModerator(GUARDRAIL_ID, "1", client=client_for(standin))


# ------------------------------------------------------------------------------------------------ verdicts
def test_moderation_a_clean_prompt_passes(moderator, standin) -> None:
    moderator.check_prompt("a cozy cabin under the stars")
    assert standin.calls == {"INPUT": 1} and not standin.blocked


@pytest.mark.parametrize(
    ("prompt", "categories"),
    [("a scene [[unsafe]]", ["VIOLENCE"]), ("[[unsafe:hate]] and [[unsafe:SEXUAL]]", ["HATE", "SEXUAL"])],
)
def test_moderation_a_flagged_prompt_is_blocked_naming_the_prompt_and_categories(
    moderator, standin, prompt, categories
) -> None:
    # When the guardrail intervenes on the prompt
    with pytest.raises(ContentBlockedError) as raised:
        moderator.check_prompt(prompt)
    # Then the error is a 422 content_blocked naming body.prompt and the categories
    error = raised.value
    assert (error.status, error.code, error.target, error.categories) == (422, "content_blocked", "prompt", categories)
    assert error.details == [
        {
            "location": "body.prompt",
            "field": "prompt",
            "message": f"blocked by content moderation: {', '.join(categories)}",
            "type": "content_blocked",
            "categories": categories,
        }
    ]
    assert prompt not in error.message  # the prompt is user data: never echoed
    assert standin.blocked == {"INPUT": 1}


def test_moderation_the_image_marker_in_a_prompt_does_not_block_the_prompt(moderator) -> None:
    moderator.check_prompt("a lighthouse [[unsafe-image]]")  # only the image it renders is unsafe


def test_moderation_a_clean_image_passes_and_is_sent_as_output_image_bytes(moderator, standin) -> None:
    moderator.check_image(CLEAN_PNG, "image/png", 256, 256)
    assert standin.calls == {"OUTPUT": 1} and not standin.blocked


def test_moderation_a_marked_image_is_blocked_naming_output_image(moderator, standin) -> None:
    # Given the PNG the Flux emulator renders for an [[unsafe-image]] prompt (a tEXt mark)
    assert png_text_chunks(UNSAFE_PNG) and not png_text_chunks(CLEAN_PNG)
    # When it is screened, Then it is blocked as an output image
    with pytest.raises(ContentBlockedError) as raised:
        moderator.check_image(UNSAFE_PNG, "image/png", 256, 256)
    assert raised.value.target == "image" and raised.value.categories == ["SEXUAL"]
    assert raised.value.details[0]["location"] == "output.image"
    assert standin.blocked == {"OUTPUT": 1}


def test_standin_speaks_the_apply_guardrail_wire_format(standin) -> None:
    # The request boto3 sends (REST-JSON, base64 blob) and the answer shape botocore parses
    body = {
        "source": "OUTPUT",
        "content": [{"image": {"format": "png", "source": {"bytes": base64.b64encode(UNSAFE_PNG).decode()}}}],
    }
    answer = requests.post(f"{standin.url}/guardrail/{GUARDRAIL_ID}/version/1/apply", json=body, timeout=5)
    assert answer.status_code == 200
    document = answer.json()
    assert document["action"] == "GUARDRAIL_INTERVENED"
    assert document["usage"]["contentPolicyImageUnits"] == 1
    assert document["guardrailCoverage"]["images"] == {"guarded": 1, "total": 1}
    assert blocked_categories(document) == ["SEXUAL"]
    # An image declared as PNG that is not one is a ValidationException, as the real API answers
    body["content"][0]["image"]["source"]["bytes"] = base64.b64encode(b"GIF89a....").decode()
    refused = requests.post(f"{standin.url}/guardrail/{GUARDRAIL_ID}/version/1/apply", json=body, timeout=5)
    assert refused.status_code == 400
    assert refused.headers["x-amzn-ErrorType"].startswith("ValidationException")


def test_blocked_categories_reads_every_policy_of_an_intervention() -> None:
    answer = {
        "action": "GUARDRAIL_INTERVENED",
        "assessments": [
            {
                "contentPolicy": {
                    "filters": [{"type": "HATE", "action": "BLOCKED"}, {"type": "SEXUAL", "action": "NONE"}]
                },
                "topicPolicy": {"topics": [{"name": "weapons", "action": "BLOCKED"}]},
                "wordPolicy": {"managedWordLists": [{"type": "PROFANITY", "action": "BLOCKED"}]},
            }
        ],
    }
    assert blocked_categories(answer) == ["HATE", "PROFANITY", "TOPIC:weapons"]
    assert blocked_categories({"action": "GUARDRAIL_INTERVENED"}) == ["UNSPECIFIED"]


# ------------------------------------------------------------------------------------------------ fail closed
@pytest.mark.parametrize(
    ("mode", "retry_after", "words"),
    [
        ("throttled", 2, "throttling"),
        ("down", 5, "unavailable"),
        ("error", 5, "unavailable"),
        ("reset", 5, "unreachable"),
    ],
)
def test_moderation_faults_fail_closed_as_a_retryable_503(moderator, standin, mode, retry_after, words) -> None:
    # Given the moderation service failing on every call
    standin.inject(mode, count=None)
    # When a prompt is checked, Then it is neither allowed nor blocked: 503, retryable, with Retry-After
    with pytest.raises(ModerationUnavailableError) as raised:
        moderator.check_prompt("a cat")
    error = raised.value
    assert (error.status, error.code, error.retryable, error.retry_after) == (
        503,
        "moderation_unavailable",
        True,
        retry_after,
    )
    assert words in error.message
    assert standin.faulted == 2  # botocore retried once (total_max_attempts 2), then gave up: bounded


def test_moderation_a_single_throttle_is_absorbed_by_one_retry(moderator, standin) -> None:
    standin.inject("throttled", count=1)
    moderator.check_prompt("a cat")
    assert standin.faulted == 1 and standin.calls == {"INPUT": 1}


def test_moderation_an_unknown_guardrail_is_a_configuration_error_not_an_allowance(standin) -> None:
    moderator = GuardrailModerator("no-such-guardrail", "1", client=client_for(standin))
    with pytest.raises(ConfigurationError, match="ResourceNotFoundException"):
        moderator.check_prompt("a cat")


def test_moderation_an_unreachable_endpoint_fails_closed() -> None:
    with ModerationStandIn() as gone:
        client = client_for(gone)
    moderator = GuardrailModerator(GUARDRAIL_ID, "1", client=client)  # nothing listens there any more
    with pytest.raises(ModerationUnavailableError):
        moderator.check_prompt("a cat")


@pytest.mark.parametrize(
    ("data", "content_type", "size"),
    [
        (CLEAN_PNG, "image/webp", (256, 256)),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_IMAGE_BYTES, "image/png", (256, 256)),
        (CLEAN_PNG, "image/png", (8192, 256)),
    ],
    ids=["webp", "over 4 MB", "over 8000 px"],
)
def test_moderation_an_image_it_cannot_screen_is_refused_without_a_call(moderator, standin, data, content_type, size):
    with pytest.raises(ImageRejectedError, match="cannot be screened"):
        moderator.check_image(data, content_type, *size)
    assert not standin.calls


def test_moderation_builds_its_client_on_first_use_only(standin) -> None:
    built: list[Any] = []

    def factory() -> Any:
        built.append(client_for(standin))
        return built[-1]

    moderator = GuardrailModerator(GUARDRAIL_ID, "1", client_factory=factory)
    assert built == []
    moderator.check_prompt("a cat")
    moderator.check_prompt("a dog")
    assert len(built) == 1


# ------------------------------------------------------------------------------------------------ settings
BASE = {"FLUX_SECRET_ID": "s", "IMAGES_BUCKET": "bucket", "IMAGES_TABLE": "table"}


def test_settings_moderation_is_off_by_default() -> None:
    settings = load_settings(BASE)
    assert settings.moderation_mode == "off"
    assert not settings.moderates_prompts and not settings.moderates_images


@pytest.mark.parametrize(
    ("mode", "prompts", "images"), [("prompt", True, False), ("image", False, True), ("both", True, True)]
)
def test_settings_moderation_modes(mode, prompts, images) -> None:
    settings = load_settings({**BASE, "MODERATION_MODE": mode, "MODERATION_GUARDRAIL_ID": "gr-1"})
    assert (settings.moderates_prompts, settings.moderates_images) == (prompts, images)


def test_settings_moderation_needs_a_guardrail_and_a_known_mode() -> None:
    with pytest.raises(ConfigurationError, match="MODERATION_GUARDRAIL_ID is required"):
        load_settings({**BASE, "MODERATION_MODE": "both"})
    with pytest.raises(ConfigurationError, match="MODERATION_MODE"):
        load_settings({**BASE, "MODERATION_MODE": "strict", "MODERATION_GUARDRAIL_ID": "gr-1"})
    with pytest.raises(ConfigurationError, match="MODERATION_GUARDRAIL_VERSION"):
        load_settings(
            {**BASE, "MODERATION_MODE": "both", "MODERATION_GUARDRAIL_ID": "g", "MODERATION_GUARDRAIL_VERSION": "x"}
        )


def test_error_detail_carries_the_categories_in_the_api_shape() -> None:
    from imagegen.models import ErrorDetail

    detail = ErrorDetail.model_validate(ContentBlockedError("image", ["VIOLENCE", "HATE"]).details[0])
    assert json.loads(detail.model_dump_json())["categories"] == ["HATE", "VIOLENCE"]


def test_moderation_counts_each_block_by_category_and_target(moderator, monkeypatch, capsys) -> None:
    # Given the metrics namespace the functions run with
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "FluxImageService")
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    # When a prompt is blocked on two categories
    with pytest.raises(ContentBlockedError):
        moderator.check_prompt("[[unsafe:HATE]] [[unsafe:VIOLENCE]]")
    # Then one ContentBlocked datapoint per category, with the category and target as dimensions (the dashboard's)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"ContentBlocked"' in line]
    assert sorted((line["category"], line["target"], line["ContentBlocked"]) for line in lines) == [
        ("HATE", "prompt", [1.0]),
        ("VIOLENCE", "prompt", [1.0]),
    ]
    assert all(line["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "FluxImageService" for line in lines)
