"""The ``flux-images`` CLI against a fake of the bulk-job API (tests/unit/cli_fake_server.py).

``main([...])`` runs in-process; every wait of the CLI (polls, retry delays) goes through ``api._sleep``, which the
tests replace with a recorder, so nothing here sleeps for real. Every run is checked for the API key in its output.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flux_images
import pytest
import requests
from cli_fake_server import FakeJobsApi, page_offset, tiny_png
from flux_images import JobState
from flux_images_cli import api, download, inputs, manifest, uploads
from flux_images_cli.main import main

API_KEY = "fake-api-key-s3cr3t-0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    code: int
    out: str
    err: str
    sleeps: list[float]


@pytest.fixture
def fake() -> Iterator[FakeJobsApi]:
    with FakeJobsApi(api_key=API_KEY) as server:
        yield server


class Runner:
    def __init__(self, capsys: pytest.CaptureFixture[str], sleeps: list[float]) -> None:
        self.capsys = capsys
        self.sleeps = sleeps

    def __call__(self, *argv: str, secrets: tuple[str, ...] = (API_KEY,)) -> Result:
        self.capsys.readouterr()
        self.sleeps.clear()
        code = main(list(argv))
        captured = self.capsys.readouterr()
        for secret in secrets:
            assert secret not in captured.out and secret not in captured.err, "the API key was printed"
        return Result(code, captured.out, captured.err, list(self.sleeps))


@pytest.fixture
def run(
    fake: FakeJobsApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Runner:
    monkeypatch.setenv("FLUX_IMAGES_API_URL", fake.url)
    monkeypatch.setenv("FLUX_IMAGES_API_KEY", API_KEY)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the upload ledger
    monkeypatch.chdir(tmp_path)
    sleeps: list[float] = []
    monkeypatch.setattr(api, "_sleep", sleeps.append)
    return Runner(capsys, sleeps)


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def jsonl(path: Path, *lines: Any) -> str:
    return write(path, "".join(json.dumps(line) + "\n" for line in lines))


def submit_no_wait(run: Runner, *argv: str) -> str:
    result = run("submit", *argv, "--no-wait")
    assert result.code == 0, result.err
    return result.out.strip()


# ------------------------------------------------------------------------------------------------ inputs
def test_jsonl_lines_are_strings_or_objects_and_override_the_command_line_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.jsonl",
        '"a red fox"\n'
        '{"prompt": "a blue whale", "width": 768, "height": 512}\n'
        "\n"
        "# a comment\n"
        '{"prompt": "seeded", "seed": 7, "num_steps": 2}\n'
        '{"prompt": "service picks", "seed": null}\n',
    )
    items = inputs.load_items(path, ["from the command line"], {"width": 512, "seed": 1})
    assert [(item.source, item.request) for item in items] == [
        (f"{path}:1", {"width": 512, "seed": 1, "prompt": "a red fox"}),
        (f"{path}:2", {"width": 768, "seed": 1, "prompt": "a blue whale", "height": 512}),
        (f"{path}:5", {"width": 512, "seed": 7, "prompt": "seeded", "num_steps": 2}),
        (f"{path}:6", {"width": 512, "seed": None, "prompt": "service picks"}),
        ("--prompt #1", {"width": 512, "seed": 1, "prompt": "from the command line"}),
    ]


def test_jsonl_problems_name_file_line_and_field_and_nothing_is_sent(
    run: Runner, fake: FakeJobsApi, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "bad.jsonl",
        "\n".join(
            [
                '{"prompt": "fine"}',
                '{"prompt": "x", "num_steps": "4"}',
                '{"prompt": "x", "stepz": 4}',
                '{"prompt": "   "}',
                '{"prompt": "x", "width": 500, "seed": true}',
                "not json",
                "[1, 2]",
                '{"seed": 3}',
                '{"prompt": "x", "height": 4096, "num_steps": 4.0}',
                json.dumps({"prompt": "p" * 2001}),
            ]
        ),
    )
    result = run("submit", path)
    assert result.code == 2
    for expected in [
        f"{path}:2: num_steps: must be an integer, not a string",
        f"{path}:3: stepz: unknown field (allowed: prompt, num_steps, seed, width, height, aspect_ratio, "
        "megapixels, output_format, output_quality, num_images)",
        f"{path}:4: prompt: must not be blank",
        f"{path}:5: width: 500 is not a multiple of 16",
        f"{path}:5: seed: must be an integer, not a boolean",
        f"{path}:6: not valid JSON",
        f"{path}:7: expected a JSON object or a string",
        f"{path}:8: prompt: missing",
        f"{path}:9: height: 4096 is out of range 256–2048",
        f"{path}:9: num_steps: must be an integer, not a number",
        f"{path}:10: prompt: is 2,001 characters long",
    ]:
        assert expected in result.err
    assert f"{path}:1:" not in result.err
    assert "invalid input (11 problems)" in result.err
    assert fake.seen == []


def test_csv_header_empty_cells_and_multiline_records(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.csv",
        'Prompt, seed ,num_steps,width,height\na red fox,7,,,\n"a multi\nline prompt",,2,768,512\n\na blue whale,,,,\n',
    )
    items = inputs.load_items(path, [], {"width": 512})
    assert [(item.source, item.request) for item in items] == [
        (f"{path}:2", {"width": 512, "prompt": "a red fox", "seed": 7}),
        (f"{path}:3", {"width": 768, "prompt": "a multi\nline prompt", "num_steps": 2, "height": 512}),
        (f"{path}:6", {"width": 512, "prompt": "a blue whale"}),
    ]


def test_csv_problems_name_file_line_and_field(run: Runner, tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", "prompt,seed,width\nok,1,512\nbad,x,512\nbad2,2,500\n,3,512\ntoo,1,512,extra\n")
    result = run("submit", path, "--dry-run")
    assert result.code == 2
    for expected in [
        f"{path}:3: seed: 'x' is not an integer",
        f"{path}:4: width: 500 is not a multiple of 16",
        f"{path}:5: prompt: must not be blank",
        f"{path}:6: 4 cells but the header has 3 columns",
    ]:
        assert expected in result.err

    header = write(tmp_path / "header.csv", "promt,stepz\na,1\n")
    result = run("submit", header, "--dry-run")
    assert result.code == 2
    assert f"{header}:1: column 'promt': unknown column" in result.err
    assert f"{header}:1: the header has no 'prompt' column" in result.err


def test_stdin_prompt_arguments_and_command_line_defaults(
    run: Runner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'"from stdin"\n{"prompt": "two"}\n')))
    result = run("submit", "-", "--prompt", "extra", "--width", "512", "--dry-run")
    assert result.code == 0, result.err
    assert result.out.strip() == "job 1: 3 items (<stdin>:1 … --prompt #1)"

    bad_default = run("submit", "--prompt", "x", "--width", "500", "--dry-run")
    assert bad_default.code == 2
    assert "--width: 500 is not a multiple of 16" in bad_default.err

    assert run("submit", "--dry-run").code == 2
    missing = run("submit", str(tmp_path / "nope.jsonl"))
    assert missing.code == 2 and "cannot read" in missing.err
    metadata = run("submit", "--prompt", "x", "--metadata", "[1]", "--no-wait")
    assert metadata.code == 2 and "--metadata: must be a JSON object" in metadata.err
    webhook = run("submit", "--prompt", "x", "--webhook-url", "http://hooks.example.com", "--no-wait")
    assert webhook.code == 2 and "must be an https URL" in webhook.err


def test_file_names_are_index_and_slug() -> None:
    assert download.file_name(7, "A Cozy Mountain Cabin, under a *starry* sky!", "image/png") == (
        "0007-a-cozy-mountain-cabin-under-a-starry-sky.png"
    )
    assert download.file_name(12, "Crème brûlée", "image/jpeg") == "0012-creme-brulee.jpg"
    assert download.file_name(3, "日本", "image/webp") == "0003-image.webp"
    assert len(download.slugify("word " * 40)) <= download.SLUG_CHARS


# ------------------------------------------------------------------------------------------------ the flow
def test_submit_waits_and_downloads_every_image_with_manifests(
    run: Runner, fake: FakeJobsApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake.results_enabled = False  # an older deployment: the images come from the job's pages
    fake.max_page = 2  # 5 items: three pages
    monkeypatch.setenv("FLUX_IMAGES_API_URL", fake.url + "/prod/")  # a deployed stage URL, trailing slash
    prompts = jsonl(
        tmp_path / "p.jsonl",
        "a red fox",
        {"prompt": "a blue whale", "seed": 7},
        {"prompt": "a lighthouse", "width": 768},
        "a cabin",
        "Crème brûlée",
    )
    result = run("submit", prompts, "--width", "512", "--height", "512", "--out", "out")
    assert result.code == 0, result.err
    job_id = result.out.strip()
    assert job_id.startswith("job_") and job_id in fake.jobs

    (create,) = fake.requests_to("create")
    assert create.path == "/prod/v1/jobs"
    assert create.json == {
        "items": [
            {"width": 512, "height": 512, "prompt": "a red fox"},
            {"width": 512, "height": 512, "prompt": "a blue whale", "seed": 7},
            {"width": 768, "height": 512, "prompt": "a lighthouse"},
            {"width": 512, "height": 512, "prompt": "a cabin"},
            {"width": 512, "height": 512, "prompt": "Crème brûlée"},
        ]
    }
    assert create.headers["idempotency-key"].startswith("flux-images-")
    polls = [seen for seen in fake.requests_to("get") if "cursor" not in seen.query]
    assert len(polls) >= 3  # the items progressed over successive reads
    assert any("cursor" in seen.query for seen in fake.requests_to("get"))  # pagination followed
    images = fake.requests_to("image")
    assert len(images) == 5
    assert all("x-api-key" not in seen.headers for seen in images)  # the key never goes to the bucket

    out = tmp_path / "out"
    names = ["0000-a-red-fox.png", "0001-a-blue-whale.png", "0002-a-lighthouse.png", "0003-a-cabin.png"]
    names.append("0004-creme-brulee.png")
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "manifest.jsonl", "manifest.csv"])
    for index, name in enumerate(names):
        assert (out / name).read_bytes() == fake.image_bytes(job_id, index)

    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["index"] for row in rows] == [0, 1, 2, 3, 4]
    body = fake.image_bytes(job_id, 1)
    assert rows[1] == {
        "job_id": job_id,
        "index": 1,
        "status": "succeeded",
        "prompt": "a blue whale",
        "seed": 7,
        "num_steps": 4,
        "width": 512,
        "height": 512,
        "file": "0001-a-blue-whale.png",
        "sha256": hashlib.sha256(body).hexdigest(),
        "bytes": len(body),
        "image_id": rows[1]["image_id"],
        "error_code": None,
        "error_message": None,
    }
    assert rows[0]["seed"] == 1000  # picked by the service, read from the image document
    assert rows[2]["width"] == 768
    assert rows[4]["prompt"] == "Crème brûlée"
    with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert [row["file"] for row in table] == names
    assert table[0]["error_code"] == "" and table[1]["seed"] == "7"
    assert "5 downloaded, 0 already present" in result.err


def test_an_interrupted_download_resumes_without_fetching_files_again(
    run: Runner, fake: FakeJobsApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    job_id = submit_no_wait(run, jsonl(tmp_path / "p.jsonl", "one", "two", "three", "four"))
    assert run("wait", job_id).code == 0
    out = tmp_path / "images"

    original = flux_images.Client.fetch_file
    calls: list[int] = []

    def interrupted(client: Any, url: str, sink: Any, **options: Any) -> int:
        if options.get("what") == "image":
            calls.append(1)
        if len(calls) == 2:  # part of the second image is written, then Ctrl-C
            sink.write(b"\x89PNG\r\n")
            raise KeyboardInterrupt
        return original(client, url, sink, **options)

    monkeypatch.setattr(flux_images.Client, "fetch_file", interrupted)
    first = run("download", job_id, "--out", str(out))
    assert first.code == 130
    assert f"flux-images download {job_id} --out {out}" in first.err
    assert (out / "0000-one.png").read_bytes() == fake.image_bytes(job_id, 0)
    assert not (out / "0001-two.png").exists()  # a partial file never has the final name
    assert (out / "0001-two.png.part").exists()
    assert not (out / "manifest.jsonl").exists()

    monkeypatch.setattr(flux_images.Client, "fetch_file", original)
    before = len(fake.requests_to("image"))
    second = run("download", job_id, "--out", str(out))
    assert second.code == 0, second.err
    fetched = [seen.path.rsplit("/", 1)[1] for seen in fake.requests_to("image")[before:]]
    assert fetched == ["1.png", "2.png", "3.png"]  # the verified first file was not fetched again
    assert "3 downloaded, 1 already present" in second.err
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".png") == [
        "0000-one.png",
        "0001-two.png",
        "0002-three.png",
        "0003-four.png",
    ]
    assert not list(out.glob("*.part"))
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 4

    third = run("download", job_id, "--out", str(out))  # nothing left to do
    assert third.code == 0 and len(fake.requests_to("image")) == before + 3


def test_a_sha256_mismatch_is_reported_and_the_file_not_kept(run: Runner, fake: FakeJobsApi, tmp_path: Path) -> None:
    job_id = submit_no_wait(run, jsonl(tmp_path / "p.jsonl", "good", "[badsha] tampered", "also good"))
    assert run("wait", job_id).code == 0
    result = run("download", job_id, "--out", "out")
    assert result.code == 3
    assert "0001  sha256_mismatch" in result.err
    assert f"flux-images download {job_id} --out out" in result.err
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.png")) == ["0000-good.png", "0002-also-good.png"]
    assert not list(out.glob("*.part"))
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert rows[1]["status"] == "download_failed"
    assert rows[1]["error_code"] == "sha256_mismatch"
    assert rows[1]["file"] is None and rows[1]["sha256"] is None


def test_partial_failure_exits_1_with_a_summary(run: Runner, fake: FakeJobsApi, tmp_path: Path) -> None:
    prompts = jsonl(tmp_path / "p.jsonl", "fine", "[fail] refused", "fine too", "[fail] also refused")
    result = run("-q", "submit", prompts)
    assert result.code == 1
    job_id = result.out.strip()
    assert f"job {job_id}: partially_failed" in result.err
    assert "0001   upstream_rejected  Flux Schnell refused the parameters  [fail] refused" in result.err
    assert "0003   upstream_rejected" in result.err
    out = tmp_path / f"flux-images-{job_id}"
    assert sorted(p.name for p in out.glob("*.png")) == ["0000-fine.png", "0002-fine-too.png"]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [row["status"] for row in rows] == ["succeeded", "failed", "succeeded", "failed"]
    assert rows[1]["error_code"] == "upstream_rejected" and rows[1]["file"] is None

    status = run("status", job_id)
    assert status.code == 1
    assert "partially_failed" in status.out and "upstream_rejected" in status.out


def test_without_uploads_more_than_1000_prompts_go_in_two_jobs_and_a_rerun_creates_nothing(
    run: Runner, fake: FakeJobsApi, tmp_path: Path
) -> None:
    fake.uploads_enabled = False  # an older deployment: POST /v1/uploads is a 404
    prompts = write(tmp_path / "big.csv", "prompt\n" + "".join(f"prompt {n}\n" for n in range(1001)))
    result = run("submit", prompts, "--no-wait")
    assert result.code == 0, result.err
    job_ids = result.out.split()
    assert len(job_ids) == 2
    assert result.err.count("this deployment has no POST /v1/uploads (an older version)") == 1
    assert len(fake.requests_to("upload_create")) == 1 and fake.requests_to("upload_put") == []
    assert "1,001 prompts are submitted as 2 jobs (a job takes at most 1,000 items" in result.err
    assert "prompts 1–1,000, 1,001–1,001" in result.err
    creates = fake.requests_to("create")
    assert [len(seen.json["items"]) for seen in creates] == [1000, 1]
    assert creates[1].json["items"] == [{"prompt": "prompt 1000"}]
    keys = [seen.headers["idempotency-key"] for seen in creates]
    assert keys[0] != keys[1]

    again = run("submit", prompts, "--no-wait")  # e.g. after a network error: the same jobs come back
    assert again.out.split() == job_ids
    assert [seen.headers["idempotency-key"] for seen in fake.requests_to("create")[2:]] == keys
    assert len(fake.jobs) == 2


def test_idempotency_keys_follow_the_content_or_the_option(run: Runner, fake: FakeJobsApi, tmp_path: Path) -> None:
    prompts = jsonl(tmp_path / "p.jsonl", "a", "b")
    first = submit_no_wait(run, prompts)
    assert submit_no_wait(run, prompts) == first
    other = submit_no_wait(run, prompts, "--width", "512")  # another body: another key, not a 422
    assert other != first
    given = submit_no_wait(run, prompts, "--idempotency-key", "order-1234")
    keys = [seen.headers["idempotency-key"] for seen in fake.requests_to("create")]
    assert keys[0] == keys[1] != keys[2]
    assert keys[3] == "order-1234" and given not in {first, other}

    reused = run("submit", prompts, "--width", "768", "--idempotency-key", "order-1234", "--no-wait")
    assert reused.code == 3
    assert "HTTP 422 idempotency_key_reused" in reused.err

    split = inputs.plan_jobs([inputs.Item({"prompt": "x"}, "x")] * 3, idempotency_key="k", per_job=2)
    assert [plan.idempotency_key for plan in split] == ["k-part1of2", "k-part2of2"]
    assert [(plan.first, plan.size) for plan in split] == [(1, 2), (3, 1)]


def test_jobs_are_also_split_by_body_size() -> None:
    items = [inputs.Item({"prompt": "日本語" * 600}, f"p.jsonl:{n}") for n in range(1, 6)]  # ~5.4 kB each
    plans = inputs.plan_jobs(items, max_body_bytes=12_000)
    assert [(plan.first, plan.size) for plan in plans] == [(1, 2), (3, 2), (5, 1)]
    assert all(len(json.dumps(plan.body, ensure_ascii=False).encode()) < 12_200 for plan in plans)


# ------------------------------------------------------------------------------------------------ retries, errors
def test_429_and_503_are_retried_honouring_retry_after(run: Runner, fake: FakeJobsApi, tmp_path: Path) -> None:
    fake.fail("create", 429, code="throttled", headers={"Retry-After": "0.01"}, times=2)
    fake.fail("get", 503, code="upstream_unavailable", headers={"Retry-After": "0.02"})
    result = run("submit", jsonl(tmp_path / "p.jsonl", "a"), "--poll-interval", "0.5")
    assert result.code == 0, result.err
    assert result.sleeps[:3] == [0.01, 0.01, 0.02]
    assert "HTTP 429 throttled; retrying in 0.0 s (attempt 2)" in result.err
    assert len(fake.jobs) == 1 and len(fake.requests_to("create")) == 3


def test_retries_are_bounded(run: Runner, fake: FakeJobsApi, tmp_path: Path) -> None:
    job_id = submit_no_wait(run, "--prompt", "a")
    fake.fail("get", 503, code="upstream_unavailable", headers={"Retry-After": "0"}, times=6)
    result = run("status", job_id)
    assert result.code == 3
    assert "HTTP 503 upstream_unavailable: injected (gave up after 6 attempts)" in result.err
    assert len(fake.requests_to("get")) == 6

    fake2_gets = len(fake.requests_to("get"))
    fake.fail("get", 429, code="throttled", headers={"Retry-After": "3600"})
    too_long = run("status", job_id)
    assert too_long.code == 3 and "try again later" in too_long.err and too_long.sleeps == []

    fake.fail("get", 429, code="quota_exceeded")
    quota = run("status", job_id)
    assert quota.code == 3 and "quota_exceeded" in quota.err and quota.sleeps == []
    assert len(fake.requests_to("get")) > fake2_gets


def test_connection_errors_are_retried_with_backoff_then_exit_3(run: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed when the block ends: nothing listens there
    monkeypatch.setenv("FLUX_IMAGES_API_URL", f"http://127.0.0.1:{port}")
    result = run("status", "job_0123")
    assert result.code == 3
    assert f"cannot reach http://127.0.0.1:{port}: connection refused (gave up after 6 attempts)" in result.err
    assert len(result.sleeps) == 5 and all(0 <= s <= api.RetryPolicy().backoff_cap_s for s in result.sleeps)


def test_api_errors_are_readable_and_point_at_the_input_line(run: Runner, fake: FakeJobsApi, tmp_path: Path) -> None:
    details = [{"location": "body.items.1.prompt", "field": "prompt", "message": "refused", "type": "value_error"}]
    fake.fail("create", 422, code="validation_error", message="the request is invalid", details=details)
    prompts = jsonl(tmp_path / "p.jsonl", "a", "b")
    result = run("submit", prompts)
    assert result.code == 3
    assert "POST /v1/jobs: HTTP 422 validation_error: the request is invalid" in result.err
    assert f"body.items.1.prompt ({prompts}:2): refused" in result.err
    assert "request id: rq-1" in result.err

    assert run("status", "job_unknown").code == 3


def test_api_key_from_the_environment_or_the_option_and_never_printed(
    run: Runner, fake: FakeJobsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = submit_no_wait(run, "--prompt", "a")  # the key from FLUX_IMAGES_API_KEY
    assert fake.requests_to("create")[0].headers["x-api-key"] == API_KEY

    wrong = "wrong-key-also-secret-987654321"
    monkeypatch.setenv("FLUX_IMAGES_API_KEY", wrong)
    refused = run("status", job_id, secrets=(API_KEY, wrong))
    assert refused.code == 3
    assert "HTTP 403 invalid_api_key" in refused.err and "check --api-key / FLUX_IMAGES_API_KEY" in refused.err

    assert run("--api-key", API_KEY, "status", job_id, secrets=(API_KEY, wrong)).code == 0  # the option wins
    assert run("status", job_id, "--api-key", API_KEY, secrets=(API_KEY, wrong)).code == 0  # either position

    monkeypatch.delenv("FLUX_IMAGES_API_KEY")
    missing = run("status", job_id)
    assert missing.code == 2 and "no API key: pass --api-key or set FLUX_IMAGES_API_KEY" in missing.err
    monkeypatch.delenv("FLUX_IMAGES_API_URL")
    no_url = run("--api-key", API_KEY, "status", job_id)
    assert no_url.code == 2 and "no API URL" in no_url.err
    bad_url = run("--api-key", API_KEY, "--api-url", "ftp://example.com", "status", job_id)
    assert bad_url.code == 2 and "is not an http(s) URL" in bad_url.err


def test_an_expired_image_url_is_renewed_by_reading_the_job_again(
    run: Runner, fake: FakeJobsApi, tmp_path: Path
) -> None:
    fake.results_enabled = False  # an older deployment: fresh URLs come from the job's pages
    job_id = submit_no_wait(run, "--prompt", "a", "--prompt", "b")
    assert run("wait", job_id).code == 0
    fake.expire_image_fetches = 1
    gets = len(fake.requests_to("get"))
    result = run("download", job_id, "--out", "out")
    assert result.code == 0, result.err
    assert "the image URL was refused (expired?)" in result.err
    assert len(fake.requests_to("get")) == gets + 2  # the listing, then the page again for fresh URLs
    image_urls = [seen.query["X-Amz-Signature"] for seen in fake.requests_to("image")]
    assert image_urls[0] != image_urls[1]  # the retry used the renewed URL
    assert (tmp_path / "out" / "0000-a.png").read_bytes() == fake.image_bytes(job_id, 0)


# ------------------------------------------------------------------------------------------------ status, cancel, wait
def test_status_cancel_and_wait_on_a_canceled_job(run: Runner, fake: FakeJobsApi) -> None:
    fake.items_per_tick = 1
    job_id = submit_no_wait(run, *[arg for n in range(6) for arg in ("--prompt", f"p{n}")])
    status = run("status", job_id)  # first read: item 0 done, item 1 running, the rest queued
    assert status.code == 0
    assert f"job {job_id}: running" in status.out

    canceled = run("cancel", job_id)
    assert canceled.code == 0
    assert fake.requests_to("delete")[0].path == f"/v1/jobs/{job_id}"
    assert f"job {job_id}: running" in canceled.out  # item 1 still runs: it finishes

    waited = run("wait", job_id)
    assert waited.code == 1
    assert f"job {job_id}: canceled" in waited.err
    document = run("status", job_id, "--json")
    assert document.code == 1
    job = json.loads(document.out)
    assert job["counts"] == {"queued": 0, "running": 0, "succeeded": 2, "failed": 0, "canceled": 4}
    assert [item["status"] for item in job["items"]] == ["succeeded"] * 2 + ["canceled"] * 4


def test_ctrl_c_stops_waiting_without_canceling(
    run: Runner, fake: FakeJobsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = submit_no_wait(run, "--prompt", "a", "--prompt", "b", "--prompt", "c", "--prompt", "d")

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "_sleep", interrupt)
    result = run("wait", job_id)
    assert result.code == 130
    assert f"Resume with: flux-images wait {job_id}" in result.err
    assert fake.requests_to("delete") == []

    submitted = run("submit", "--prompt", "e", "--prompt", "f", "--prompt", "g", "--prompt", "h")
    assert submitted.code == 130
    assert "Resume with the same command" in submitted.err
    assert fake.requests_to("delete") == []


def test_tiny_png_is_a_valid_png() -> None:
    data = tiny_png(3, 2, (1, 2, 3))
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR"
    assert int.from_bytes(data[16:20], "big") == 3 and int.from_bytes(data[20:24], "big") == 2


def test_installed_console_script_help() -> None:
    script = REPO / ".venv" / "bin" / "flux-images"
    if not script.exists():
        pytest.skip("the virtual environment has no flux-images script (run make venv)")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    for word in ("submit", "wait", "download", "status", "cancel", "FLUX_IMAGES_API_KEY", "exit codes"):
        assert word in result.stdout


def test_polls_back_off_while_nothing_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    def document(done: int, status: str = "running") -> dict[str, Any]:
        return {"id": "job_x", "status": status, "total": 2, "counts": {"succeeded": done, "running": 2 - done}}

    documents = iter([document(0)] * 4 + [document(1), document(2, "succeeded")])

    class Client:  # the part of flux_images.Client that Job.wait uses
        sleep = staticmethod(lambda seconds: api._sleep(seconds))
        clock = staticmethod(lambda: 0.0)

        def get_job(self, job_id: str, **options: Any) -> JobState:
            assert options == {"limit": 1}
            return JobState.from_json(next(documents))

    class ApiClient:
        flux = Client()

    sleeps: list[float] = []
    monkeypatch.setattr(api, "_sleep", sleeps.append)
    from flux_images_cli import jobs

    assert jobs.wait_for(ApiClient(), "job_x", poll_interval=2, progress=False)["status"] == "succeeded"  # type: ignore[arg-type]
    assert sleeps == [2, 3, 4.5, 6.75, 2]


# ------------------------------------------------------------------------------------------------ uploads (issue 9)
def many(path: Path, count: int, *, succeed: tuple[int, ...] = ()) -> str:
    """``count`` prompts; all but the indexes in ``succeed`` fail in the fake (so few images are downloaded)."""
    lines = [f"prompt {n}" if n in succeed else f"[fail] prompt {n}" for n in range(count)]
    return jsonl(path, *lines)


def test_2500_prompts_go_in_one_upload_and_one_job_then_download_through_the_results_file(
    run: Runner, fake: FakeJobsApi, tmp_path: Path
) -> None:
    # Given 2,500 prompts (over the 1,000 of an inline job), of which items 7 and 2,499 succeed
    prompts = many(tmp_path / "big.jsonl", 2500, succeed=(7, 2499))

    # When they are submitted, waited for and downloaded
    result = run("submit", prompts, "--width", "512", "--metadata", '{"batch": "b1"}', "--out", "out")

    # Then one upload and one job, not three jobs
    assert result.code == 1, result.err  # partially failed
    (job_id,) = result.out.split()
    assert len(fake.requests_to("upload_create")) == 1
    (put,) = fake.requests_to("upload_put")
    (create,) = fake.requests_to("create")
    upload_id = create.json["items_upload_id"]
    assert create.json == {"items_upload_id": upload_id, "metadata": {"batch": "b1"}}
    assert put.path == f"/upload/{upload_id}" and "x-api-key" not in put.headers  # a plain presigned URL
    assert put.headers["content-type"] == "application/x-ndjson"
    assert int(put.headers["content-length"]) == len(put.body)  # streamed with its length: S3 refuses chunked
    lines = put.body.decode("utf-8").splitlines()
    assert len(lines) == 2500 and json.loads(lines[7]) == {"prompt": "prompt 7", "width": 512}
    items = [{"prompt": line, "width": 512} for line in (json.loads(x)["prompt"] for x in lines)]
    assert create.headers["idempotency-key"] == inputs.derived_key({"items": items, "metadata": {"batch": "b1"}})
    assert fake.jobs[job_id].total == 2500
    assert "upload" in result.err and f"submitted {job_id}: 2,500 items from an upload" in result.err

    # And the download read the results file instead of paging through 2,500 items: item 7's URL came with the
    # job's first page, item 2,499's from its image document (one call, where its page is 24 pages on)
    assert len(fake.requests_to("results")) == 1
    assert not any("cursor" in seen.query for seen in fake.requests_to("get"))  # 24 more pages never read
    assert [seen.path for seen in fake.requests_to("image_doc")] == [f"/v1/images/{fake.image_id(job_id, 2499)}"]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.png")) == ["0007-prompt-7.png", "2499-prompt-2499.png"]
    rows = manifest.read_jsonl(out / "manifest.jsonl")
    assert len(rows) == 2500 and rows[7]["file"] == "0007-prompt-7.png" and rows[7]["prompt"] == "prompt 7"
    assert rows[0]["status"] == "failed" and rows[0]["error_code"] == "upstream_rejected"
    assert rows[0]["prompt"] == "[fail] prompt 0"  # submit knows the prompts the results file does not carry


def test_the_upload_job_key_is_stable_across_runs_and_a_rerun_finds_the_same_job(
    run: Runner, fake: FakeJobsApi, tmp_path: Path
) -> None:
    prompts = many(tmp_path / "big.jsonl", 1500)
    first = submit_no_wait(run, prompts)

    # A re-run (after a crash, say) sends the same key and the same body: the same job, no second upload
    assert submit_no_wait(run, prompts) == first
    keys = {seen.headers["idempotency-key"] for seen in fake.requests_to("create")}
    assert len(keys) == 1 and len(fake.jobs) == 1
    assert len(fake.requests_to("upload_put")) == 1

    # The upload of the earlier run is gone (and the key forgotten): the file is uploaded again
    fake.uploads.clear()
    fake._idempotency.clear()
    again = run("submit", prompts, "--no-wait")
    assert again.code == 0, again.err
    assert "the upload of an earlier run was refused (not_found); uploading the file again" in again.err
    assert len(fake.requests_to("upload_put")) == 2 and len(fake.jobs) == 2

    # Other content under the same --idempotency-key does not find the earlier upload: the service's 422
    keyed = submit_no_wait(run, prompts, "--idempotency-key", "order-7")
    changed = run("submit", many(tmp_path / "changed.jsonl", 1501), "--idempotency-key", "order-7", "--no-wait")
    assert changed.code == 3 and "HTTP 422 idempotency_key_reused" in changed.err and keyed not in changed.out

    # Another machine (no record of the upload) gets the service's 422, explained
    shutil.rmtree(tmp_path / "cache")
    elsewhere = run("submit", prompts, "--no-wait")
    assert elsewhere.code == 3
    assert "HTTP 422 idempotency_key_reused" in elsewhere.err and "--idempotency-key" in elsewhere.err


def test_an_expired_upload_url_gets_a_new_upload(run: Runner, fake: FakeJobsApi, tmp_path: Path) -> None:
    prompts = many(tmp_path / "big.jsonl", 1200)
    fake.expire_upload_puts = 1
    job_id = submit_no_wait(run, prompts)
    assert len(fake.requests_to("upload_create")) == 2
    first, second = (seen.path.rsplit("/", 1)[1] for seen in fake.requests_to("upload_put"))
    assert fake.uploads[first] is None and fake.uploads[second] is not None
    assert fake.requests_to("create")[0].json["items_upload_id"] == second
    assert fake.jobs[job_id].total == 1200

    fake.expire_upload_puts = 10
    refused = run("submit", prompts, "--idempotency-key", "other", "--no-wait")
    assert refused.code == 3 and "the upload URL was refused 3 times in a row" in refused.err


def test_api_gateways_403_for_a_missing_route_also_means_no_uploads(
    run: Runner, fake: FakeJobsApi, tmp_path: Path
) -> None:
    # A REST API answers a route it does not have with 403 {"message": "Missing Authentication Token"}
    gateway = {"x-amzn-ErrorType": "MissingAuthenticationTokenException"}
    fake.fail("upload_create", 403, message="Missing Authentication Token", headers=gateway)
    result = run("submit", many(tmp_path / "big.jsonl", 1001), "--no-wait")
    assert result.code == 0, result.err
    assert "this deployment has no POST /v1/uploads" in result.err
    assert len(result.out.split()) == 2 and [len(s.json["items"]) for s in fake.requests_to("create")] == [1000, 1]

    fake.fail("upload_create", 403, code="invalid_api_key", message="Forbidden")  # a real 403 is not a fallback
    refused = run("submit", many(tmp_path / "other.jsonl", 1002), "--no-wait")
    assert refused.code == 3 and "HTTP 403 invalid_api_key" in refused.err


def test_upload_errors_are_retried_honouring_retry_after(run: Runner, fake: FakeJobsApi, tmp_path: Path) -> None:
    fake.fail("upload_create", 503, code="upstream_unavailable", headers={"Retry-After": "0.5"})
    fake.fail("upload_put", 503, headers={"Retry-After": "0.25"})
    result = run("submit", many(tmp_path / "big.jsonl", 1001), "--no-wait")
    assert result.code == 0, result.err
    assert result.sleeps == [0.5, 0.25]
    assert "PUT upload: HTTP 503; retrying in 0.2 s (attempt 2)" in result.err
    assert len(fake.requests_to("upload_create")) == 2 and len(fake.requests_to("upload_put")) == 2
    assert len(fake.jobs) == 1

    fake.fail("upload_put", 503, headers={"Retry-After": "0"}, times=4)  # bounded: 4 attempts
    gave_up = run("submit", many(tmp_path / "other.jsonl", 1003), "--no-wait")
    assert gave_up.code == 3 and "PUT upload: HTTP 503 (gave up after 4 attempts)" in gave_up.err


def test_download_through_the_results_file_with_failed_and_canceled_items(
    run: Runner, fake: FakeJobsApi, tmp_path: Path
) -> None:
    # Given a finished job with a failed item (0) and two canceled ones (3, 4)
    fake.items_per_tick = 1
    job_id = submit_no_wait(run, *[arg for p in ["[fail] a", "b", "c", "d", "e"] for arg in ("--prompt", p)])
    assert "running" in run("status", job_id).out  # two reads: item 0 failed, 1 succeeded, 2 running
    assert run("cancel", job_id).code == 0  # 2 finishes, 3 and 4 never start
    assert run("wait", job_id).code == 1
    gets, pages = len(fake.requests_to("get")), [s for s in fake.requests_to("get") if "cursor" in s.query]

    # When it is downloaded
    result = run("download", job_id, "--out", "out")

    # Then one job read (its first page carries the image URLs), one results file read, one fetch per succeeded
    # image; no further page, no image document
    assert result.code == 1, result.err
    assert len(fake.requests_to("get")) == gets + 1
    assert [s for s in fake.requests_to("get") if "cursor" in s.query] == pages
    assert len(fake.requests_to("results")) == 1
    assert len(fake.requests_to("image_doc")) == 0 and len(fake.requests_to("image")) == 2
    rows = manifest.read_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert [row["status"] for row in rows] == ["failed", "succeeded", "succeeded", "canceled", "canceled"]
    assert rows[0]["error_code"] == "upstream_rejected" and rows[0]["file"] is None
    assert rows[0]["prompt"] is None  # the results file has no prompts, and this command did not submit the job
    assert rows[3]["error_code"] is None and rows[3]["file"] is None and rows[3]["image_id"] is None
    body = fake.image_bytes(job_id, 2)
    assert rows[2] | {"image_id": None} == {
        "job_id": job_id,
        "index": 2,
        "status": "succeeded",
        "prompt": "c",
        "seed": 1002,
        "num_steps": 4,
        "width": 1024,
        "height": 1024,
        "file": "0002-c.png",
        "sha256": hashlib.sha256(body).hexdigest(),
        "bytes": len(body),
        "image_id": None,
        "error_code": None,
        "error_message": None,
    }
    assert rows[2]["image_id"] == fake.image_id(job_id, 2)
    assert (tmp_path / "out" / "0002-c.png").read_bytes() == body

    # And a second run finds every file in place from the manifest: only the job read, no fetch
    gets = len(fake.requests_to("get"))
    again = run("download", job_id, "--out", "out")
    assert again.code == 1 and "0 downloaded, 2 already present" in again.err
    assert len(fake.requests_to("get")) == gets + 1
    assert len(fake.requests_to("image_doc")) == 0 and len(fake.requests_to("image")) == 2
    assert manifest.read_jsonl(tmp_path / "out" / "manifest.jsonl") == rows


def test_an_expired_results_url_is_renewed_by_reading_the_job_again(
    run: Runner, fake: FakeJobsApi, tmp_path: Path
) -> None:
    job_id = submit_no_wait(run, "--prompt", "a", "--prompt", "b")
    assert run("wait", job_id).code == 0
    fake.expire_results_fetches = 1
    gets = len(fake.requests_to("get"))
    result = run("download", job_id, "--out", "out")
    assert result.code == 0, result.err
    assert "the results file URL was refused (expired?); reading the job for a fresh one" in result.err
    rereads = fake.requests_to("get")[gets:]
    assert [seen.query.get("limit") for seen in rereads] == ["100", "1"]  # the job, then the job again
    signatures = [seen.query["X-Amz-Signature"] for seen in fake.requests_to("results")]
    assert len(signatures) == 2 and signatures[0] != signatures[1]  # the retry used the renewed URL
    assert len(fake.requests_to("image")) == 2

    # An expired image URL on this path is renewed by reading its page again: one call for both images
    fake.expire_image_fetches = 1
    gets = len(fake.requests_to("get"))
    renewed = run("download", job_id, "--out", "renewed")
    assert renewed.code == 0, renewed.err
    assert "item 0000: the image URL was refused (expired?); asking for a fresh one" in renewed.err
    assert len(fake.requests_to("get")) == gets + 2  # the job (its first page), then that page again
    assert len(fake.requests_to("image_doc")) == 0

    # A results file that stays refused: the items are read from the job's pages instead
    fake.expire_results_fetches = 10
    fallback = run("download", job_id, "--out", "again")
    assert fallback.code == 0, fallback.err
    assert "the results file URL was refused even after renewing it; reading the job's items" in fallback.err
    assert len(manifest.read_jsonl(tmp_path / "again" / "manifest.jsonl")) == 2


def test_a_results_file_cut_short_is_read_again_whole_not_appended_to(
    run: Runner, fake: FakeJobsApi, tmp_path: Path
) -> None:
    # Given a finished job whose results file breaks halfway through its body on the first fetch (after the CLI
    # has read some of its lines), and whose images download intact
    job_id = finished_job(run, tmp_path, 30)
    fake.cut_file_fetches = 1
    gets = len(fake.requests_to("get"))
    # When it is downloaded
    result = run("download", job_id, "--out", "out")
    # Then the results file was fetched again, once, and used: its lines replaced the broken read's (appended to
    # them it would be refused and every page read instead); the job was read once, its first page
    assert result.code == 0, result.err
    assert len(fake.requests_to("results")) == 2
    assert "could not be used" not in result.err
    assert len(fake.requests_to("get")) == gets + 1
    assert len(manifest.read_jsonl(tmp_path / "out" / "manifest.jsonl")) == 30


def test_an_image_url_asking_to_retry_later_than_the_longest_wait_fails_that_image_at_once(
    run: Runner, fake: FakeJobsApi, tmp_path: Path
) -> None:
    # Given a finished job whose first image fetch is answered 503 with a Retry-After of an hour
    job_id = finished_job(run, tmp_path, 2)
    fake.fail("image", 503, headers={"Retry-After": "3600"})
    # When it is downloaded
    result = run("download", job_id, "--out", "out")
    # Then that image fails at once, saying to try again later, without waiting (as every call of the CLI treats
    # a Retry-After past its longest wait); the other one downloads
    assert result.code == 3 and result.sleeps == []
    assert "try again later" in result.err
    rows = manifest.read_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert [(row["status"], row["error_message"]) for row in rows] == [
        ("download_failed", "GET image: HTTP 503 (the server asks to retry in 3600 s; try again later)"),
        ("succeeded", None),
    ]


def test_a_presigned_url_answering_with_a_redirect_is_not_followed(
    run: Runner, fake: FakeJobsApi, tmp_path: Path
) -> None:
    # Given a finished job whose first image URL answers with a redirect (to an address the CLI never checked)
    job_id = finished_job(run, tmp_path, 2)
    fake.fail("image", 302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
    before = len(fake.requests_to("image"))
    # When it is downloaded
    result = run("download", job_id, "--out", "out")
    # Then the redirect was not followed: that image failed saying why, the other downloaded, nothing else fetched
    assert result.code == 3
    rows = manifest.read_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert [(row["status"], row["error_message"]) for row in rows] == [
        ("download_failed", "the URL answered HTTP 302"),
        ("succeeded", None),
    ]
    assert len(fake.requests_to("image")) == before + 2


def test_status_shows_the_results_file(run: Runner, fake: FakeJobsApi) -> None:
    fake.items_per_tick = 1
    job_id = submit_no_wait(run, "--prompt", "a", "--prompt", "b")
    assert "results:" not in run("status", job_id).out  # not finished yet: results is null
    run("wait", job_id)
    status = run("status", job_id)
    assert f"results:   s3://bucket/jobs/{job_id}/results.jsonl (2 items)" in status.out


def test_dry_run_shows_the_upload_jobs(run: Runner, tmp_path: Path) -> None:
    prompts = many(tmp_path / "big.jsonl", 2500)
    result = run("submit", prompts, "--dry-run")
    assert result.code == 0, result.err
    assert result.out.startswith("job 1: 2500 items from an upload of ")
    assert "gets 3 jobs of at most 1,000 items instead" in result.err


def test_uploads_are_split_at_100000_lines_and_keyed_by_content() -> None:
    items = [inputs.Item({"prompt": f"p{n}", "seed": None if n % 2 else n}, f"f:{n}") for n in range(5)]
    plans = inputs.plan_uploads(items, webhook_url="https://h.example.com/x", metadata={"k": "日本"}, per_upload=2)
    assert [(plan.first, plan.size) for plan in plans] == [(1, 2), (3, 2), (5, 1)]
    for plan in plans:  # the same key the same content would have inline, computed without building the body
        body = {"items": [item.request for item in plan.items], "webhook_url": "https://h.example.com/x"}
        assert plan.idempotency_key == inputs.derived_key({**body, "metadata": {"k": "日本"}})
        reader = uploads.JsonlBody(plan)
        data = b"".join(iter(functools.partial(reader.read, 7), b""))  # small reads, as a socket asks
        assert len(data) == plan.file_bytes == len(uploads.JsonlBody(plan))
        assert [json.loads(line) for line in data.splitlines()] == [item.request for item in plan.items]
    keyed = inputs.plan_uploads(items, idempotency_key="k", per_upload=2)
    assert [plan.idempotency_key for plan in keyed] == ["k-part1of3", "k-part2of3", "k-part3of3"]
    assert inputs.plan_uploads(items)[0].size == 5 and inputs.MAX_LINES_PER_UPLOAD == 100_000


def test_the_fake_turns_an_invalid_upload_line_into_a_failed_item(fake: FakeJobsApi) -> None:
    # The contract the CLI is written against: blank lines ignored, a bad line a failed item with its line number
    with requests.Session() as session:
        session.headers["x-api-key"] = API_KEY
        upload = session.post(f"{fake.url}/v1/uploads", json={}).json()
        assert upload["id"].startswith("upl_") and upload["max_lines"] == 100_000
        data = b'{"prompt": "a"}\n\n{"prompt": 3}\n{"prompt": "b"}\n'
        assert requests.put(upload["upload_url"], data=data, timeout=5).status_code == 200
        body, key = {"items_upload_id": upload["id"]}, {"Idempotency-Key": "k"}
        job = session.post(f"{fake.url}/v1/jobs", json=body, headers=key)
        assert job.status_code == 202 and job.json()["total"] == 3 and job.json()["results"] is None
        job_id = job.json()["id"]
        for _ in range(3):
            document = session.get(f"{fake.url}/v1/jobs/{job_id}").json()
    assert document["items"][1]["error"] == {"code": "invalid_request", "message": "line 3: not a valid image request"}
    statuses = [record["status"] for record in fake.results_lines(fake.jobs[job_id])]
    assert statuses == ["succeeded", "failed", "succeeded"]
    assert document["results"]["s3_uri"] == f"s3://bucket/jobs/{job_id}/results.jsonl"


# ------------------------------------------------------------------------------------------------ download cost
def finished_job(run: Runner, tmp_path: Path, count: int) -> str:
    job_id = submit_no_wait(run, jsonl(tmp_path / "p.jsonl", *[f"prompt {n}" for n in range(count)]))
    assert run("wait", job_id).code == 0
    return job_id


@pytest.mark.parametrize("results_file", [True, False], ids=["results-file", "pages-only"])
def test_downloading_250_images_costs_a_call_per_100_images_not_one_per_image(
    run: Runner, fake: FakeJobsApi, tmp_path: Path, results_file: bool
) -> None:
    # Given a finished job of 250 succeeded items (with a results file, or from an older deployment without)
    fake.results_enabled = results_file
    job_id = finished_job(run, tmp_path, 250)
    before, fetched = len(fake.api_requests()), len(fake.requests_to("image"))

    # When it is downloaded
    result = run("download", job_id, "--out", "out")

    # Then the API is called for the job's three pages of 100 items, and never per image
    assert result.code == 0, result.err
    calls = fake.api_requests()[before:]
    assert len(calls) <= 3 + math.ceil(250 / 100)
    assert [(seen.path, page_offset(seen)) for seen in calls] == [(f"/v1/jobs/{job_id}", n) for n in (0, 100, 200)]
    assert fake.requests_to("image_doc") == []
    assert len(fake.requests_to("image")) == fetched + 250
    assert len(fake.requests_to("results")) == (1 if results_file else 0)
    assert "250 downloaded, 0 already present" in result.err
    out = tmp_path / "out"
    assert (out / "0249-prompt-249.png").read_bytes() == fake.image_bytes(job_id, 249)
    assert len(list(out.glob("*.png"))) == 250 and len(manifest.read_jsonl(out / "manifest.jsonl")) == 250

    # And run again, nothing is fetched: one call (the job) with the results file and the earlier manifest,
    # the three pages (their sha256s) without
    before, fetched = len(fake.api_requests()), len(fake.requests_to("image"))
    again = run("download", job_id, "--out", "out")
    assert again.code == 0 and "0 downloaded, 250 already present" in again.err
    assert [page_offset(seen) for seen in fake.api_requests()[before:]] == ([0] if results_file else [0, 100, 200])
    assert len(fake.requests_to("image")) == fetched


@pytest.mark.parametrize("results_file", [True, False], ids=["results-file", "pages-only"])
def test_expired_urls_of_a_page_cost_one_call_to_read_that_page_again(
    run: Runner, fake: FakeJobsApi, tmp_path: Path, results_file: bool
) -> None:
    # Given a finished job of 25 items in pages of 10 (the fake caps its pages: the same walk as 250 in pages of
    # 100, a tenth of the fetches), whose image URLs, as the download's read of the second page hands them out,
    # have expired (the fake signs each read's URLs with the job's next url_generation)
    fake.results_enabled = results_file
    fake.max_page = 10
    job_id = finished_job(run, tmp_path, 25)
    fake.stale_signatures = {f"sig{fake.jobs[job_id].url_generation + 2}"}
    before, fetched = len(fake.api_requests()), len(fake.requests_to("image"))

    # When it is downloaded
    result = run("download", job_id, "--out", "out")

    # Then the first refused image (item 10) has its page read again, once, and that page's fresh URLs serve
    # items 11-19 too: one more call than the three pages, no image document
    assert result.code == 0, result.err
    assert [page_offset(seen) for seen in fake.api_requests()[before:]] == [0, 10, 10, 20]
    assert fake.requests_to("image_doc") == []
    assert result.err.count("the image URL was refused (expired?)") == 1
    assert "item 0010: the image URL was refused (expired?); asking for a fresh one" in result.err
    assert len(fake.requests_to("image")) == fetched + 26
    for index in (9, 10, 19, 20):
        assert (tmp_path / "out" / f"{index:04d}-prompt-{index}.png").read_bytes() == fake.image_bytes(job_id, index)


def test_a_resumed_download_makes_no_call_for_the_files_already_there(
    run: Runner, fake: FakeJobsApi, tmp_path: Path
) -> None:
    # Given a job of 25 images in pages of 10, downloaded once
    fake.max_page = 10
    job_id = finished_job(run, tmp_path, 25)
    assert run("download", job_id, "--out", "out").code == 0
    out = tmp_path / "out"

    def resume() -> tuple[list[int | None], list[str], Result]:
        before, fetched = len(fake.api_requests()), len(fake.requests_to("image"))
        result = run("download", job_id, "--out", "out")
        assert result.code == 0, result.err
        fetches = [seen.path.rsplit("/", 1)[1] for seen in fake.requests_to("image")[fetched:]]
        return [page_offset(seen) for seen in fake.api_requests()[before:]], fetches, result

    # When two files of the first page are lost and one is damaged, then the download runs again
    (out / "0002-prompt-2.png").unlink()
    (out / "0005-prompt-5.png").unlink()
    (out / "0007-prompt-7.png").write_bytes(b"not the image")
    calls, fetches, result = resume()

    # Then only those three are fetched, and the job's one read (its first page has their URLs) is the only call
    assert calls == [0] and fetches == ["2.png", "5.png", "7.png"]
    assert "3 downloaded, 22 already present" in result.err
    assert (out / "0007-prompt-7.png").read_bytes() == fake.image_bytes(job_id, 7)

    # And one lost file far into the job costs its image document, not the pages before it
    (out / "0023-prompt-23.png").unlink()
    calls, fetches, result = resume()
    assert calls == [0, None] and fetches == ["23.png"]
    assert [seen.path for seen in fake.requests_to("image_doc")] == [f"/v1/images/{fake.image_id(job_id, 23)}"]
    assert (out / "0023-prompt-23.png").read_bytes() == fake.image_bytes(job_id, 23)

    # And three lost files on the last page cost the pages up to it, fewer calls than three image documents
    for index in (20, 21, 24):
        (out / f"{index:04d}-prompt-{index}.png").unlink()
    calls, fetches, result = resume()
    assert calls == [0, 10, 20] and fetches == ["20.png", "21.png", "24.png"]
    assert len(fake.requests_to("image_doc")) == 1


# ------------------------------------------------------------------------------------------------ image options
def _submitted_items(fake: FakeJobsApi) -> list[dict[str, Any]]:
    return [item for seen in fake.requests_to("create") for item in seen.json["items"]]


def test_image_options_go_in_every_item_and_num_images_is_sent_for_the_service_to_expand(
    run: Runner, fake: FakeJobsApi, tmp_path: Path
) -> None:
    # Given two prompts, one with its own size and seed, another asking for one image, and the options on the
    # command line
    prompts = jsonl(
        tmp_path / "p.jsonl",
        "a fox",
        {"prompt": "a hare", "width": 512, "height": 256, "seed": 9},
        {"prompt": "one owl", "num_images": 1},
    )
    argv = ["--aspect-ratio", "16:9", "--megapixels", "0.5", "--format", "webp", "--quality", "70", "--num-images", "2"]
    # When submitted
    result = run("submit", prompts, *argv, "--no-wait")
    assert result.code == 0, result.err
    # Then each prompt is one item carrying num_images (the service makes its images items, seeds seed, seed+1,
    # ...); the line's own size wins over the preset, its own num_images over the option (1: left out)
    items = _submitted_items(fake)
    assert len(items) == 3
    fox, hare, owl = items
    assert fox["aspect_ratio"] == "16:9" and fox["megapixels"] == 0.5 and "seed" not in fox
    assert (fox["num_images"], hare["num_images"]) == (2, 2) and "num_images" not in owl
    assert (hare["width"], hare["height"], hare["seed"]) == (512, 256, 9)
    assert "aspect_ratio" not in hare and "megapixels" not in hare
    assert all(i["output_format"] == "webp" and i["output_quality"] == 70 for i in items)
    # and the submission says how many items (images) the job has
    assert "3 prompts, 5 items" in result.err


def test_upload_plans_count_images_against_the_per_job_limit() -> None:
    from flux_images_cli.inputs import Item, plan_uploads

    # Given seven prompts of two images each and an upload limit of 5 items (images)
    items = [Item({"prompt": f"p{i}", "num_images": 2}, f"f:{i + 1}", frozenset()) for i in range(7)]
    plans = plan_uploads(items, per_upload=5)
    # Then each upload holds whole prompts of at most 5 images: 2 prompts (4 images) each, then 1
    assert [(plan.size, plan.images, plan.first) for plan in plans] == [(2, 4, 1), (2, 4, 3), (2, 4, 5), (1, 2, 7)]


def test_image_option_problems_name_the_field(run: Runner, tmp_path: Path) -> None:
    both = jsonl(tmp_path / "b.jsonl", {"prompt": "x", "aspect_ratio": "1:1", "width": 512})
    result = run("submit", both, "--dry-run")
    assert result.code == 2
    assert "b.jsonl:1: aspect_ratio: aspect_ratio and width are mutually exclusive" in result.err
    assert "b.jsonl:1: width: aspect_ratio and width are mutually exclusive" in result.err
    quality = run("submit", "--prompt", "x", "--quality", "50", "--dry-run")
    assert quality.code == 2 and "output_quality: output_quality needs output_format jpeg or webp" in quality.err
    assert run("submit", "--prompt", "x", "--num-images", "5", "--dry-run").code == 2
    assert run("submit", "--prompt", "x", "--aspect-ratio", "2:1", "--dry-run").code == 2
    old = run("submit", "--prompt", "x", "--format", "jsonl", "--dry-run")
    assert old.code == 2 and "--input-format" in old.err
    csv_file = write(tmp_path / "c.csv", "prompt,aspect_ratio,megapixels,output_format\nx,21:9,two,gif\n")
    bad_csv = run("submit", csv_file, "--dry-run")
    assert bad_csv.code == 2
    assert "c.csv:2: megapixels: 'two' is not a number" in bad_csv.err
    assert "c.csv:2: output_format" in bad_csv.err


def test_csv_takes_the_image_option_columns(run: Runner, fake: FakeJobsApi, tmp_path: Path) -> None:
    csv_file = write(
        tmp_path / "c.csv", "prompt,aspect_ratio,megapixels,output_format,output_quality\nx,9:16,2,jpeg,80\n"
    )
    submit_no_wait(run, csv_file, "--input-format", "csv")
    assert _submitted_items(fake) == [
        {"prompt": "x", "aspect_ratio": "9:16", "megapixels": 2.0, "output_format": "jpeg", "output_quality": 80}
    ]


def test_the_cli_api_error_is_the_clients_with_an_exit_code() -> None:
    """One ApiError: the CLI's is the client's (its fields and no_such_route) plus the exit code and the text."""
    import flux_images

    client_error = flux_images.ApiError(
        403,
        "http_403",
        "Missing Authentication Token",
        request_id="req-1",
        error_type="MissingAuthenticationTokenException",
        context="POST /v1/uploads",
        note="not retried",
    )
    error = api.ApiError.from_client(client_error)
    assert isinstance(error, flux_images.ApiError) and isinstance(error, api.CliError)
    assert (error.status, error.code, error.request_id, error.context) == (403, "http_403", "req-1", "POST /v1/uploads")
    assert error.no_such_route and error.exit_code == 3
    assert error.render().splitlines() == [
        "POST /v1/uploads: HTTP 403 http_403: Missing Authentication Token (not retried)",
        "  check --api-key / FLUX_IMAGES_API_KEY and that --api-url points at the right stage",
        "  request id: req-1",
    ]
    with pytest.raises(api.ApiError) as caught, api.cli_errors():
        raise client_error
    assert caught.value.message == "Missing Authentication Token (not retried)"
    with pytest.raises(api.ApiError) as again, api.cli_errors():
        raise error
    assert again.value is error  # already the CLI's: not wrapped a second time


def test_a_results_line_finds_its_submitted_request_by_request_index() -> None:
    from flux_images_cli.download import _known_request

    known = [{"prompt": "a", "seed": 4_294_967_295}, {"prompt": "b"}]
    # A job with requests of several images: the line names its request, the seed follows the image
    assert _known_request(known, {"index": 1, "request_index": 0, "image_index": 1}) == {"prompt": "a", "seed": 0}
    assert _known_request(known, {"index": 2, "request_index": 1, "image_index": 0}) == {"prompt": "b"}
    # A job of single images: the index is the request's
    assert _known_request(known, {"index": 1}) == {"prompt": "b"}
    assert _known_request(known, {"index": 2}) is None
