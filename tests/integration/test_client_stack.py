"""The Python client (``flux_images``) against the local stack over real HTTP: the real API's documents, errors,
presigned URLs and signed webhooks, not a fake's."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from flux_images import ApiError, Client, verify_webhook
from flux_images.errors import WebhookVerificationError
from flux_images_cli.api import ApiClient
from flux_images_cli.download import Downloader
from support.polling import eventually
from support.secrets_under_test import API_KEY
from support.stack_fixtures import the_delivery


def test_the_client_generates_submits_follows_downloads_and_verifies_the_webhook(
    stack, emulator, webhook_receiver, tmp_path: Path
) -> None:
    url, received = webhook_receiver
    with Client(stack.url, API_KEY) as client:
        # One image: typed, and fetched again by id with the same content
        image = client.generate("a lighthouse in a storm", width=512, height=256, seed=3)
        assert image.id.startswith("img_") and (image.file.width, image.file.height) == (512, 256)
        assert image.parameters.seed == 3 and client.image(image.id).sha256 == image.sha256

        # Bad input: an ApiError naming the field, nothing sent upstream
        calls = emulator.calls
        with pytest.raises(ApiError) as caught:
            client.generate("a fox", width=500)
        assert caught.value.status == 422 and caught.value.code == "validation_error"
        assert "body.width" in {detail["location"] for detail in caught.value.details} and emulator.calls == calls

        # A job with a webhook, followed with progress, downloaded and checked against the bucket's bytes
        job = client.submit(["a red fox", {"prompt": "a blue whale", "width": 256, "height": 256}], webhook_url=url)
        seen = []
        final = job.wait(progress=seen.append, poll_interval=0.3, timeout=60)
        assert final.status == "succeeded" and final.counts.succeeded == 2 and seen[-1] is final
        results = job.results()
        assert [item.status for item in results] == ["succeeded", "succeeded"]
        files = job.download(tmp_path / "images")
        assert [path.name for path in files] == ["0000.png", "0001.png"]
        for path, item in zip(files, results, strict=True):
            assert item.image is not None and hashlib.sha256(path.read_bytes()).hexdigest() == item.image.sha256

    # The webhook the worker delivered verifies with the stack's secret; a forged one does not
    headers, body = the_delivery(received)
    secret = stack.resources.webhook_secret_value
    payload = verify_webhook(headers, body, secret)
    assert payload["id"] == job.id and payload["status"] == "succeeded"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, body.replace(b"succeeded", b"failed"), secret)


def test_a_download_costs_one_api_call_per_page_of_100_images_and_a_resume_fetches_nothing(
    stack, emulator, tmp_path: Path
) -> None:
    # Given a finished job of three images on the local stack, and a record of every API call and bucket fetch
    calls: list[str] = []
    fetches: list[str] = []

    def recorder(into: list[str]) -> Any:
        def record(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            into.append(f"{response.request.method} {urlsplit(response.url).path}")

        return record

    with Client(stack.url, API_KEY) as client:
        job = client.submit(["a red fox", "a blue whale", "an owl at dusk"])
        assert job.wait(poll_interval=0.3, timeout=60).status == "succeeded"
        # The job reads completed a moment before its results file is recorded on it (the worker writes the file
        # after the completion it won): until then a download reads the job's pages instead of the file
        eventually(lambda: job.refresh().results is not None, 30, "the job's results file to be recorded")
        job_path = f"GET {urlsplit(stack.url).path.rstrip('/')}/v1/jobs/{job.id}"
        client.session.hooks["response"].append(recorder(calls))
        client._files.hooks["response"].append(recorder(fetches))

        # When the client downloads it, twice
        files = job.download(tmp_path / "client")
        first_calls, first_fetches = list(calls), list(fetches)
        assert job.download(tmp_path / "client") == files

    # Then each run is one call (the job's one page, which carries the URLs) and the results file; the second
    # fetches no image
    assert first_calls == [job_path] and len(first_fetches) == 4 and first_fetches[0].endswith("/results.jsonl")
    assert calls == [job_path, job_path] and fetches == [*first_fetches, first_fetches[0]]

    # And the CLI's download: one call (the job), the results file and the three images from the bucket
    calls.clear()
    fetches.clear()
    api_client = ApiClient(stack.url, API_KEY)
    api_client.flux.session.hooks["response"].append(recorder(calls))
    api_client.flux._files.hooks["response"].append(recorder(fetches))  # the presigned URLs: the client's fetch
    downloader = Downloader(api_client, tmp_path / "cli", progress=False)
    try:
        report = downloader.run(job.id)
    finally:
        api_client.close()
    assert calls == [job_path] and report.downloaded == 3 and not report.failures
    assert len(fetches) == 4 and fetches[0].endswith("/results.jsonl")
    assert [row["file"] for row in report.rows] == [
        "0000-a-red-fox.png",
        "0001-a-blue-whale.png",
        "0002-an-owl-at-dusk.png",
    ]
    for path, row in zip(files, report.rows, strict=True):
        assert hashlib.sha256((tmp_path / "cli" / row["file"]).read_bytes()).hexdigest() == row["sha256"]
        assert path.read_bytes() == (tmp_path / "cli" / row["file"]).read_bytes()
