"""Cold start of both functions, measured on the built artefact, against each one's import floor.

What runs is what ``make build`` ships (``.aws-sam/build``, rebuilt first when older than the sources), made
host-compatible (``devstack.artefact.host_compatible``: the arm64 extension modules of pydantic-core,
charset-normalizer and wrapt swapped for the host's builds of the same versions; all Python code and bytecode are
the build's). Each sample is a new bare Python 3.12 (``-I -S -B``) whose ``sys.path`` is the function folder, then
the layers in the template's order, then the standard library: nothing from the dev virtual environment.

Per handler and sample: the import of its module (its init), then, in the same process, its first event: the API
handles a POST /v1/images with an invalid body (``events/post_image_invalid.json``, a 422, no AWS call); the
worker handles one job message for an unknown job with its item processing replaced by an acknowledgement (so
measured are settings, AWS clients, the batch processor and record validation, not the network; AWS_ENDPOINT_URL
points at a closed local port so nothing could reach AWS anyway).

The floor is what the handler cannot avoid importing, from the same artefact: for the API, Powertools Logger,
Metrics and the REST resolver with its validation (pydantic); for the worker, Logger, Metrics, the batch utility
(asyncio and Powertools' event data classes come with it) and pydantic. ``floor_first`` adds what the first event
cannot avoid (the worker: boto3 and requests). Each floor defines one constrained pydantic model, its validator
deferred as the project's models defer theirs (``defer_build``): the class machinery any user of ``BaseModel`` pays.
Samples alternate (handler, floor, ...) so machine noise hits both alike; medians are reported.

    PYTHONPATH=layers/shared:functions/api:functions/worker:local .venv/bin/python benchmarks/cold_start.py --artefact
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "local")]  # when run without the PYTHONPATH above

from devstack import artefact  # noqa: E402
from devstack.artefact_probe import first_event  # noqa: E402

GOALS_MS = {"ApiFunction": 260.0, "WorkerFunction": 300.0}
GOAL_RATIO = 1.10

API_FLOOR = """
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.event_handler.openapi.params import Body
from pydantic import BaseModel, ConfigDict, Field
class Floor(BaseModel):
    model_config = ConfigDict(defer_build=True)
    x: int = Field(ge=0)
"""
WORKER_FLOOR = """
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.batch import BatchProcessor, process_partial_response
from pydantic import BaseModel, ConfigDict, Field
class Floor(BaseModel):
    model_config = ConfigDict(defer_build=True)
    x: int = Field(ge=0)
