"""The Python client of the Flux image service (docs/client.md)::

from flux_images import Client

with Client("http://127.0.0.1:3000", "local-dev-key") as client:
    image = client.generate("a red fox", width=512, height=512)
    job = client.submit(["a lighthouse", {"prompt": "a whale", "seed": 7}])
    job.wait()
    job.download("images")
"""

from flux_images.client import Client, Job
from flux_images.errors import (
    ApiError,
    DownloadError,
    FluxImagesError,
    NetworkError,
    WaitTimeout,
    WebhookVerificationError,
)
from flux_images.idempotency import content_key, new_key
from flux_images.models import Counts, Image, ImageFile, ItemError, JobItem, JobState, Parameters, ResultsFile, Upload
from flux_images.retry import RetryPolicy
from flux_images.webhooks import verify_webhook

__all__ = [
    "ApiError",
    "Client",
    "Counts",
    "DownloadError",
    "FluxImagesError",
    "Image",
    "ImageFile",
    "ItemError",
    "Job",
    "JobItem",
    "JobState",
    "NetworkError",
    "Parameters",
    "ResultsFile",
    "RetryPolicy",
    "Upload",
    "WaitTimeout",
    "WebhookVerificationError",
    "content_key",
    "new_key",
    "verify_webhook",
]
