"""A completed job's results file (``jobs/<job_id>/results.jsonl``), and its announcement.

One line per item in index order: ``{"index", "status", "image_id", "s3_uri", "sha256", "bytes", "width",
"height", "seed", "error"}``, with ``request_index`` and ``image_index`` after ``index`` in a job where some
request asks for several images (nulls where they do not apply). The file is written BEFORE the completion is
announced, under a key derived from the job id: a replayed completion rewrites the same content. Content workflows
read one object instead of paging ``GET /v1/jobs/{id}``.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from imagegen.adapters.job_objects import JobObjects
from imagegen.adapters.jobs_table import Job, JobExtras, JobRepository
from imagegen.entities import ItemResult
from imagegen.item_processor import ItemProcessor
from imagegen.jobs import job_document, results_info
from imagegen.models import ResultsInfo
from imagegen.observability import shared_metrics

logger = Logger(child=True)
metrics = shared_metrics()


def result_line(result: ItemResult) -> dict[str, Any]:
    return {
        "index": result.index,
        **result.origin,  # only in a job with requests of several images
        "status": result.status,
        "image_id": result.image_id,
        "s3_uri": result.s3_uri,
        "sha256": result.sha256,
        "bytes": result.bytes,
        "width": result.width,
        "height": result.height,
        "seed": result.seed,
        "error": result.error.model_dump(mode="json") if result.error is not None else None,
    }


class JobResults:
    def __init__(self, repository: JobRepository, objects: JobObjects) -> None:
        self._repository = repository
        self._objects = objects

    def write(self, job: Job) -> ResultsInfo:
        """Write the results file of a completed job and record it on the job row."""
        lines = [
            json.dumps(result_line(result), separators=(",", ":")) for result in self._repository.iter_results(job.id)
        ]
        key = self._objects.put_results(job.id, lines)
        self._repository.record_results(job.id, key, len(lines))
        info = results_info(self._objects, JobExtras(results_key=key, results_items=len(lines)))
        assert info is not None
        return info


class AnnouncingProcessor(ItemProcessor):
    """The item processor whose job completion writes the results file first, and whose ``Job Completed`` event
    carries it (``job.results``) and the job's correlation id (an event-driven job's). Only ``announce`` differs."""

    def __init__(self, *args: Any, results: JobResults, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._results = results

    def announced(self, job: Job) -> bool:
        """The results file, the first thing an announcement writes, is recorded on the job. An announcement cut
        short after it (the event published, the webhook not yet delivered) is not made again."""
        return job.results_recorded

    def announce(self, job_id: str) -> None:
        job, extras = self._repository.get_job_extras(job_id)
        if job is None:
            return
        results = self._results.write(job)
        document = job_document(job, results=results).model_dump(mode="json", exclude={"items", "next_cursor"})
        self._events.publish("Job Completed", {"job": document, "correlation_id": extras.correlation_id})
        logger.info("job completed", job_id=job_id, status=job.status, results=results.items)
        if job.webhook is not None:
            delivery = self._webhooks.deliver(job.webhook.url, job.id, document)
            self._repository.record_webhook(job.id, "delivered" if delivery.delivered else "failed", delivery.attempts)
            if not delivery.delivered:
                metrics.add_metric(name="WebhooksFailed", unit=MetricUnit.Count, value=1)
