"""docs/client.md cannot rot: its Python blocks run, in order and in one namespace, against the fake API.

The blocks read ``FLUX_IMAGES_API_URL`` / ``FLUX_IMAGES_API_KEY`` / ``FLUX_WEBHOOK_SECRET`` from the environment
as a user's script would; here they point at the fake. Jobs finish at their first poll, so nothing waits.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest
from cli_fake_server import FakeJobsApi

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "client.md"
API_KEY = "docs-test-key-0123456789abcdef"
WEBHOOK_SECRET = "whsec_" + "ZG9jcy13ZWJob29rLXNlY3JldA=="


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[dict[str, Any], str, FakeJobsApi]:
    fake = FakeJobsApi(api_key=API_KEY, items_per_tick=100).start()
    monkeypatch.setenv("FLUX_IMAGES_API_URL", fake.url)
    monkeypatch.setenv("FLUX_IMAGES_API_KEY", API_KEY)
    monkeypatch.setenv("FLUX_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "docs_client"}
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output):
            for number, block in enumerate(python_blocks(DOC.read_text(encoding="utf-8")), start=1):
                exec(compile(block, f"docs/client.md block {number}", "exec"), namespace)
        namespace["client"].close()
    finally:
        fake.stop()
    return namespace, output.getvalue(), fake


def test_the_readme_example_runs_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (block,) = [
        block for block in python_blocks((ROOT / "README.md").read_text(encoding="utf-8")) if "flux_images" in block
    ]
    fake = FakeJobsApi(api_key=API_KEY, items_per_tick=100).start()
    monkeypatch.chdir(tmp_path)
    try:
        code = block.replace("http://127.0.0.1:3000", fake.url).replace("local-dev-key", API_KEY)
        assert code != block  # it names make run's URL and key, which the test points at the fake
        with contextlib.redirect_stdout(io.StringIO()) as output:
            exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    finally:
        fake.stop()
    assert output.getvalue().splitlines()[-1] == "2/2"
    assert sorted(path.name for path in (tmp_path / "my-images").iterdir()) == ["0000.png", "0001.png"]


def test_the_document_has_the_examples_it_promises() -> None:
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 6
    joined = "\n".join(blocks)
    for call in ("Client(", ".generate(", ".submit(", ".wait(progress=", ".results()", ".download(", ".cancel()"):
        assert call in joined
    assert "verify_webhook(" in joined and "RetryPolicy(" in joined


def test_every_example_runs_and_does_what_it_says(ran: tuple[dict[str, Any], str, FakeJobsApi], tmp_path: Path) -> None:
    namespace, output, fake = ran
    # one image, then a job of two followed to the end and downloaded
    assert namespace["image"].parameters.seed == 15 and namespace["fresh"].id == namespace["image"].id
    assert namespace["final"].status == "succeeded" and "2/2 finished: 2 ok, 0 failed" in output
    assert sorted(path.name for path in (tmp_path / "spring-images").iterdir()) == ["0000.png", "0001.png"]
    # the canceled batch, the API error, and the replayed Idempotency-Key
    assert namespace["state"].counts.canceled == 20 and "True 20" in output
    assert "422 validation_error rq-2" in output and "body.prompt" in output
    assert namespace["again"].id == namespace["nightly"].id and len(fake.requests_to("create")) == 4
    assert API_KEY not in output


def test_the_webhook_example_accepts_the_service_signature_and_refuses_a_forgery(
    ran: tuple[dict[str, Any], str, FakeJobsApi], capsys: pytest.CaptureFixture[str]
) -> None:
    from imagegen.adapters.webhooks import WebhookSender

    on_webhook = ran[0]["on_webhook"]
    body = '{"id":"job_1","status":"partially_failed","total":3}'
    headers = WebhookSender(lambda: WEBHOOK_SECRET).headers("job_1", body)
    assert on_webhook(headers, body.encode()) == 204
    assert on_webhook(headers, body.replace("partially_failed", "succeeded").encode()) == 400
    assert "job job_1 ended partially_failed" in capsys.readouterr().out
