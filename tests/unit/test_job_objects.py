"""A job's items object cut into fan-out chunks: byte ranges and line numbers, blank lines skipped (no sockets)."""

from __future__ import annotations

import io
from typing import Any

from imagegen.adapters.job_objects import JobObjects


class FakeBody(io.BytesIO):
    def iter_chunks(self, size: int) -> Any:
        while block := self.read(3):  # tiny blocks: lines straddle them
            yield block


class FakeS3:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def get_object(self, Bucket: str, Key: str, Range: str | None = None) -> dict[str, Any]:
        if Range is None:
            return {"Body": FakeBody(self.data)}
        start, end = (int(part) for part in Range.removeprefix("bytes=").split("-"))
        return {"Body": FakeBody(self.data[start : end + 1])}


def test_plan_counts_non_blank_lines_and_chunks_keep_their_line_numbers():
    # Given a file of 7 items with blank lines between, at the start and at the end (no final newline)
    lines = ["", "a0", "a1", "  ", "a2", "a3", "", "a4", "a5", "a6", "\r", ""]
    data = "\n".join(lines).encode()
    objects = JobObjects(FakeS3(data), "bucket")
    # When it is planned in chunks of 3
    plan = objects.plan("jobs/x/items.jsonl", chunk_items=3)
    # Then there are 7 items in 3 chunks, each starting at its first item's line
    assert plan.items == 7
    assert [(chunk.index, chunk.line) for chunk in plan.chunks] == [(0, 2), (3, 6), (6, 10)]
    # and reading each chunk's range gives back exactly its items, at their line numbers
    seen = []
    for chunk in plan.chunks:
        text = objects.read_range("k", chunk.offset, chunk.end)
        for line_no, raw in enumerate(text.split(b"\n"), start=chunk.line):
            if raw.strip():
                seen.append((line_no, raw.decode()))
    assert seen == [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]


def test_an_empty_file_has_no_items_and_no_chunks():
    plan = JobObjects(FakeS3(b"\n \n"), "bucket").plan("k")
    assert plan.items == 0 and plan.chunks == []


def test_a_line_makes_as_many_items_as_its_num_images_and_chunks_keep_lines_whole():
    # Given requests of 1, 3, 4, 1 and 2 images, a blank line, and lines that only look like several
    lines = [
        '{"prompt": "a"}',
        '{"prompt": "b", "num_images": 3}',
        "",
        '{"prompt": "c", "num_images": 4}',
        '{"prompt": "num_images in the prompt"}',
        '{"prompt": "e", "num_\\u0069mages": 2}',  # an escaped key still counts
        '{"prompt": "f", "num_images": 5}',  # out of range: one (failed) item
        '{"prompt": "g", "num_images": true}',  # not an integer: one (failed) item
        "not json, num_images",
    ]
    objects = JobObjects(FakeS3("\n".join(lines).encode()), "bucket")
    # When it is planned in chunks of at most 5 items
    plan = objects.plan("k", chunk_items=5)
    # Then the items are the images (1+3+4+1+2+1+1+1), the requests the non-blank lines
    assert (plan.items, plan.requests) == (14, 8)
    # and a chunk never splits a line nor holds more than 5 items; each says its first request and its items
    assert [(chunk.index, chunk.line, chunk.request_index, chunk.items) for chunk in plan.chunks] == [
        (0, 1, 0, 4),  # a, b (1 + 3): c's 4 would make 8
        (4, 4, 2, 5),  # c, d
        (9, 6, 4, 5),  # e, f, g, not json (2 + 1 + 1 + 1)
    ]
    assert sum(chunk.items or 0 for chunk in plan.chunks) == plan.items


def test_a_plan_of_single_images_is_the_plan_from_before_num_images():
    lines = [f'{{"prompt": "p{i}", "num_images": 1}}' if i % 2 else f'{{"prompt": "p{i}"}}' for i in range(7)]
    plan = JobObjects(FakeS3("\n".join(lines).encode()), "bucket").plan("k", chunk_items=3)
    assert (plan.items, plan.requests) == (7, 7)
    assert [chunk.model_dump(exclude_none=True) for chunk in plan.chunks] == [
        {"index": 0, "line": 1, "offset": plan.chunks[0].offset, "end": plan.chunks[0].end},
        {"index": 3, "line": 4, "offset": plan.chunks[1].offset, "end": plan.chunks[1].end},
        {"index": 6, "line": 7, "offset": plan.chunks[2].offset, "end": plan.chunks[2].end},
    ]
