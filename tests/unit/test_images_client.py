"""The Python client (``flux_images``, docs/client.md) against the fake jobs API of the CLI tests.

Every wait goes through the client's injected ``sleep`` (recorded, not slept) and every deadline through its
injected ``clock``, so nothing here depends on the machine's speed.
"""

from __future__ import annotations

import io
import json
import math
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cli_fake_server import FakeJobsApi, page_offset
from flux_images import (
    ApiError,
    Client,
    DownloadError,
    Image,
    JobState,
    NetworkError,
    RetryPolicy,
    WaitTimeout,
    WebhookVerificationError,
    content_key,
    idempotency,
    verify_webhook,
)
from flux_images.client import parse_results
from flux_images_cli import inputs

API_KEY = "client-test-key-s3cr3t-0123456789"


class FakeClock:
    """A clock that moves only when the client sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake() -> Iterator[FakeJobsApi]:
    with FakeJobsApi(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def client_for(url: str, clock: FakeClock, **options: object) -> Client:
    return Client(url, API_KEY, sleep=clock.sleep, clock=clock, **options)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ images
def test_generate_returns_a_typed_image_and_sends_an_idempotency_key(fake: FakeJobsApi, clock: FakeClock) -> None:
    # Given a client; When one image is generated
    with client_for(fake.url, clock) as client:
        image = client.generate("a red fox", width=512, height=512, seed=7)
    # Then the result is typed, and the request carried the key header, a fresh Idempotency-Key and only the
    # fields given
    assert isinstance(image, Image) and image.id.startswith("img_")
    assert (image.parameters.prompt, image.parameters.width, image.parameters.seed) == ("a red fox", 512, 7)
    assert image.file.content_type == "image/png" and len(image.sha256) == 64 and image.url.startswith(fake.url)
    (seen,) = fake.requests_to("generate")
    assert seen.headers["x-api-key"] == API_KEY
    assert seen.headers["idempotency-key"].startswith("flux-images-") and len(seen.headers["idempotency-key"]) == 44
    assert seen.json == {"prompt": "a red fox", "width": 512, "height": 512, "seed": 7}


def test_two_generate_calls_with_the_same_prompt_are_two_images(fake: FakeJobsApi, clock: FakeClock) -> None:
    with client_for(fake.url, clock) as client:
        first, second = client.generate("same"), client.generate("same")
    keys = {seen.headers["idempotency-key"] for seen in fake.requests_to("generate")}
    assert first.id != second.id and len(keys) == 2


def test_generate_follows_a_202_job_to_its_image_or_its_error(fake: FakeJobsApi, clock: FakeClock) -> None:
    # Given a deployment that queues the image as a one-item job (202) instead of answering with it
    fake.generate_async = True
    with client_for(fake.url, clock) as client:
        # When an image is asked for, Then the job is followed to its image
        image = client.generate("a slow fox")
        assert image.parameters.prompt == "a slow fox" and image.id.startswith("img_")
        # And an item that fails is the item's error
        with pytest.raises(ApiError) as caught:
            client.generate("[fail] a ghost")
    assert caught.value.code == "upstream_rejected" and caught.value.context.startswith("job job_")
    assert len(fake.requests_to("generate")) == 2 and fake.requests_to("get")


def test_api_errors_carry_code_message_details_status_and_request_id(fake: FakeJobsApi, clock: FakeClock) -> None:
    with client_for(fake.url, clock) as client, pytest.raises(ApiError) as caught:
        client.generate(" ")
    error = caught.value
    assert (error.status, error.code, error.request_id) == (422, "validation_error", "rq-2")
    assert error.details[0]["location"] == "body.prompt" and "prompt" in error.message
    assert "HTTP 422 validation_error" in str(error) and API_KEY not in str(error) and API_KEY not in repr(client)
    assert clock.sleeps == []  # a 422 is not retried


def test_a_wrong_key_is_a_403_without_the_key_in_the_message(fake: FakeJobsApi, clock: FakeClock) -> None:
    wrong = "wrong-key-do-not-print-0123"
    with Client(fake.url, wrong, sleep=clock.sleep, clock=clock) as client, pytest.raises(ApiError) as caught:
        client.image("img_x")
    assert caught.value.status == 403 and caught.value.code == "invalid_api_key"
    assert wrong not in str(caught.value) and wrong not in repr(caught.value.__dict__)


# ------------------------------------------------------------------------------------------------ retries
def test_429_and_503_are_retried_honouring_retry_after_with_the_same_idempotency_key(
    fake: FakeJobsApi, clock: FakeClock
) -> None:
    fake.fail("create", 429, code="throttled", headers={"Retry-After": "2"})
    fake.fail("create", 503, code="upstream_unavailable", headers={"Retry-After": "0.5"})
    retries: list[str] = []
    with client_for(fake.url, clock, on_retry=retries.append) as client:
        job = client.submit(["a", "b"])
    assert job.id.startswith("job_") and len(fake.jobs) == 1
    assert clock.sleeps == [2.0, 0.5]
    keys = {seen.headers["idempotency-key"] for seen in fake.requests_to("create")}
    assert len(fake.requests_to("create")) == 3 and len(keys) == 1
    assert retries[0] == "POST /v1/jobs: HTTP 429 throttled; retrying in 2.0 s (attempt 2)"


def test_retries_are_bounded_and_never_sleep_after_the_last_attempt(fake: FakeJobsApi, clock: FakeClock) -> None:
    fake.fail("image_doc", 503, code="upstream_unavailable", headers={"Retry-After": "1"}, times=3)
    with client_for(fake.url, clock, retry=RetryPolicy(max_attempts=3)) as client, pytest.raises(ApiError) as caught:
        client.image("img_x")
    assert caught.value.status == 503 and caught.value.note == "gave up after 3 attempts"
    assert clock.sleeps == [1.0, 1.0] and len(fake.requests_to("image_doc")) == 3


def test_a_retry_after_beyond_the_longest_wait_ends_the_call_at_once(fake: FakeJobsApi, clock: FakeClock) -> None:
    fake.fail("image_doc", 429, code="throttled", headers={"Retry-After": "3600"})
    with client_for(fake.url, clock) as client, pytest.raises(ApiError) as caught:
        client.image("img_x")
    assert "asks to retry in 3600 s; try again later" in str(caught.value) and clock.sleeps == []


def test_quota_exceeded_is_not_retried(fake: FakeJobsApi, clock: FakeClock) -> None:
    fake.fail("image_doc", 429, code="quota_exceeded")
    with client_for(fake.url, clock) as client, pytest.raises(ApiError) as caught:
        client.image("img_x")
    assert caught.value.code == "quota_exceeded" and clock.sleeps == [] and len(fake.requests_to("image_doc")) == 1


def test_the_deadline_stops_retries_that_would_outlast_it(fake: FakeJobsApi, clock: FakeClock) -> None:
    fake.fail("image_doc", 503, code="upstream_unavailable", headers={"Retry-After": "4"}, times=5)
    policy = RetryPolicy(max_attempts=6, deadline_s=10)
    with client_for(fake.url, clock, retry=policy) as client, pytest.raises(ApiError) as caught:
        client.image("img_x")
    assert clock.sleeps == [4.0, 4.0]  # a third wait would end at 12 s, past the 10 s deadline
    assert "deadline" in caught.value.note and len(fake.requests_to("image_doc")) == 3


def test_a_post_without_an_idempotency_key_is_never_retried(fake: FakeJobsApi, clock: FakeClock) -> None:
    fake.fail("create", 503, code="upstream_unavailable", headers={"Retry-After": "0"})
    with client_for(fake.url, clock) as client, pytest.raises(ApiError) as caught:
        client.request("POST", "/v1/jobs", body={"items": [{"prompt": "a"}]})
    assert "not retried" in caught.value.note and clock.sleeps == [] and len(fake.requests_to("create")) == 1


def test_connection_errors_back_off_then_raise_network_error(clock: FakeClock) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the block ends
    policy = RetryPolicy(max_attempts=4, backoff_base_s=0.5, backoff_cap_s=2)
    with client_for(f"http://127.0.0.1:{port}", clock, retry=policy) as client, pytest.raises(NetworkError) as caught:
        client.get_job("job_x")
    assert "connection refused (gave up after 4 attempts)" in str(caught.value)
    assert len(clock.sleeps) == 3 and all(0 <= wait <= 2 for wait in clock.sleeps)


def test_redirects_are_not_followed(fake: FakeJobsApi, clock: FakeClock) -> None:
    fake.fail("image_doc", 302, headers={"Location": "https://elsewhere.example/steal"})
    with client_for(fake.url, clock) as client, pytest.raises(ApiError) as caught:
        client.image("img_x")
    assert caught.value.code == "redirect" and len(fake.seen) == 1


def test_bad_arguments_fail_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="base_url"):
        Client("ftp://example.com", API_KEY)
    with pytest.raises(ValueError, match="credentials"):
        Client("https://user:pw@example.com", API_KEY)
    with pytest.raises(ValueError, match="api_key") as caught:
        Client("https://example.com", "bad\nkey")
    assert "bad\nkey" not in str(caught.value)
    with Client("https://api.example.com", API_KEY) as client:
        with pytest.raises(ValueError, match="items"):
            client.submit([])
        with pytest.raises(ValueError, match="Idempotency-Key"):
            client.submit(["a"], idempotency_key="é")
        with pytest.raises(ValueError, match="not an https URL"):
            client.check_file_url("http://bucket.example.com/a.png")  # plain http only for a local stack


# ------------------------------------------------------------------------------------------------ jobs
def test_submit_wait_with_progress_results_and_download(fake: FakeJobsApi, clock: FakeClock, tmp_path: Path) -> None:
    # Given a job of three items, one of which fails
    with client_for(fake.url, clock) as client:
        job = client.submit(["a fox", {"prompt": "a whale", "seed": 7}, "[fail] a ghost"], metadata={"run": 1})
        seen: list[JobState] = []
        # When it is followed to the end
        final = job.wait(progress=seen.append, poll_interval=1.0)
        # Then progress saw every poll, the final state is terminal, and the results carry images and errors
        assert final.done and final.status == "partially_failed" and seen[-1] is final
        assert [state.finished for state in seen] == [1, 2, 3] and clock.sleeps == [1.0, 1.0]
        results = job.results()
        assert [item.status for item in results] == ["succeeded", "succeeded", "failed"]
        assert results[1].image is not None and results[1].image.parameters.seed == 7
        assert results[2].error is not None and results[2].error.code == "upstream_rejected"
        # And the images download, verified, and are not fetched again on a second run
        files = job.download(tmp_path / "out")
        assert [path.name for path in files] == ["0000.png", "0001.png"]
        assert files[0].read_bytes() == fake.image_bytes(job.id, 0)
        fetched = len(fake.requests_to("image"))
        assert job.download(tmp_path / "out") == files and len(fake.requests_to("image")) == fetched
        assert not list((tmp_path / "out").glob("*.part"))


def test_download_reports_a_sha256_mismatch_and_keeps_the_good_files(
    fake: FakeJobsApi, clock: FakeClock, tmp_path: Path
) -> None:
    fake.items_per_tick = 10
    with client_for(fake.url, clock) as client:
        job = client.submit(["good", "[badsha] bad"])
        job.wait()
        with pytest.raises(DownloadError) as caught:
            job.download(tmp_path)
    assert [path.name for path in caught.value.files] == ["0000.png"]
    assert list(caught.value.failures) == [1] and "sha256 mismatch" in caught.value.failures[1]
    assert not (tmp_path / "0001.png").exists() and not (tmp_path / "0001.png.part").exists()


def test_a_file_body_cut_short_is_fetched_again_from_its_start_never_appended_to(
    fake: FakeJobsApi, clock: FakeClock, tmp_path: Path
) -> None:
    # Given a finished job of two images of 200 KB, and its first image's fetch broken halfway through the body
    # (after the client has written its first 64 KB)
    fake.items_per_tick = 10
    fake.results_enabled = False  # the image fetches only
    fake.image_padding = 200_000
    with client_for(fake.url, clock) as client:
        job = client.submit(["one", "two"])
        job.wait()
        fake.cut_file_fetches = 1
        # When it is downloaded
        files = job.download(tmp_path)
    # Then the broken fetch was retried once, after a backoff, and every file is whole: the retry's body replaced the
    # half the broken one had written (appended to it, the file would fail its sha256 check)
    assert [path.read_bytes() for path in files] == [fake.image_bytes(job.id, 0), fake.image_bytes(job.id, 1)]
    assert [seen.path.rsplit("/", 1)[1] for seen in fake.requests_to("image")] == ["0.png", "0.png", "1.png"]
    assert len(clock.sleeps) == 1 and not list(tmp_path.glob("*.part"))


def test_a_results_file_cut_short_is_read_whole_on_the_retry(fake: FakeJobsApi, clock: FakeClock) -> None:
    # Given a finished job whose results file is longer than one read of the client's, and a sink holding old bytes
    fake.items_per_tick = 1000
    with client_for(fake.url, clock) as client:
        job = client.submit([f"prompt {n}" for n in range(800)])
        job.wait()
        results = client.get_job(job.id, limit=1).results
        assert results is not None and results.url
        # When it is fetched and the first fetch breaks halfway through the body
        fake.cut_file_fetches = 1
        body = io.BytesIO(b"left from an earlier use")
        assert client.fetch_file(results.url, body) == 200
    assert len(fake.requests_to("results")) == 2
    expected = "".join(json.dumps(line) + "\n" for line in fake.results_lines(fake.jobs[job.id])).encode()
    assert len(expected) > 2 * 64 * 1024  # cut after the client's first read
    # Then the retry's body replaced what was there and what the broken fetch wrote
    assert body.getvalue() == expected and len(clock.sleeps) == 1


def test_an_expired_image_url_is_renewed_once_by_reading_its_page_again(
    fake: FakeJobsApi, clock: FakeClock, tmp_path: Path
) -> None:
    fake.items_per_tick = 10
    with client_for(fake.url, clock) as client:
        job = client.submit(["one"])
        job.wait()
        fake.expire_image_fetches = 1
        before = len(fake.api_requests())
        (path,) = job.download(tmp_path)
        assert path.read_bytes() == fake.image_bytes(job.id, 0)
        assert [page_offset(seen) for seen in fake.api_requests()[before:]] == [0, 0]  # the page, then again
        fake.expire_image_fetches = 2  # refused again with the renewed URL: one renewal only, then an error
        path.unlink()
        with pytest.raises(DownloadError) as caught:
            job.download(tmp_path)
    assert caught.value.failures == {0: "the image URL answered HTTP 403"}
    assert fake.requests_to("image_doc") == [] and not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("results_file", [True, False], ids=["results-file", "pages-only"])
def test_downloading_250_images_costs_a_call_per_page_and_a_resume_calls_nothing_for_the_files_there(
    fake: FakeJobsApi, clock: FakeClock, tmp_path: Path, results_file: bool
) -> None:
    fake.results_enabled = results_file
    with client_for(fake.url, clock) as client:
        # Given a finished job of 250 images
        job = client.submit([f"prompt {n}" for n in range(250)])
        job.wait()
        before, fetched = len(fake.api_requests()), len(fake.requests_to("image"))

        # When it is downloaded
        files = job.download(tmp_path)

        # Then the API is called for its three pages of 100 items (they carry the URLs), never per image
        calls = fake.api_requests()[before:]
        assert len(calls) <= 3 + math.ceil(250 / 100)
        assert [(seen.path, page_offset(seen)) for seen in calls] == [(f"/v1/jobs/{job.id}", n) for n in (0, 100, 200)]
        assert fake.requests_to("image_doc") == [] and len(fake.requests_to("image")) == fetched + 250
        assert len(files) == 250 and files[249].read_bytes() == fake.image_bytes(job.id, 249)
        assert len(fake.requests_to("results")) == (1 if results_file else 0)

        def resume() -> tuple[list[int | None], list[str]]:
            before, fetched = len(fake.api_requests()), len(fake.requests_to("image"))
            assert job.download(tmp_path) == files
            fetches = [seen.path.rsplit("/", 1)[1] for seen in fake.requests_to("image")[fetched:]]
            return [page_offset(seen) for seen in fake.api_requests()[before:]], fetches

        # And run again with every file there, it fetches nothing: with the results file (their sha256s) the
        # first page is the only call; without it, every page is read for the sha256s
        assert resume() == ([0] if results_file else [0, 100, 200], [])

        # And with two files of the first page lost, only they are fetched, and no further page is read
        files[5].unlink()
        files[42].write_bytes(b"damaged")
        assert resume() == ([0] if results_file else [0, 100, 200], ["5.png", "42.png"])

        # And a file lost on the last page costs the pages up to it
        files[230].unlink()
        assert resume() == ([0, 100, 200], ["230.png"])


def test_an_expired_results_url_is_renewed_once_and_an_unusable_results_file_means_reading_the_pages(
    fake: FakeJobsApi, clock: FakeClock, tmp_path: Path
) -> None:
    with client_for(fake.url, clock) as client:
        job = client.submit(["a", "b", "c"])
        job.wait()
        # An expired results URL: the job is read once more for a fresh one (limit=1), then the file is used
        fake.expire_results_fetches = 1
        before = len(fake.api_requests())
        files = job.download(tmp_path / "one")
        assert [seen.query.get("limit") for seen in fake.api_requests()[before:]] == ["100", "1"]
        signatures = [seen.query["X-Amz-Signature"] for seen in fake.requests_to("results")]
        assert len(signatures) == 2 and signatures[0] != signatures[1]
        # A results file that stays refused: the download goes on from the pages alone
        fake.expire_results_fetches = 10
        assert [path.name for path in job.download(tmp_path / "two")] == [path.name for path in files]
        assert [path.read_bytes() for path in files] == [fake.image_bytes(job.id, index) for index in range(3)]
        assert (tmp_path / "two" / "0002.png").read_bytes() == fake.image_bytes(job.id, 2)


def test_parse_results_checks_one_record_per_item_in_order() -> None:
    good = [b'{"index": 0, "status": "succeeded"}', b"", b'{"index": 1, "status": "failed"}']
    assert [record["status"] for record in parse_results(good, 2, 2, None)] == ["succeeded", "failed"]
    problems = {
        "line 1 is not JSON": [b"{nope"],
        "line 2 is not the record of item 1": [good[0], b'{"index": 2, "status": "succeeded"}'],
        "line 1 is not the record of item 0": [b'{"index": 0, "status": "done"}'],
        "2 records for 3 items": good,
    }
    for message, lines in problems.items():
        with pytest.raises(ValueError) as caught:
            parse_results(lines, 3)
        assert str(caught.value) == message


def test_expired_urls_of_a_page_cost_the_client_one_call_to_read_that_page_again(
    fake: FakeJobsApi, clock: FakeClock, tmp_path: Path
) -> None:
    with client_for(fake.url, clock) as client:
        # Given a finished job of 250 items whose URLs, as the download's read of the second page hands them
        # out, have expired (the fake signs each read's URLs with the job's next url_generation)
        job = client.submit([f"prompt {n}" for n in range(250)])
        job.wait()
        fake.stale_signatures = {f"sig{fake.jobs[job.id].url_generation + 2}"}
        before, fetched = len(fake.api_requests()), len(fake.requests_to("image"))

        # When it is downloaded
        files = job.download(tmp_path)

    # Then item 100's refusal re-reads the second page once, and its fresh URLs serve items 101-199 too
    assert [page_offset(seen) for seen in fake.api_requests()[before:]] == [0, 100, 100, 200]
    assert fake.requests_to("image_doc") == [] and len(fake.requests_to("image")) == fetched + 251
    assert [files[index].read_bytes() for index in (100, 199)] == [fake.image_bytes(job.id, i) for i in (100, 199)]


def test_wait_times_out_with_the_last_state(fake: FakeJobsApi, clock: FakeClock) -> None:
    fake.items_per_tick = 1
    with client_for(fake.url, clock) as client:
        job = client.submit(["a", "b", "c", "d", "e"])
        with pytest.raises(WaitTimeout) as caught:
            job.wait(poll_interval=2.0, timeout=5.0)
    assert caught.value.state.finished == 3 and clock.sleeps == [2.0, 2.0]  # polls at 0, 2, 4 s; a 4th at 6 s is past 5


def test_cancel_and_a_job_handle_by_id(fake: FakeJobsApi, clock: FakeClock) -> None:
    fake.items_per_tick = 1
    with client_for(fake.url, clock) as client:
        submitted = client.submit(["a", "b", "c", "d"])
        state = client.job(submitted.id).cancel()
        final = client.job(submitted.id).wait()
    assert state.id == submitted.id and final.status == "canceled" and final.counts.canceled == 4
    assert fake.requests_to("delete")


# ------------------------------------------------------------------------------------------------ idempotency
def test_one_idempotency_rule_for_the_client_and_the_cli() -> None:
    body = {"items": [{"prompt": "a", "seed": 1}], "metadata": {"k": "v"}}
    assert inputs.derived_key(body) == content_key(body) == content_key(json.loads(json.dumps(body)))
    assert content_key(body) != content_key({**body, "metadata": {"k": "w"}})
    lines = (idempotency.canonical(item) for item in body["items"])
    assert idempotency.streamed_content_key(lines, {"metadata": {"k": "v"}}) == content_key(body)
    assert idempotency.new_key() != idempotency.new_key()


# ------------------------------------------------------------------------------------------------ webhooks
WEBHOOK_BODY = json.dumps({"id": "job_1", "status": "succeeded"}, separators=(",", ":"))


def signed(secret: str, body: str = WEBHOOK_BODY, when: datetime | None = None) -> dict[str, str]:
    """Headers from the service's own signer (the code that delivers job webhooks)."""
    from imagegen.adapters.webhooks import WebhookSender

    return WebhookSender(lambda: secret).headers("msg_1", body, now=when)


