"""``make run-built``: the local stack serving the built artefact, end to end over HTTP.

The stack runs as ``make run-built`` runs it (``python -m devstack --built`` in a child process, on free loopback
ports), and its functions run from ``.aws-sam/build`` in bare child processes (``devstack.runtime``). An image is
generated and downloaded, a two-item job goes through the queue and the worker, and each function's environment
reports where its code came from: the handler, ``imagegen`` and ``pydantic_core`` from the (host-compatible) build,
never from functions/, layers/ or the dev virtual environment. The stack's own process does not even have the
source tree on its path, so none of this can pass with the functions imported in-process.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests
from devstack import artefact
from devstack.loadgen import stack_process
from support import stack_fixtures
from support.bulk_benchmark import run_bulk_benchmark

pytestmark = [pytest.mark.artefact, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "run-built-key"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ITEMS = 12  # of the bulk benchmark's job
INIT_LINE = re.compile(r"^\[(?P<function>\w+)#\d+\] INIT (?P<handler>\S+) in \d+ ms \(pid \d+\): (?P<loaded>.*)$")


def loaded_from(output: list[str]) -> dict[str, dict[str, Path]]:
    """Per function, where its first environment loaded each module from (the runtime's INIT lines)."""
    found: dict[str, dict[str, Path]] = {}
    for line in output:
        match = INIT_LINE.match(line.rstrip("\n"))
        if match and match["function"] not in found:
            pairs = (item.split(" from ", 1) for item in match["loaded"].split(", "))
            found[match["function"]] = {name: (ROOT / path).resolve() for name, path in pairs}
    return found


def wait_for_job(session: requests.Session, url: str, job_id: str, timeout_s: float = 120) -> dict:
    def api(method: str, path: str) -> requests.Response:
        return session.request(method, f"{url}{path}", headers={"x-api-key": API_KEY}, timeout=30)

    return stack_fixtures.wait_for_job(api, job_id, timeout_s)


def test_run_built_serves_images_and_jobs_from_the_artefact(built_artefact: Path) -> None:
    # Given `make run-built`'s stack on free ports, over the artefact `make build` produced
    runnable = artefact.host_compatible(built_artefact)
    with stack_process(emulator_latency_s=0, api_key=API_KEY, timeout_s=300, built=True) as stack:
        banner = "".join(stack.output)
        assert "the built artefact" in banner, banner
        session = requests.Session()
        session.trust_env = False

        # When a client asks for an image
        created = session.post(
            f"{stack.url}/v1/images",
            json={"prompt": "a lighthouse from the artefact", "width": 256, "height": 256},
            headers={"x-api-key": API_KEY},
            timeout=60,
        )
        # Then it gets 201 and a URL that downloads a PNG
        assert created.status_code == 201, created.text
        image = session.get(created.json()["image"]["url"], timeout=30)
        assert image.status_code == 200
        assert image.content[:8] == PNG_MAGIC

        # When a small job is submitted
        submitted = session.post(
            f"{stack.url}/v1/jobs",
            json={
                "items": [
                    {"prompt": "one", "width": 256, "height": 256},
                    {"prompt": "two", "width": 256, "height": 256},
                ]
            },
            headers={"x-api-key": API_KEY},
            timeout=60,
        )
        assert submitted.status_code == 202, submitted.text
        # Then the worker finishes it
        job = wait_for_job(session, stack.url, submitted.json()["id"])
        assert job["status"] == "succeeded", job
        assert job["counts"]["succeeded"] == 2

        # And both functions ran from the artefact: handler, shared layer and dependencies layer
        origins = loaded_from(stack.output)
    assert set(origins) == {"ApiFunction", "WorkerFunction"}, "".join(stack.output[-40:])
    layout = artefact.load_artefact(runnable)
    for function_id, modules in origins.items():
        function = layout[function_id]
        assert modules["handler"].is_relative_to(function.code_dir), modules
        layers = {layer.parent.name: layer for layer in function.layer_dirs}
        assert modules["imagegen"].is_relative_to(layers["SharedLayer"]), modules
        assert modules["pydantic_core"].is_relative_to(layers["DependenciesLayer"]), modules
        for source in (ROOT / "functions", ROOT / "layers", ROOT / ".venv"):
            assert not any(path.is_relative_to(source) for path in modules.values()), modules
    assert stack.exit_code == 0, "".join(stack.output[-20:])


def test_the_bulk_benchmark_runs_the_artefact_with_warm_environments(built_artefact: Path) -> None:
    """``benchmarks/bulk_jobs.py --built``: every execution environment a process of the artefact, started by a
    warm-up job first, and the measured job counted from zero after it. Counts only, never the benchmark's timings."""
    # Given the artefact, two worker environments of one slot, batches of one, and a warm-up job of 4 items
    result = run_bulk_benchmark(ITEMS, "--built", "--warm-up", "4", timeout_s=420)
    # Then the measured job ran in the artefact, every item generated once (the warm-up's calls not counted), the
    # webhook verified, and the warm-up's invocations left out of the count
    assert result["functions"].startswith("the built artefact") and result["warm_up_items"] == 4
    assert result["succeeded"] == ITEMS and result["upstream_calls"] == ITEMS and result["s3_objects"] == ITEMS
    assert result["none_generated_twice"] and result["upstream_429"] == 0 and result["upstream_max_in_flight"] <= 2
    assert result["webhooks_verified"] and result["webhook_s"] >= result["completed_s"]
    # and the invocations counted are the measured job's alone (each one timed), fewer than its messages: the refill
    assert result["invocations"] == len(result["batches"]) < ITEMS
