"""The request options of issue 11: num_images, aspect_ratio/megapixels, output_format/quality, response_format.

Every invalid combination is refused naming each field involved (one error per field)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from imagegen.errors import FieldsInvalidError, ResponseTooLargeError
from imagegen.inline import inline_images, job_item_or_422
from imagegen.models import (
    MAX_INLINE_B64,
    MAX_INLINE_PNG_PIXELS,
    MAX_SEED,
    GenerationParameters,
    ImageInfo,
    ImageRequest,
    JobMessage,
    JobRequest,
    inline_length,
    png_bound,
    size_for,
)
from imagegen.service import image_requests, resolve_parameters
from pydantic import ValidationError

RATIOS = ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21"]


def _errors(model: Any, payload: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(payload)
    return {".".join(str(part) for part in error["loc"]): error["msg"] for error in caught.value.errors()}


# ------------------------------------------------------------------------------------------------ num_images
@pytest.mark.parametrize("value", [1, 2, 3, 4])
def test_num_images_1_to_4_is_accepted(value: int) -> None:
    assert ImageRequest.model_validate({"prompt": "p", "num_images": value}).num_images == value


@pytest.mark.parametrize("value", [0, 5, -1, 100])
def test_num_images_outside_1_to_4_names_the_field(value: int) -> None:
    assert set(_errors(ImageRequest, {"prompt": "p", "num_images": value})) == {"num_images"}


def test_num_images_gives_consecutive_seeds_wrapping_past_the_largest() -> None:
    # Given three images from seed MAX_SEED - 1
    request = ImageRequest.model_validate({"prompt": "p", "num_images": 3, "seed": MAX_SEED - 1})
    # When split into single-image requests
    singles = image_requests(request)
    # Then the seeds are consecutive, wrapping to 0, and each asks for one image
    assert [single.seed for single in singles] == [MAX_SEED - 1, MAX_SEED, 0]
    assert {single.num_images for single in singles} == {1}


def test_num_images_without_seed_picks_one_base_seed() -> None:
    singles = image_requests(ImageRequest.model_validate({"prompt": "p", "num_images": 4}))
    seeds = [single.seed for single in singles]
    assert None not in seeds
    assert [(seed - seeds[0]) % (MAX_SEED + 1) for seed in seeds] == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------------ aspect ratio
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("megapixels", [0.0625, 0.25, 1.0, 2.5, 4])
def test_aspect_ratio_maps_to_multiples_of_16_within_range_and_close_to_the_ratio(
    ratio: str, megapixels: float
) -> None:
    width, height = size_for(ratio, megapixels)
    assert width % 16 == 0 and height % 16 == 0
    assert 256 <= width <= 2048 and 256 <= height <= 2048
    ratio_w, ratio_h = (int(part) for part in ratio.split(":"))
    assert abs(width / height - ratio_w / ratio_h) / (ratio_w / ratio_h) < 0.08


def test_aspect_ratio_default_megapixel_is_1024_squared() -> None:
    assert size_for("1:1") == (1024, 1024)
    assert size_for("16:9") == (1360, 768)
    assert size_for("1:1", 4) == (2048, 2048)
    assert size_for("1:1", 0.0625) == (256, 256)


def test_aspect_ratio_sizes_the_generation_and_shows_in_the_parameters() -> None:
    request = ImageRequest.model_validate({"prompt": "p", "aspect_ratio": "16:9", "seed": 1})
    params = resolve_parameters(request)
    assert (params.width, params.height) == (1360, 768)
    assert params.model_dump(mode="json")["aspect_ratio"] == "16:9"


def test_parameters_of_a_plain_request_are_exactly_the_five_fields() -> None:
    params = resolve_parameters(ImageRequest.model_validate({"prompt": "p", "seed": 3}))
    assert params.model_dump(mode="json") == {
        "prompt": "p",
        "num_steps": 4,
        "seed": 3,
        "width": 1024,
        "height": 1024,
    }


@pytest.mark.parametrize("ratio", ["2:1", "1:2", "16:10", "", "1-1", 1])
def test_unknown_aspect_ratio_names_the_field(ratio: Any) -> None:
    assert set(_errors(ImageRequest, {"prompt": "p", "aspect_ratio": ratio})) == {"aspect_ratio"}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"width": 512}, {"aspect_ratio", "width"}),
        ({"height": 512}, {"aspect_ratio", "height"}),
        ({"width": 512, "height": 512}, {"aspect_ratio", "width", "height"}),
    ],
)
def test_aspect_ratio_with_width_or_height_names_each_field(extra: dict[str, int], named: set[str]) -> None:
    errors = _errors(ImageRequest, {"prompt": "p", "aspect_ratio": "1:1", **extra})
    assert set(errors) == named
    assert all("mutually exclusive" in message for message in errors.values())


def test_megapixels_without_aspect_ratio_names_it() -> None:
    errors = _errors(ImageRequest, {"prompt": "p", "megapixels": 2})
    assert set(errors) == {"megapixels"}
    assert "aspect_ratio" in errors["megapixels"]


@pytest.mark.parametrize("value", [0, 0.06, 4.01, 100, -1])
def test_megapixels_out_of_range_names_it(value: float) -> None:
    assert "megapixels" in _errors(ImageRequest, {"prompt": "p", "aspect_ratio": "1:1", "megapixels": value})


# ------------------------------------------------------------------------------------------------ output format
@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_output_format_is_accepted(fmt: str) -> None:
    assert ImageRequest.model_validate({"prompt": "p", "output_format": fmt}).output_format == fmt


@pytest.mark.parametrize("fmt", ["jpg", "gif", "PNG", "", None, 3])
def test_unknown_output_format_names_it(fmt: Any) -> None:
    payload = {"prompt": "p", "output_format": fmt}
    if fmt is None:
        assert ImageRequest.model_validate(payload).output_format is None  # null = as the upstream made it
    else:
        assert set(_errors(ImageRequest, payload)) == {"output_format"}


@pytest.mark.parametrize("quality", [0, 101, -5])
def test_output_quality_out_of_range_names_it(quality: int) -> None:
    assert "output_quality" in _errors(
        ImageRequest, {"prompt": "p", "output_format": "jpeg", "output_quality": quality}
    )


@pytest.mark.parametrize("fmt", [None, "png"])
def test_output_quality_without_a_lossy_format_names_both_fields(fmt: str | None) -> None:
    payload: dict[str, Any] = {"prompt": "p", "output_quality": 80}
    if fmt is not None:
        payload["output_format"] = fmt
    assert set(_errors(ImageRequest, payload)) == {"output_quality", "output_format"}


# ------------------------------------------------------------------------------------------------ response format
def test_response_format_defaults_to_url_and_refuses_others() -> None:
    assert ImageRequest.model_validate({"prompt": "p"}).response_format == "url"
    assert set(_errors(ImageRequest, {"prompt": "p", "response_format": "base64"})) == {"response_format"}


def test_b64_json_of_one_1024_png_fits_but_a_bigger_png_is_refused_naming_the_fields() -> None:
    assert ImageRequest.model_validate({"prompt": "p", "response_format": "b64_json"}).size == (1024, 1024)
    errors = _errors(ImageRequest, {"prompt": "p", "response_format": "b64_json", "width": 2048, "height": 2048})
    assert set(errors) == {"response_format", "width", "height"}
    assert "6 MB" in errors["response_format"]


def test_b64_json_of_several_pngs_is_refused_naming_num_images() -> None:
    payload = {"prompt": "p", "response_format": "b64_json", "num_images": 2}
    assert set(_errors(ImageRequest, payload)) == {"response_format", "num_images"}
    # A lossy format is not refused up front: its size depends on the image (checked on the stored files)
    assert ImageRequest.model_validate({**payload, "output_format": "jpeg"}).num_images == 2


def test_the_png_inline_limit_is_where_the_docs_say() -> None:
    # 1024x1024 fits, 1248x1248 (about 1.56 MP) does not: the README's figure
    assert inline_length(png_bound(1024, 1024)) <= MAX_INLINE_B64
    assert inline_length(png_bound(1248, 1248)) > MAX_INLINE_B64
    assert 1_500_000 < MAX_INLINE_PNG_PIXELS < 1_600_000


# ------------------------------------------------------------------------------------------------ queued images
@pytest.mark.parametrize("value", [1, 2, 3, 4])
def test_job_items_take_num_images_1_to_4(value: int) -> None:
    job = JobRequest.model_validate({"items": [{"prompt": "ok"}, {"prompt": "p", "num_images": value}]})
    assert job.items is not None and [item.num_images for item in job.items] == [1, value]


@pytest.mark.parametrize(
    ("item", "fields"),
    [
        ({"num_images": 5}, {"items.1.num_images"}),
        ({"num_images": 0}, {"items.1.num_images"}),
        ({"num_images": 2, "response_format": "b64_json"}, {"items.1.num_images", "items.1.response_format"}),
        ({"num_images": 5, "response_format": "b64_json"}, {"items.1.num_images"}),
        ({"response_format": "b64_json", "output_format": "jpeg"}, {"items.1.response_format"}),
    ],
)
def test_job_items_refuse_what_a_job_cannot_honour_naming_each_field(item: dict[str, Any], fields: set[str]) -> None:
    assert set(_errors(JobRequest, {"items": [{"prompt": "ok"}, {"prompt": "p", **item}]})) == fields


def test_job_items_take_the_size_and_format_options() -> None:
    job = JobRequest.model_validate(
        {"items": [{"prompt": "p", "aspect_ratio": "9:16", "output_format": "webp", "output_quality": 70}]}
    )
    assert job.items is not None and job.items[0].size == (768, 1360)


def test_a_stored_item_with_aspect_ratio_reloads() -> None:
    # Given an item as the API stores it (exclude_none), When it is read back, Then it validates the same
    item = ImageRequest.model_validate({"prompt": "p", "aspect_ratio": "21:9", "megapixels": 2})
    again = ImageRequest.model_validate_json(item.model_dump_json(exclude_none=True))
    assert again == item


def test_a_direct_queue_message_may_ask_for_several_images() -> None:
    # A producer's message (no job_id): the worker makes it a job of that many items
    assert JobMessage.model_validate({"request": {"prompt": "p", "num_images": 3}}).request.num_images == 3
    assert set(_errors(JobMessage, {"request": {"prompt": "p", "num_images": 5}})) == {"request.num_images"}


def test_an_item_message_of_a_job_is_one_image_and_says_where_it_comes_from() -> None:
    job = {"job_id": "job_" + "0" * 32, "index": 4}
    # The service's own item message: one image, with its request and image index
    message = JobMessage.model_validate(
        {"request": {"prompt": "p", "seed": 9}, **job, "request_index": 1, "image_index": 2}
    )
    assert (message.request_index, message.image_index) == (1, 2)
    # Several images in an item of a job: refused, naming job_id
    assert set(_errors(JobMessage, {"request": {"prompt": "p", "num_images": 2}, **job})) == {"job_id"}
    # An origin without a job, or half of one: each given field named
    assert set(_errors(JobMessage, {"request": {"prompt": "p"}, "request_index": 0, "image_index": 0})) == {
        "request_index",
        "image_index",
    }
    assert set(_errors(JobMessage, {"request": {"prompt": "p"}, **job, "image_index": 5})) == {"image_index"}
    assert set(_errors(JobMessage, {"request": {"prompt": "p"}, **job, "request_index": 3})) == {"request_index"}


def test_async_request_with_several_images_is_queued_but_inline_bytes_are_a_422() -> None:
    # Prefer: respond-async queues the request as a job: several images are its items
    request = ImageRequest.model_validate({"prompt": "p", "num_images": 2})
    assert job_item_or_422(request) is request
    with pytest.raises(FieldsInvalidError) as caught:
        job_item_or_422(ImageRequest.model_validate({"prompt": "p", "response_format": "b64_json"}))
    assert caught.value.status == 422
    assert [detail["field"] for detail in caught.value.details] == ["response_format"]


# ------------------------------------------------------------------------------------------------ inline bytes
class _FakeStore:
    def __init__(self, length: int) -> None:
        self.length = length

    def inline(self, image: dict[str, Any]) -> int:
        image["image"]["b64_json"] = "A" * self.length
        return self.length


def test_inline_adds_b64_to_a_copy_and_leaves_the_stored_answer_alone() -> None:
    answer = {"status": 201, "body": {"id": "img_1", "image": {"url": "u"}}}
    inlined = inline_images(_FakeStore(8), answer)
    assert inlined["body"]["image"]["b64_json"] == "A" * 8
    assert "b64_json" not in answer["body"]["image"]


def test_inline_past_the_limit_is_a_422_naming_response_format() -> None:
    answer = {"status": 201, "body": {"images": [{"id": "img_1", "image": {}}, {"id": "img_2", "image": {}}]}}
    with pytest.raises(ResponseTooLargeError) as caught:
        inline_images(_FakeStore(MAX_INLINE_B64 // 2 + 1), answer)
    assert caught.value.status == 422
    assert caught.value.details[0]["field"] == "response_format"
    assert "img_1" in caught.value.message and "img_2" in caught.value.message


def test_image_info_leaves_b64_out_unless_set() -> None:
    info = {"url": "u", "url_expires_at": "2026-01-01T00:00:00Z", "s3_uri": "s3://b/k.png", "content_type": "image/png"}
    info |= {"bytes": 1, "sha256": "0" * 64, "width": 1, "height": 1}
    assert "b64_json" not in ImageInfo.model_validate(info).model_dump(mode="json")
    assert ImageInfo.model_validate({**info, "b64_json": "QQ=="}).model_dump(mode="json")["b64_json"] == "QQ=="


def test_generation_parameters_keep_the_options_used() -> None:
    params = GenerationParameters(prompt="p", num_steps=4, seed=1, width=512, height=512, output_format="webp")
    assert params.model_dump(mode="json")["output_format"] == "webp"
    assert "output_quality" not in params.model_dump(mode="json")


@given(ratio=st.sampled_from(RATIOS), megapixels=st.floats(min_value=0.0625, max_value=4))
def test_any_preset_size_is_valid_for_the_upstream_and_near_the_ratio_and_area(ratio: str, megapixels: float) -> None:
    width, height = size_for(ratio, megapixels)
    # Then the sides are what ImageRequest accepts for width/height (so the upstream gets a valid size) ...
    assert ImageRequest.model_validate({"prompt": "p", "width": width, "height": height}).size == (width, height)
    # ... the ratio holds within the rounding to 16 px, and the area is the one asked for unless a side hit a bound
    ratio_w, ratio_h = (int(part) for part in ratio.split(":"))
    assert abs(width / height - ratio_w / ratio_h) / (ratio_w / ratio_h) < 0.08
    if min(width, height) > 256 and max(width, height) < 2048:
        assert abs(width * height / (megapixels * 1024 * 1024) - 1) < 0.1
