"""The Python client (``flux_images``) against the local stack over real HTTP: the real API's documents, errors,
presigned URLs and signed webhooks, not a fake's."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from flux_images import ApiError, Client, verify_webhook
from flux_images.errors import WebhookVerificationError
from support.secrets_under_test import API_KEY


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
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(received) == 1
    headers, body = received[0]
    secret = stack.resources.webhook_secret_value
    payload = verify_webhook(headers, body, secret)
    assert payload["id"] == job.id and payload["status"] == "succeeded"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, body.replace(b"succeeded", b"failed"), secret)
