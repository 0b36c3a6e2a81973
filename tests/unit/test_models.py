"""ImageRequest: the validation rules every entry point relies on."""

from __future__ import annotations

from typing import Any

import pytest
from imagegen.models import MAX_SEED, ImageRequest, StoredImage
from pydantic import ValidationError


def _failing_fields(exc: ValidationError) -> set[str]:
    return {str(error["loc"][0]) for error in exc.errors()}


def _rejected(payload: dict[str, Any]) -> set[str]:
    with pytest.raises(ValidationError) as caught:
        ImageRequest.model_validate(payload)
    return _failing_fields(caught.value)


def test_image_request_defaults_when_only_prompt_given() -> None:
    # Given a request with only a prompt
    # When it is validated
    request = ImageRequest.model_validate({"prompt": "a cabin under the stars"})
    # Then the documented defaults apply and no seed is chosen yet
    assert request.prompt == "a cabin under the stars"
    assert request.num_steps == 4
    assert request.seed is None
    assert request.size == (1024, 1024)  # width and height stay unset (None): the default size applies


def test_image_request_accepts_every_boundary_value() -> None:
    # Given every field at its inclusive limits
    low = {"prompt": "x", "num_steps": 1, "seed": 0, "width": 256, "height": 256}
    high = {"prompt": "p" * 2000, "num_steps": 8, "seed": MAX_SEED, "width": 2048, "height": 2048}
    # When validated, Then all are accepted unchanged
    for payload in (low, high):
        assert ImageRequest.model_validate(payload).model_dump(exclude_unset=True) == payload


def test_image_request_accepts_explicit_null_seed() -> None:
    # Given a seed explicitly set to null, When validated, Then it means "service picks one"
    assert ImageRequest.model_validate({"prompt": "a", "seed": None}).seed is None


def test_image_request_prompt_is_required() -> None:
    # Given no prompt, When validated, Then the prompt is named as the failing field
    assert _rejected({"num_steps": 4}) == {"prompt"}


@pytest.mark.parametrize("prompt", ["", " ", "   \t\n  "], ids=["empty", "space", "whitespace"])
def test_image_request_prompt_must_not_be_blank(prompt: str) -> None:
    # Given an empty or whitespace-only prompt, When validated, Then it is refused
    assert _rejected({"prompt": prompt}) == {"prompt"}


def test_image_request_prompt_longer_than_2000_chars_is_rejected() -> None:
    # Given a prompt of 2001 characters (multi-byte characters count as one)
    assert ImageRequest.model_validate({"prompt": "é" * 2000}).prompt == "é" * 2000
    # When validated, Then it is refused
    assert _rejected({"prompt": "é" * 2001}) == {"prompt"}


@pytest.mark.parametrize("num_steps", [0, 9, -1])
def test_image_request_num_steps_outside_1_to_8_is_rejected(num_steps: int) -> None:
    assert _rejected({"prompt": "a", "num_steps": num_steps}) == {"num_steps"}


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1])
def test_image_request_seed_outside_uint32_is_rejected(seed: int) -> None:
    assert _rejected({"prompt": "a", "seed": seed}) == {"seed"}


@pytest.mark.parametrize("field", ["width", "height"])
@pytest.mark.parametrize("value", [240, 2064, 1000, 1025, 0, -1024])
def test_image_request_dimension_out_of_range_or_not_multiple_of_16_is_rejected(field: str, value: int) -> None:
    # Given a dimension below 256, above 2048 or not a multiple of 16, When validated, Then that field is named
    assert _rejected({"prompt": "a", field: value}) == {field}


@pytest.mark.parametrize("value", [256, 512, 768, 1008, 1040, 2032, 2048])
def test_image_request_dimension_multiple_of_16_in_range_is_accepted(value: int) -> None:
    request = ImageRequest.model_validate({"prompt": "a", "width": value, "height": value})
    assert (request.width, request.height) == (value, value)


@pytest.mark.parametrize("unknown", ["steps", "negative_prompt", "Prompt", "num_step"])
def test_image_request_unknown_field_is_rejected(unknown: str) -> None:
    # Given a typo'd or unsupported field, When validated, Then it is refused instead of silently ignored
    assert _rejected({"prompt": "a", unknown: 4}) == {unknown}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_steps", "4"),
        ("num_steps", 4.0),
        ("num_steps", True),
        ("seed", "15"),
        ("seed", 15.0),
        ("width", "512"),
        ("height", 512.0),
        ("prompt", 42),
        ("prompt", ["a"]),
    ],
)
def test_image_request_is_strict_about_types(field: str, value: Any) -> None:
    # Given a value of the wrong JSON type that lax parsing would coerce, When validated, Then it is refused
    payload = {"prompt": "a", field: value}
    assert _rejected(payload) == {field}


def test_image_request_from_json_accepts_integers_and_rejects_strings() -> None:
    # Given JSON bodies as the API receives them
    ok = ImageRequest.model_validate_json('{"prompt": "a", "num_steps": 2, "seed": 15, "width": 512, "height": 512}')
    assert (ok.num_steps, ok.seed, ok.width, ok.height) == (2, 15, 512, 512)
    # When a number arrives as a string, Then it is refused
    with pytest.raises(ValidationError) as caught:
        ImageRequest.model_validate_json('{"prompt": "a", "num_steps": "2"}')
    assert _failing_fields(caught.value) == {"num_steps"}


def test_image_request_reports_every_failing_field_at_once() -> None:
    # Given several problems in one request, When validated, Then all are reported together
    fields = _rejected({"prompt": " ", "num_steps": 0, "seed": -1, "width": 100, "height": 3000, "extra": 1})
    assert fields == {"prompt", "num_steps", "seed", "width", "height", "extra"}


def test_stored_image_s3_uri_joins_bucket_and_key() -> None:
    stored = StoredImage(
        bucket="bkt", key="images/x.png", content_type="image/png", bytes=1, sha256="0" * 64, width=1, height=1
    )
    assert stored.s3_uri == "s3://bkt/images/x.png"


def test_job_message_index_and_job_id_go_together() -> None:
    # A direct producer sets neither; the API sets both. One without the other would name an item nobody made.
    from imagegen.models import JobMessage

    assert JobMessage.model_validate({"request": {"prompt": "x"}}).index is None
    assert JobMessage.model_validate({"request": {"prompt": "x"}, "job_id": "job_" + "a" * 32, "index": 3}).index == 3
    with pytest.raises(ValidationError, match="go together"):
        JobMessage.model_validate({"request": {"prompt": "x"}, "index": 3})


def test_json_numbers_turns_dynamodb_decimals_back_into_json_numbers() -> None:
    """The one copy the models' JSON answers (job metadata) and the tables' readers share."""
    from decimal import Decimal

    from imagegen.adapters import images_table
    from imagegen.models import json_numbers

    stored = {"a": Decimal("3"), "b": [Decimal("0.25"), Decimal("1E+2")], "c": {"d": "text", "e": True}, "f": None}
    assert json_numbers(stored) == {"a": 3, "b": [0.25, 100], "c": {"d": "text", "e": True}, "f": None}
    assert type(json_numbers(Decimal("3"))) is int and type(json_numbers(Decimal("0.25"))) is float
    assert images_table.plain(stored) == json_numbers(stored)