@pytest.mark.parametrize("secret", ["whsec_" + "c2VjcmV0LWJ5dGVzLWZvci10ZXN0cw==", "a plain secret"])
def test_verify_webhook_accepts_what_the_service_signs(secret: str) -> None:
    headers = signed(secret)
    assert verify_webhook(headers, WEBHOOK_BODY.encode(), secret) == {"id": "job_1", "status": "succeeded"}
    upper = {name.title(): value for name, value in headers.items()}  # header names are case-insensitive
    assert verify_webhook(upper, WEBHOOK_BODY, secret)["id"] == "job_1"


def test_verify_webhook_refuses_a_changed_body_another_secret_or_a_missing_header() -> None:
    headers = signed("s3cret")
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(headers, WEBHOOK_BODY.replace("succeeded", "failed"), "s3cret")
    with pytest.raises(WebhookVerificationError, match="signature") as caught:
        verify_webhook(headers, WEBHOOK_BODY, "another")
    assert "another" not in str(caught.value)
    with pytest.raises(WebhookVerificationError, match="webhook-signature"):
        verify_webhook({k: v for k, v in headers.items() if k != "webhook-signature"}, WEBHOOK_BODY, "s3cret")
    other = signed("other")["webhook-signature"]
    both = {**headers, "webhook-signature": f"{other} {headers['webhook-signature']}"}
    assert verify_webhook(both, WEBHOOK_BODY, "s3cret")["id"] == "job_1"  # one valid signature of several is enough


