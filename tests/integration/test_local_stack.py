"""The local stack over real HTTP, as a developer uses it (`make run`)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from devstack import events as events_cli
from devstack.flux_emulator import FluxEmulator
from devstack.loadgen import free_port, stack_process
from devstack.stack import PORT_OFFSETS
from support.polling import eventually
from support.processes import parent_process, running
from support.secrets_under_test import API_KEY, ORIGIN
from support.stack_fixtures import drain, wait_for_job

ROOT = Path(__file__).resolve().parents[2]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_stack_generates_an_image_the_url_downloads(stack, emulator):
    # Given the running stack and its API key
    # When a client asks for a 768×512 image
    response = requests.post(
        f"{stack.url}/v1/images",
        json={"prompt": "a lighthouse in a storm", "width": 768, "height": 512},
        headers={"x-api-key": API_KEY},
        timeout=30,
    )
    # Then it gets 201 and a URL that downloads a PNG of that size
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/v1/images/{response.json()['id']}"
    image = requests.get(response.json()["image"]["url"], timeout=10)
    assert image.status_code == 200
    assert png_size(image.content) == (768, 512)

    # And the image can be fetched again by id
    again = requests.get(f"{stack.url}{response.headers['Location']}", headers={"x-api-key": API_KEY}, timeout=10)
    assert again.status_code == 200
    assert again.json()["image"]["sha256"] == response.json()["image"]["sha256"]


def test_stack_refuses_requests_without_the_api_key(stack, emulator):
    for headers in ({}, {"x-api-key": "wrong"}):
        response = requests.post(f"{stack.url}/v1/images", json={"prompt": "x"}, headers=headers, timeout=10)
        assert response.status_code == 403
        # API Gateway's INVALID_API_KEY answer, in the service's error shape (template GatewayResponses)
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.json()["error"]["details"] == []  # the documented shape, details included
        got = requests.get(f"{stack.url}/v1/images/img_{'0' * 32}", headers=headers, timeout=10)
        assert got.status_code == 403
    assert emulator.calls == 0


def test_stack_422_names_the_field(stack):
    response = requests.post(
        f"{stack.url}/v1/images",
        json={"prompt": "x", "width": 1000},
        headers={"x-api-key": API_KEY},
        timeout=10,
    )
    assert response.status_code == 422
    details = response.json()["error"]["details"]
    assert [detail["field"] for detail in details] == ["width"]
    assert "multiple of 16" in details[0]["message"]


def test_stack_serves_docs_and_spec_without_a_key(stack):
    docs = requests.get(f"{stack.url}/docs", timeout=10)
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    spec = requests.get(f"{stack.url}/openapi.json", timeout=10)
    assert spec.status_code == 200
    assert "/v1/images" in spec.json()["paths"]


def test_stack_answers_browser_preflight(stack):
    response = requests.options(
        f"{stack.url}/v1/images",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-api-key",
        },
        timeout=10,
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "x-api-key" in response.headers["Access-Control-Allow-Headers"].lower()


def test_stack_lets_browsers_read_the_replay_header(stack, emulator):
    # Given a browser page on an allowed origin that retries a generation with the same Idempotency-Key
    headers = {"x-api-key": API_KEY, "Origin": ORIGIN, "Idempotency-Key": "browser-retry-1"}
    body = {"prompt": "read by a browser", "width": 256, "height": 256}
    first = requests.post(f"{stack.url}/v1/images", json=body, headers=headers, timeout=30)
    replay = requests.post(f"{stack.url}/v1/images", json=body, headers=headers, timeout=30)
    # Then the replay says so, and CORS lets the page's script read that header
    assert first.status_code == replay.status_code == 201, replay.text
    assert replay.headers["Idempotent-Replayed"] == "true"
    exposed = {name.strip().lower() for name in replay.headers["Access-Control-Expose-Headers"].split(",")}
    assert "idempotent-replayed" in exposed


def test_make_run_entry_point_starts_prints_a_curl_and_stops_on_ctrl_c():
    # Given the command `make run` executes (`python -m devstack`), on free ports, in a child process started as a
    # script's background job is, with SIGINT ignored (the other tests start theirs as a terminal does)
    with stack_process(emulator_latency_s=0, api_key="entry-point-key", sigint_ignored=True) as child:
        # When it is up (its banner printed)
        text = "".join(child.output)
        # Then it printed a ready-to-paste curl with the key, and the API answers
        assert f"{child.url}/v1/images" in text, text
        assert "x-api-key: entry-point-key" in text, text
        # and the web console's URL, on its own origin, with the API port's /console/ leading there
        console_url = re.search(r"Console +(http://\S+/console/)", text).group(1)
        assert not console_url.startswith(child.url)
        page = requests.get(f"{child.url}/console/", timeout=10)
        assert page.status_code == 200 and page.url == console_url
        assert f'<meta name="api-base" content="{child.url}">' in page.text
        response = requests.post(
            f"{child.url}/v1/images",
            json={"prompt": "entry point", "width": 256, "height": 256},
            headers={"x-api-key": "entry-point-key"},
            timeout=30,
        )
        assert response.status_code == 201, response.text
    # And Ctrl-C (SIGINT to its process group, as a terminal sends it) stopped it cleanly within 20 s,
    # without a false error line from a poller that outlived moto
    assert child.exit_code == 0, "".join(child.output[-20:])
    assert not [line for line in child.output if "failed" in line.lower()], "".join(child.output)


def test_make_run_keeps_the_terminal_quiet_and_the_full_json_in_its_log_file():
    # Given make run's program at its default LOG_LEVEL (the child's POWERTOOLS_LOG_LEVEL left to the stack)
    with stack_process(emulator_latency_s=0, api_key="k", env_overrides={"POWERTOOLS_LOG_LEVEL": ""}) as child:
        # When an image is generated
        response = requests.post(
            f"{child.url}/v1/images",
            json={"prompt": "quiet", "width": 256, "height": 256},
            headers={"x-api-key": "k"},
            timeout=30,
        )
        assert response.status_code == 201, response.text
    # Then the terminal got the banner (naming the log file) and one short line for the request, no JSON
    terminal = "".join(child.output)
    assert f"in {child.log_file}" in terminal, terminal
    assert [line for line in child.output if "POST /v1/images 201" in line], terminal
    assert not [line for line in child.output if line.lstrip().startswith("{")], terminal
    # And the log file has the functions' JSON records of that image, and the same request line
    records = [line for line in child.log_text.splitlines() if line.startswith('{"level"')]
    assert any(response.json()["id"] in line for line in records), child.log_text[-2000:]
    assert "POST /v1/images 201" in child.log_text


def test_make_run_can_try_a_wrong_subscription_key_on_the_emulator():
    # Given the emulator told to require one key and the stack given another
    overrides = {"FLUX_API_KEY": "wrong-key-4242", "FLUX_EMULATOR_REQUIRE_KEY": "right-key-1717"}
    with stack_process(emulator_latency_s=0, api_key="k", env_overrides=overrides) as child:
        # When an image is asked for
        response = requests.post(
            f"{child.url}/v1/images",
            json={"prompt": "keyed", "width": 256, "height": 256},
            headers={"x-api-key": "k"},
            timeout=30,
        )
    # Then the key is refused as the vendor would refuse it, and the banner said the emulator checks it
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "upstream_auth"
    assert "checks the key (FLUX_EMULATOR_REQUIRE_KEY)" in "".join(child.output)
    # And neither key reached the terminal, the log or the answer
    for key in overrides.values():
        assert key not in "".join(child.output) + child.log_text + response.text


def test_make_run_honours_the_loopback_allowances_with_another_loopback_upstream():
    # Given another upstream on loopback, serving its images over http from loopback (as a test double does)
    with FluxEmulator(api_key="other-upstream-key") as upstream:
        overrides = {"FLUX_API_URL": upstream.url, "FLUX_API_KEY": "other-upstream-key"}
        with stack_process(emulator_latency_s=0, api_key="k", env_overrides=overrides) as child:
            # When an image is generated through make run's program
            response = requests.post(
                f"{child.url}/v1/images",
                json={"prompt": "elsewhere", "width": 256, "height": 256},
                headers={"x-api-key": "k"},
                timeout=30,
            )
        # Then the mirror fetched it (not refused as "without a valid https output URL"), from that upstream
        assert response.status_code == 201, response.text
        assert upstream.calls == 1
    # And the banner said what is relaxed against the deployed service
    banner = "".join(child.output)
    assert "Relaxed        mirror: http (IMAGE_ALLOW_HTTP), 127.0.0.0/8,::1/128" in banner, banner


@pytest.mark.parametrize(
    ("variable", "server"),
    [("PORT", "the local API Gateway"), ("MOTO_PORT", "moto"), ("FLUX_EMULATOR_PORT", "the Flux emulator")],
)
def test_make_run_names_a_port_already_in_use(variable, server):
    # Given one of the stack's ports taken by another program
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # When make run's program starts on it, every other port free (0: any free one; otherwise PORT would move
        # them to ports another test's stack may hold, and that one would be named first)
        others = {name: "0" for name in ("PORT", *PORT_OFFSETS, "CONSOLE_PORT") if name != variable}
        with (
            pytest.raises(RuntimeError) as failed,
            stack_process(emulator_latency_s=0, env_overrides={**others, variable: str(port)}),
        ):
            pass
    # Then it says which server, which address, and which variable moves it
    message = str(failed.value)
    assert f"{server} cannot listen on 127.0.0.1:{port}" in message, message
    assert f"(set {variable} to another port)" in message, message


def test_make_events_reads_the_bus_copy_with_the_projects_own_boto3(stack, api, emulator):
    # Given a finished one-item job (the worker publishes Image Generated and Job Completed)
    drain(stack.aws.client("sqs"), stack.seeded.events_queue_url)
    job_id = api("POST", "/v1/jobs", json={"items": [{"prompt": "evented", "width": 256, "height": 256}]}).json()["id"]
    wait_for_job(api, job_id)

    def make_events(*args: str) -> list[str]:
        out = io.StringIO()
        assert events_cli.main(["--endpoint", stack.aws.endpoint_url, *args], out=out) == 0
        return out.getvalue().splitlines()

    # When `make events ARGS=--keep` reads the queue (until the completion is there)
    def kept_with_the_completion() -> list[str] | None:
        kept = make_events("--keep")
        return kept if any("Job Completed" in line for line in kept) else None

    kept = eventually(kept_with_the_completion, 20, "Job Completed in `make events ARGS=--keep`", 0.2)
    # Then one line per event names its type and carries the job's id
    assert any("Image Generated" in line and job_id in line for line in kept), kept
    assert any("Job Completed" in line and job_id in line for line in kept), kept
    # And without --keep they are shown once more and taken off the queue
    assert make_events() == kept
    assert make_events() == []


def run_as_a_group(args: list[str], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` capturing text, with the command in a process group of its own, ended whole (SIGTERM) when
    it outlasts ``timeout`` or the test is interrupted: ``subprocess.run`` kills only the script, whose EXIT trap then
    never stops the stack it started in the background."""
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            raise
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def test_make_demo_leaves_nothing_in_tmp(tmp_path):
    # Given make demo's script with its own temporary folder watched, on free ports, the emulator without latency
    watched = tmp_path / "tmp"
    watched.mkdir()
    env = {
        **{name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ},
        "TMPDIR": str(watched),
        "PORT": str(free_port()),
        "MOTO_PORT": str(free_port()),
        "FLUX_EMULATOR_PORT": str(free_port()),
        "CONSOLE_PORT": str(free_port()),
        "MODERATION_PORT": str(free_port()),
        "FLUX_EMULATOR_LATENCY": "0",
        "DEMO_OUT": str(tmp_path / "images"),
        "DEMO_LOG_DIR": str(tmp_path / "logs"),
    }
    # When it runs to the end
    done = run_as_a_group(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Then every prompt became an image, the stack's logs are where it said, and the temporary folder is empty
    prompts = [line for line in (ROOT / "examples/prompts.jsonl").read_text().splitlines() if line.strip()]
    assert len(list((tmp_path / "images").rglob("*.png"))) == len(prompts)
    assert f"log: {tmp_path / 'logs' / 'demo-stack.log'}" in done.stdout
    assert (tmp_path / "logs" / "demo-devstack.log").stat().st_size > 0
    assert list(watched.iterdir()) == []


def readme_try_it_blocks() -> list[str]:
    """The README's "Try it" shell blocks, up to the bulk CLI (make demo is tested on its own)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Try it", 1)[1].split("\n## ", 1)[0]
    blocks = [block.split("```", 1)[0] for block in section.split("```bash\n")[1:]]
    return [block.split("# Or with the bulk CLI", 1)[0] for block in blocks]


def test_readme_try_it_pastes_as_is_with_no_placeholder_to_fill(tmp_path):
    # Given the README's examples, pasted into one shell, and make run's program on other ports
    blocks = readme_try_it_blocks()
    script = "\n".join(blocks)
    assert len(blocks) == 2 and "<" not in script.replace("<<", ""), "a placeholder to fill in by hand"
    with stack_process(emulator_latency_s=0, api_key="local-dev-key") as child:
        script = script.replace("http://127.0.0.1:3000", child.url).replace("cabin.png", str(tmp_path / "cabin.png"))
        moto_port = child.moto_url.rsplit(":", 1)[1]
        env = {**os.environ, "PORT": child.url.rsplit(":", 1)[1], "MOTO_PORT": moto_port}
        # When it runs, stopping at the first failing command
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
    # Then every command worked: the image downloaded, the bad requests were refused naming why
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "cabin.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '"code":"validation_error"' in done.stdout.replace(" ", "")
    assert '"code":"invalid_api_key"' in done.stdout.replace(" ", "")
    assert '"items_upload_id"' not in done.stdout  # the upload job was accepted, not refused


# A stack's process that starts moto as `make run` does (LocalAws) and prints moto's pid, then waits to be killed.
STARTS_MOTO = """
import time
from devstack.aws import LocalAws
aws = LocalAws().start()
print(aws._process.pid, aws.endpoint_url, flush=True)
time.sleep(120)
"""


def test_moto_ends_with_a_stack_killed_without_stopping_it():
    # Given moto started by a stack's process (in a session of its own, so Ctrl-C in a terminal does not reach it)
    with parent_process(STARTS_MOTO, ROOT / "local") as (stack, (pid, url)):
        assert requests.get(url, timeout=5).status_code < 500
        # When that process is killed (kill -9, a test runner's timeout): its stop() never runs
        stack.kill()
        stack.wait(timeout=10)
        # Then moto exits too, and its port is free for the next `make run`
        eventually(lambda: not running(int(pid)), 10, "moto to exit after the stack's process")