"""
WORKER_FIRST = """
import boto3, requests
"""
FLOORS = {"ApiFunction": (API_FLOOR, API_FLOOR), "WorkerFunction": (WORKER_FLOOR, WORKER_FLOOR + WORKER_FIRST)}
KINDS = {"ApiFunction": "api", "WorkerFunction": "worker"}


def sample(function: artefact.ArtefactFunction, mode: str, payload: str) -> dict[str, Any]:
    done = subprocess.run(
        artefact.probe_argv(function, mode, payload),
        env=artefact.bare_env(**artefact.LAMBDA_ENV),
        capture_output=True,
        text=True,
        check=False,
        cwd=function.code_dir,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{function.logical_id} {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1)


def run(runs: int, *, without_bytecode: bool = False) -> dict[str, Any]:
    build_dir = artefact.ensure_built()
    directory = artefact.host_compatible(build_dir)
    if without_bytecode:  # what SAM's Python builder shipped: the same files without any .pyc
        with tempfile.TemporaryDirectory(prefix="no-pyc-", dir=directory.parent) as scratch:
            copy = Path(scratch) / "build"
            shutil.copytree(directory, copy, ignore=shutil.ignore_patterns("__pycache__"))
            return measure(copy, runs, label=f"{directory.relative_to(ROOT)} without bytecode")
    return measure(directory, runs, label=str(directory.relative_to(ROOT)))


def measure(directory: Path, runs: int, *, label: str) -> dict[str, Any]:
    build_dir = artefact.BUILD_DIR
    functions = artefact.load_artefact(directory)
    jobs = []
    for logical_id, kind in KINDS.items():
        function = functions[logical_id]
        handler = json.dumps({"module": function.module, "kind": kind, "event": first_event(kind)})
        floor, floor_first = FLOORS[logical_id]
        jobs.append((logical_id, function, handler, floor, floor_first))
    samples: dict[str, dict[str, list[float]]] = {
        logical_id: {"import": [], "first": [], "floor": [], "floor_first": [], "modules": []} for logical_id in KINDS
    }
    for _, function, handler, _, floor_first in jobs:  # warm the file cache once
        sample(function, "handler", handler), sample(function, "floor", floor_first)
    for _ in range(runs):
        for logical_id, function, handler, floor, floor_first in jobs:
            measured = sample(function, "handler", handler)
            samples[logical_id]["import"].append(measured["import_s"])
            samples[logical_id]["first"].append(measured["first_s"])
            samples[logical_id]["modules"].append(len(measured["modules"]))
            samples[logical_id]["floor"].append(sample(function, "floor", floor)["import_s"])
            if floor_first != floor:
                samples[logical_id]["floor_first"].append(sample(function, "floor", floor_first)["import_s"])
    result: dict[str, Any] = {
        "runs": runs,
        "artefact": label,
        "host": platform.machine(),
        "build_arch": artefact.build_arch(build_dir),
        "swapped_for_host": artefact.swapped_distributions(directory),
        "functions": {},
    }
    for logical_id, series in samples.items():
        import_ms, first_ms, floor_ms = ms(series["import"]), ms(series["first"]), ms(series["floor"])
        floor_first_ms = ms(series["floor_first"]) if series["floor_first"] else floor_ms
        total_ms = ms([a + b for a, b in zip(series["import"], series["first"], strict=True)])
        result["functions"][logical_id] = {
            "import_ms": import_ms,
            "first_event_ms": first_ms,
            "import_and_first_ms": total_ms,
            "modules_after_first": int(statistics.median(series["modules"])),
            "floor_ms": floor_ms,
            "ratio": round(import_ms / floor_ms, 3),
            "floor_first_ms": floor_first_ms,
            "ratio_with_first": round(total_ms / floor_first_ms, 3),
            "goal_ms": GOALS_MS[logical_id],
            "goal_ratio": GOAL_RATIO,
            "meets_goals": import_ms <= GOALS_MS[logical_id] and import_ms / floor_ms <= GOAL_RATIO,
        }
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        f"cold start on the artefact ({result['artefact']}, median of {result['runs']}; "
        f"{result['build_arch']} build, extensions swapped for {result['host']}: "
        f"{', '.join(result['swapped_for_host'])}); times in ms",
        f"{'function':<15}{'import':>9}{'floor':>9}{'ratio':>8}{'goal':>14}"
        f"{'+first':>9}{'total':>9}{'floor':>9}{'ratio':>8}",
    ]
    for logical_id, row in result["functions"].items():
        goal = f"{row['goal_ms']:.0f}/{row['goal_ratio']:.2f}x"
        lines.append(
            f"{logical_id:<15}{row['import_ms']:>9.1f}{row['floor_ms']:>9.1f}{row['ratio']:>8.3f}{goal:>14}"
            f"{row['first_event_ms']:>9.1f}{row['import_and_first_ms']:>9.1f}{row['floor_first_ms']:>9.1f}"
            f"{row['ratio_with_first']:>8.3f}  {'met' if row['meets_goals'] else 'MISSED'}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--artefact", action="store_true", default=True, help="measure the built artefact (default)")
    parser.add_argument(
        "--without-bytecode", action="store_true", help="the same artefact with every .pyc removed (the old build)"
    )
    args = parser.parse_args()
    result = run(max(args.runs, 1), without_bytecode=args.without_bytecode)
    print(json.dumps(result, indent=2))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
