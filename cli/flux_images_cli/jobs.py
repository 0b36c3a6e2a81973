"""Following a job: polling with a progress bar until it is terminal, and the summaries printed at the end."""

from __future__ import annotations

from typing import Any

from flux_images import Job

from flux_images_cli import api
from flux_images_cli.api import ApiClient
from flux_images_cli.progress import ProgressLine

TERMINAL_JOB_STATUSES = frozenset({"succeeded", "failed", "partially_failed", "canceled"})
COUNT_NAMES = ("succeeded", "failed", "canceled", "running", "queued")
FIRST_FAILURES = 5
MAX_POLL_INTERVAL = 30.0


def counts_of(job: dict[str, Any]) -> dict[str, int]:
    counts = job.get("counts") or {}
    return {name: int(counts.get(name) or 0) for name in COUNT_NAMES}


def finished(job: dict[str, Any]) -> int:
    counts = counts_of(job)
    return counts["succeeded"] + counts["failed"] + counts["canceled"]


def is_terminal(job: dict[str, Any]) -> bool:
    return job.get("status") in TERMINAL_JOB_STATUSES


def wait_for(client: ApiClient, job_id: str, *, poll_interval: float, progress: bool) -> dict[str, Any]:
    """Follow the job with ``flux_images.Job.wait`` until it is terminal, drawing its progress on stderr.

    Polls come every ``poll_interval`` seconds while the counts move, and back off (×1.5, up to
    ``MAX_POLL_INTERVAL``) while they do not, so a long job does not eat the usage plan's request quota.
    KeyboardInterrupt propagates (the caller says how to resume); nothing is canceled.
    """
    job = Job(client.flux, job_id)
    with ProgressLine(job_id, enabled=progress) as line, api.cli_errors():
        state = job.wait(progress=line.update, poll_interval=poll_interval, max_poll_interval=MAX_POLL_INTERVAL)
    return state.raw


def first_failures(client: ApiClient, job_id: str, limit: int = FIRST_FAILURES) -> list[dict[str, Any]]:
    """The first ``limit`` failed items, reading pages only as far as needed."""
    failures: list[dict[str, Any]] = []
    for _, page in client.iter_job_pages(job_id):
        for item in page.get("items") or []:
            if item.get("status") == "failed":
                failures.append(item)
                if len(failures) >= limit:
                    return failures
    return failures


def _prompt_of(item: dict[str, Any]) -> str:
    request = item.get("request") or {}
    prompt = str(request.get("prompt") or "")
    return prompt if len(prompt) <= 40 else prompt[:39] + "…"


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def summary(job: dict[str, Any], failures: list[dict[str, Any]]) -> str:
    """The job's status, counts, and its first failures with their codes."""
    counts = counts_of(job)
    total = int(job.get("total") or sum(counts.values()))
    lines = [f"job {job.get('id')}: {job.get('status')}"]
    header = ["total", *COUNT_NAMES]
    lines += _table([header, [str(total)] + [str(counts[name]) for name in COUNT_NAMES]])
    if failures:
        shown = "first " if counts["failed"] > len(failures) else ""
        lines.append(f"{shown}failures:")
        rows = [["index", "code", "message", "prompt"]]
        for item in failures:
            error = item.get("error") or {}
            message = str(error.get("message") or "")
            rows.append(
                [
                    f"{int(item.get('index') or 0):04d}",
                    str(error.get("code") or "?"),
                    message if len(message) <= 60 else message[:59] + "…",
                    _prompt_of(item),
                ]
            )
        lines += _table(rows)
    return "\n".join(lines)


def status_text(job: dict[str, Any], failures: list[dict[str, Any]]) -> str:
    """The one-shot ``status`` report: the summary plus dates, webhook and metadata."""
    lines = [summary(job, failures)]
    lines.append(f"created:   {job.get('created_at')}")
    if job.get("completed_at"):
        lines.append(f"completed: {job.get('completed_at')}")
    results = job.get("results")
    if isinstance(results, dict) and results.get("s3_uri"):
        lines.append(f"results:   {results.get('s3_uri')} ({results.get('items')} items)")
    webhook = job.get("webhook")
    if isinstance(webhook, dict):
        attempts = webhook.get("attempts")
        lines.append(f"webhook:   {webhook.get('status')} ({attempts} attempt{'s' if attempts != 1 else ''})")
    if job.get("metadata"):
        lines.append(f"metadata:  {api.dumps_compact(job.get('metadata'))}")
    return "\n".join(lines)


def exit_code_of(job: dict[str, Any]) -> int:
    """0 when every item succeeded, 1 otherwise (failed, canceled, or not finished)."""
    counts = counts_of(job)
    total = int(job.get("total") or 0)
    return 0 if job.get("status") == "succeeded" or (total and counts["succeeded"] == total) else 1
