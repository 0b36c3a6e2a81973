"""Property-based checks (hypothesis): arbitrary input never crashes the request models, and arbitrary queue
message bodies never crash the worker's parser nor block the rest of a batch."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imagegen.models import MAX_SEED, ImageRequest, JobMessage, JobRequest
from pydantic import ValidationError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_request_models_accept_or_refuse_any_json_without_crashing(document: Any) -> None:
    for model in (ImageRequest, JobRequest, JobMessage):
        try:
            model.model_validate(document)
        except ValidationError as exc:
            assert exc.errors()  # a refusal always names what is wrong


@settings(max_examples=300)
@given(
    prompt=st.text(min_size=1, max_size=2000).filter(lambda text: text.strip()),
    steps=st.integers(1, 8),
    seed=st.integers(0, MAX_SEED),
    width=st.integers(16, 128).map(lambda n: n * 16),
    height=st.integers(16, 128).map(lambda n: n * 16),
)
def test_every_valid_request_is_accepted_as_given(prompt: str, steps: int, seed: int, width: int, height: int) -> None:
    request = ImageRequest.model_validate(
        {"prompt": prompt, "num_steps": steps, "seed": seed, "width": width, "height": height}
    )
    assert (request.prompt, request.num_steps, request.seed, request.width, request.height) == (
        prompt,
        steps,
        seed,
        width,
        height,
    )


@settings(max_examples=300)
@given(st.integers().filter(lambda n: not 256 <= n <= 2048 or n % 16))
def test_every_invalid_dimension_is_refused_naming_the_field(width: int) -> None:
    try:
        ImageRequest.model_validate({"prompt": "x", "width": width})
    except ValidationError as exc:
        assert [error["loc"] for error in exc.errors()] == [("width",)]
    else:
        raise AssertionError(f"width {width} was accepted")


@settings(max_examples=300)
@given(st.binary(max_size=300) | JSON.map(json.dumps).map(str.encode))
def test_the_message_parser_never_crashes_on_arbitrary_bodies(body: bytes) -> None:
    text = body.decode("utf-8", errors="replace")
    try:
        JobMessage.model_validate_json(text)
    except ValidationError as exc:
        assert exc.errors()
