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
