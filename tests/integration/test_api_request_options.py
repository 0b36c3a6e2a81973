"""POST /v1/images with the options of issue 11, through the real API handler under moto + the Flux emulator."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
from typing import Any

import pytest
import requests
from PIL import Image
from support.events import load_event

PROMPT = "a lighthouse on a cliff at dusk"


def post(invoke: Any, payload: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
    event = load_event("post_image")
    event["body"] = json.dumps(payload)
    event["headers"] = {**event.get("headers", {}), **(headers or {})}
    event["multiValueHeaders"] = {**event.get("multiValueHeaders", {}), **{k: [v] for k, v in (headers or {}).items()}}
    response = invoke(event)
    return response["statusCode"], json.loads(response["body"])


def stored_bytes(stack: Any, document: dict[str, Any]) -> bytes:
    bucket, key = document["image"]["s3_uri"].removeprefix("s3://").split("/", 1)
    return stack.aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def test_handler_201_num_images_3_gives_three_pngs_with_consecutive_seeds(invoke, stack, emulator):
    # Given three images asked for from seed 40
    status, body = post(invoke, {"prompt": PROMPT, "num_images": 3, "seed": 40, "width": 256, "height": 256})

    # Then three documents, seeds 40, 41, 42, each its own id, each a PNG stored and fetchable by its id
    assert status == 201, body
    assert set(body) == {"images", "failed"} and body["failed"] == []
    assert [image["parameters"]["seed"] for image in body["images"]] == [40, 41, 42]
    assert len({image["id"] for image in body["images"]}) == 3
    assert emulator.calls == 3
    for image in body["images"]:
        data = stored_bytes(stack, image)
        assert data.startswith(b"\x89PNG") and hashlib.sha256(data).hexdigest() == image["image"]["sha256"]
        event = load_event("get_image")
        event["path"] = f"/v1/images/{image['id']}"
        event["pathParameters"] = {"id": image["id"]}
        fetched = invoke(event)
        assert fetched["statusCode"] == 200
        assert json.loads(fetched["body"])["parameters"]["seed"] == image["parameters"]["seed"]


def test_handler_201_num_images_1_is_exactly_the_single_document(invoke, emulator):
    status, body = post(invoke, {"prompt": PROMPT, "num_images": 1, "seed": 7, "width": 256, "height": 256})
    assert status == 201, body
    assert "images" not in body and body["id"].startswith("img_")
    assert body["parameters"] == {"prompt": PROMPT, "num_steps": 4, "seed": 7, "width": 256, "height": 256}
    assert "b64_json" not in body["image"]


def test_handler_201_partial_failure_lists_the_failed_image_and_keeps_the_others(invoke, emulator):
    # Given the upstream refuses exactly one of the three calls
    emulator.inject("bad_request", count=1)
    status, body = post(invoke, {"prompt": PROMPT, "num_images": 3, "seed": 100, "width": 256, "height": 256})
    # Then the two successes are answered and the failure is named with its seed (all three calls were made)
    assert status == 201, body
    assert len(body["images"]) == 2 and len(body["failed"]) == 1
    assert body["failed"][0]["code"] == "upstream_rejected"
    seeds = {image["parameters"]["seed"] for image in body["images"]} | {body["failed"][0]["seed"]}
    assert seeds == {100, 101, 102}
    assert emulator.calls == 3


def test_handler_all_images_failing_answers_the_first_error(invoke, emulator):
    emulator.inject("bad_request", count=None)
    status, body = post(invoke, {"prompt": PROMPT, "num_images": 2, "width": 256, "height": 256})
    assert status == 400
    assert body["error"]["code"] == "upstream_rejected"


def test_handler_201_aspect_ratio_16_9(invoke, stack, emulator):
    status, body = post(invoke, {"prompt": PROMPT, "aspect_ratio": "16:9", "megapixels": 0.25})
    assert status == 201, body
    width, height = body["parameters"]["width"], body["parameters"]["height"]
    assert (width, height) == (688, 384) and width % 16 == 0 and height % 16 == 0
    assert body["parameters"]["aspect_ratio"] == "16:9"
    assert (body["image"]["width"], body["image"]["height"]) == (688, 384)
    with Image.open(io.BytesIO(stored_bytes(stack, body))) as image:
        assert image.size == (688, 384)


@pytest.mark.parametrize(
    ("fmt", "content_type", "extension", "pillow_format"),
    [("webp", "image/webp", "webp", "WEBP"), ("jpeg", "image/jpeg", "jpg", "JPEG"), ("png", "image/png", "png", "PNG")],
)
def test_handler_201_output_format_stores_that_format(
    invoke, stack, emulator, fmt, content_type, extension, pillow_format
):
    status, body = post(invoke, {"prompt": PROMPT, "width": 512, "height": 256, "output_format": fmt})
    assert status == 201, body
    image = body["image"]
    data = stored_bytes(stack, body)
    # Then what is described is what is stored
    assert image["content_type"] == content_type
    assert image["s3_uri"].endswith(f".{extension}")
    assert image["bytes"] == len(data) and image["sha256"] == hashlib.sha256(data).hexdigest()
    assert (image["width"], image["height"]) == (512, 256)
    head = stack.aws.client("s3").head_object(
        Bucket=stack.resources.bucket, Key=image["s3_uri"].removeprefix("s3://").split("/", 1)[1]
    )
    assert head["ContentType"] == content_type
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == pillow_format and decoded.size == (512, 256)
    downloaded = requests.get(image["url"], timeout=10)
    assert downloaded.content == data


def test_handler_output_quality_changes_the_jpeg(invoke, stack, emulator):
    sizes = []
    for quality in (10, 95):
        body = {"prompt": PROMPT, "seed": 5, "width": 512, "height": 512, "output_format": "jpeg"}
        status, answer = post(invoke, {**body, "output_quality": quality})
        assert status == 201, answer
        assert answer["parameters"]["output_quality"] == quality
        sizes.append(answer["image"]["bytes"])
    assert sizes[0] < sizes[1]


def test_handler_201_b64_json_returns_the_stored_bytes_inline(invoke, stack, emulator):
    status, body = post(invoke, {"prompt": PROMPT, "width": 256, "height": 256, "response_format": "b64_json"})
    assert status == 201, body
    inline = base64.b64decode(body["image"]["b64_json"])
    assert inline == stored_bytes(stack, body)
    assert hashlib.sha256(inline).hexdigest() == body["image"]["sha256"]


def test_handler_b64_json_with_several_webp_images(invoke, stack, emulator):
    payload = {"prompt": PROMPT, "num_images": 2, "aspect_ratio": "1:1", "megapixels": 0.0625}
    status, body = post(invoke, {**payload, "output_format": "webp", "response_format": "b64_json"})
    assert status == 201, body
    for image in body["images"]:
        assert base64.b64decode(image["image"]["b64_json"])[8:12] == b"WEBP"


def test_handler_b64_json_idempotent_replay_reads_the_bytes_again_without_a_new_generation(api, stack, emulator):
    body = {"prompt": PROMPT, "width": 256, "height": 256, "response_format": "b64_json"}
    key = f"b64-{time.monotonic_ns()}"
    first = api("POST", "/v1/images", json=body, headers={"Idempotency-Key": key})
    second = api("POST", "/v1/images", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 201, first.text
    assert first.json()["id"] == second.json()["id"]
    assert first.json()["image"]["b64_json"] == second.json()["image"]["b64_json"]
    assert emulator.calls == 1


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({"aspect_ratio": "16:9", "width": 512}, {"aspect_ratio", "width"}),
        ({"aspect_ratio": "16:9", "width": 512, "height": 512}, {"aspect_ratio", "width", "height"}),
        ({"megapixels": 2}, {"megapixels"}),
        ({"output_quality": 50}, {"output_quality", "output_format"}),
        ({"output_format": "gif"}, {"output_format"}),
        ({"num_images": 5}, {"num_images"}),
        ({"response_format": "b64_json", "width": 2048, "height": 2048}, {"response_format", "width", "height"}),
        ({"response_format": "b64_json", "num_images": 3}, {"response_format", "num_images"}),
    ],
)
def test_handler_422_names_each_field_of_an_invalid_combination(invoke, emulator, payload, fields):
    status, body = post(invoke, {"prompt": PROMPT, **payload})
    assert status == 422, body
    assert {detail["field"] for detail in body["error"]["details"]} == fields
    assert emulator.calls == 0


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({"response_format": "b64_json"}, {"response_format"}),
        ({"response_format": "b64_json", "num_images": 2}, {"response_format", "num_images"}),
        ({"num_images": 5}, {"num_images"}),
    ],
)
def test_handler_422_async_refuses_what_a_queued_image_cannot_honour(invoke, emulator, payload, fields):
    status, body = post(invoke, {"prompt": PROMPT, **payload}, headers={"Prefer": "respond-async"})
    assert status == 422, body
    assert {detail["field"] for detail in body["error"]["details"]} == fields
    assert emulator.calls == 0


def test_handler_202_async_with_num_images_queues_a_job_of_that_many_items(invoke, emulator):
    status, body = post(
        invoke, {"prompt": PROMPT, "num_images": 3, "width": 256, "height": 256}, headers={"Prefer": "respond-async"}
    )
    assert status == 202, body
    assert body["id"].startswith("job_") and body["total"] == 3 and body["counts"]["queued"] == 3