def test_verify_webhook_checks_the_timestamp_tolerance() -> None:
    when = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
    headers = signed("s3cret", when=when)
    sent = when.timestamp()
    assert verify_webhook(headers, WEBHOOK_BODY, "s3cret", now=sent + 300)["id"] == "job_1"
    assert verify_webhook(headers, WEBHOOK_BODY, "s3cret", now=sent - 300)["id"] == "job_1"
    with pytest.raises(WebhookVerificationError, match="timestamp"):
        verify_webhook(headers, WEBHOOK_BODY, "s3cret", now=sent + 301)
    with pytest.raises(WebhookVerificationError, match="timestamp"):
        verify_webhook(headers, WEBHOOK_BODY, "s3cret", now=sent + 30, tolerance_s=10)
    with pytest.raises(WebhookVerificationError, match="timestamp"):
        verify_webhook({**headers, "webhook-timestamp": "soon"}, WEBHOOK_BODY, "s3cret", now=sent)


def test_verify_webhook_uses_a_constant_time_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    from flux_images import webhooks

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(webhooks.hmac, "compare_digest", recording)
    headers = signed("s3cret")
    verify_webhook(headers, WEBHOOK_BODY, "s3cret")
    expected = headers["webhook-signature"].split(",", 1)[1].encode()
    assert calls == [(expected, expected)]  # the base64 HMAC, compared with hmac.compare_digest
