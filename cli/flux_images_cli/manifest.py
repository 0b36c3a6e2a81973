"""``manifest.jsonl`` and ``manifest.csv``: one record per item of a job, in index order.

Columns (the same in both files; empty / null when not applicable):

``job_id, index, status, prompt, seed, num_steps, width, height, file, sha256, bytes, image_id, error_code,
error_message``

``status`` is the item's status in the job (``succeeded``, ``failed``, ``canceled``, ``queued``, ``running``),
or ``download_failed`` when the item succeeded but its image could not be downloaded or verified (``error_code``
then says why: ``sha256_mismatch``, ``size_mismatch``, ``url_expired``, ``download_error``, ``not_found``, …).
``file``, ``sha256`` and ``bytes`` describe the verified local file (``file`` is relative to the manifest).
Read from the job's ``results.jsonl`` (``row_for_result``), a failed or canceled item has no ``prompt`` or
``num_steps`` unless the caller knows the request it submitted: the results file does not carry them.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

COLUMNS = (
    "job_id",
    "index",
    "status",
    "prompt",
    "seed",
    "num_steps",
    "width",
    "height",
    "file",
    "sha256",
    "bytes",
    "image_id",
    "error_code",
    "error_message",
)
JSONL_NAME = "manifest.jsonl"
CSV_NAME = "manifest.csv"


def row_for(job_id: str, item: dict[str, Any]) -> dict[str, Any]:
    """The manifest record of a job item, before any download (``file``, ``sha256``, ``bytes`` unset)."""
    request = item.get("request") or {}
    image = item.get("image") or {}
    parameters = image.get("parameters") or {}
    info = image.get("image") or {}
    error = item.get("error") or {}

    def pick(name: str, *sources: dict[str, Any]) -> Any:
        for source in sources:
            if source.get(name) is not None:
                return source[name]
        return None

    return {
        "job_id": job_id,
        "index": item.get("index"),
        "status": item.get("status"),
        "prompt": pick("prompt", parameters, request),
        "seed": pick("seed", parameters, request),
        "num_steps": pick("num_steps", parameters, request),
        "width": pick("width", info, parameters, request),
        "height": pick("height", info, parameters, request),
        "file": None,
        "sha256": None,
        "bytes": None,
        "image_id": image.get("id"),
        "error_code": error.get("code"),
        "error_message": error.get("message"),
    }


def row_for_result(job_id: str, record: dict[str, Any], request: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest record of a line of the job's ``results.jsonl``. The file names no prompt: it comes from the
    image document for a succeeded item, and from ``request`` (the submitted item, when known) otherwise."""
    request = request or {}
    error = record.get("error") or {}

    def pick(name: str) -> Any:
        return record[name] if record.get(name) is not None else request.get(name)

    return {
        "job_id": job_id,
        "index": record.get("index"),
        "status": record.get("status"),
        "prompt": request.get("prompt"),
        "seed": pick("seed"),
        "num_steps": request.get("num_steps"),
        "width": pick("width"),
        "height": pick("height"),
        "file": None,
        "sha256": None,
        "bytes": None,
        "image_id": record.get("image_id"),
        "error_code": error.get("code"),
        "error_message": error.get("message"),
    }


def write(directory: Path, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write both manifests atomically (a reader never sees half a file); rows are sorted by index."""
    ordered = sorted(rows, key=lambda row: (row.get("job_id") or "", row.get("index") or 0))
    jsonl_path, csv_path = directory / JSONL_NAME, directory / CSV_NAME

    def replace(path: Path, text: str) -> None:
        part = path.with_name(path.name + ".part")
        with open(part, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(part, path)

    replace(
        jsonl_path, "".join(json.dumps({c: row.get(c) for c in COLUMNS}, ensure_ascii=False) + "\n" for row in ordered)
    )

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in ordered:
        writer.writerow({column: "" if row.get(column) is None else row[column] for column in COLUMNS})
    replace(csv_path, buffer.getvalue())
    return jsonl_path, csv_path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
