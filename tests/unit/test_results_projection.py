"""The results file's read of an item row: the projection DynamoDB is asked for (every path's every name aliased, as
DynamoDB requires of reserved words anywhere in a path, which moto does not check) and the line made of its answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import moto.dynamodb.parsing
import pytest
from boto3.dynamodb.types import TypeSerializer
from imagegen.adapters.job_rows import RESULT_NAMES, RESULT_PROJECTION, result_from_row
from imagegen.results import result_line

RESERVED = {
    word.strip().upper()
    for word in (Path(moto.dynamodb.parsing.__file__).parent / "reserved_keywords.txt").read_text().splitlines()
}
serialize = TypeSerializer().serialize


def projection_paths() -> list[list[str]]:
    return [[RESULT_NAMES[name] for name in path.split(".")] for path in RESULT_PROJECTION.split(", ")]


def test_every_name_of_every_path_is_aliased_and_the_reserved_ones_need_it() -> None:
    names = [name for path in RESULT_PROJECTION.split(", ") for name in path.split(".")]
    assert all(name.startswith("#") and name in RESULT_NAMES for name in names)
    # the aliases are needed: DynamoDB's reserved words include nested names of these paths, not only the first
    assert {"STORED", "PARAMETERS", "STATUS", "INDEX"} <= {RESULT_NAMES[name].upper() for name in names} & RESERVED


def row(**attributes: Any) -> dict[str, Any]:
    """A projected row as DynamoDB answers it (only the paths that exist)."""
    return {name: serialize(value) for name, value in attributes.items()}


STORED = {
    "bucket": "b",
    "key": "images/jobs/job_1/0001.png",
    "sha256": "ab" * 32,
    "bytes": 10,
    "width": 64,
    "height": 32,
}


# A line's image fields, in the file's order: none (an item without an image), or STORED's
NO_IMAGE = {"image_id": None, "s3_uri": None, "sha256": None, "bytes": None, "width": None, "height": None}
STORED_URI = "s3://b/images/jobs/job_1/0001.png"


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        pytest.param(  # the image's own seed, not the request's
            row(
                index=1,
                status="succeeded",
                record={"id": "img_1", "stored": STORED, "parameters": {"seed": 7}},
                request={"seed": 5},
            ),
            {"index": 1, "status": "succeeded", "image_id": "img_1", "s3_uri": STORED_URI, "sha256": "ab" * 32}
            | {"bytes": 10, "width": 64, "height": 32, "seed": 7, "error": None},
            id="succeeded",
        ),
        pytest.param(  # failed after validation: its request's seed and its error
            row(index=2, status="failed", error={"code": "upstream_error", "message": "no"}, request={"seed": 9}),
            {
                "index": 2,
                "status": "failed",
                **NO_IMAGE,
                "seed": 9,
                "error": {"code": "upstream_error", "message": "no"},
            },
            id="failed-with-request",
        ),
        pytest.param(  # a bad line: no request, no seed
            row(index=3, status="failed", error={"code": "invalid_request", "message": "line 4: prompt: missing"}),
            {"index": 3, "status": "failed", **NO_IMAGE, "seed": None}
            | {"error": {"code": "invalid_request", "message": "line 4: prompt: missing"}},
            id="bad-line",
        ),
        pytest.param(  # a request of several images: its origin after the index
            row(index=4, status="queued", request_index=1, image_index=2, request={"seed": 12}),
            {
                "index": 4,
                "request_index": 1,
                "image_index": 2,
                "status": "queued",
                **NO_IMAGE,
                "seed": 12,
                "error": None,
            },
            id="origin",
        ),
        pytest.param(  # an image without dimensions, and a null error attribute
            row(
                index=5,
                status="succeeded",
                error=None,
                record={"id": "img_5", "stored": {**STORED, "width": None, "height": None}, "parameters": {"seed": 0}},
            ),
            {"index": 5, "status": "succeeded", "image_id": "img_5", "s3_uri": STORED_URI, "sha256": "ab" * 32}
            | {"bytes": 10, "width": None, "height": None, "seed": 0, "error": None},
            id="no-dimensions",
        ),
    ],
)
def test_a_projected_row_makes_its_results_line(raw: dict[str, Any], line: dict[str, Any]) -> None:
    made = result_line(result_from_row(raw))
    assert made == line and list(made) == list(line)  # the keys in the file's order too
