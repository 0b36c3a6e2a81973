"""Cold start of the API function: import + init of its module in a fresh process, against the floor.

The floor imports only the unavoidable dependencies in one process: boto3, requests, pydantic (``BaseModel``:
``import pydantic`` alone is lazy and loads almost nothing) and the Powertools event handler. Bytecode is
compiled first, as in a Lambda deployment package. Each sample is a new interpreter; runs alternate so
machine noise hits both sides alike. Target: module ≤ 1.15 × floor (median).

    make bench            # all benchmarks
    PYTHONPATH=layers/shared:functions/api:local .venv/bin/python benchmarks/cold_start.py --runs 21
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FLOOR = """
import time
started = time.perf_counter()
import boto3, requests
from pydantic import BaseModel
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
print(time.perf_counter() - started)
"""

MODULE = """
import time
started = time.perf_counter()
import api_handler
print(time.perf_counter() - started)
"""

# Also reported, not the target: the module plus every adapter the first POST /v1/images loads lazily
# (boto3 clients' modules, requests, the Flux client, the mirror), so the deferred cost is visible.
MODULE_AND_ADAPTERS = """
import time
started = time.perf_counter()
import api_handler
import imagegen.wiring
print(time.perf_counter() - started)
"""


def sample(code: str, env: dict[str, str]) -> float:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / part) for part in ("layers/shared", "functions/api"))
    # What template.yaml sets for the function (no AWS call happens at import).
    env.update(
        {
            "POWERTOOLS_SERVICE_NAME": "image-api",
            "POWERTOOLS_METRICS_NAMESPACE": "FluxImageService",
            "CORS_ALLOWED_ORIGINS": "https://app.example.com",
            "ENABLE_DOCS": "true",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    return env


def run(runs: int) -> dict[str, float | bool]:
    for folder in (ROOT / "layers", ROOT / "functions", Path(sys.prefix) / "lib"):
        compileall.compile_dir(folder, quiet=1, workers=0)
    env = environment()
    sample(FLOOR, env)  # warm the OS file cache once for both
    sample(MODULE, env)
    floor, module, full = [], [], []
    for _ in range(runs):
        floor.append(sample(FLOOR, env))
        module.append(sample(MODULE, env))
        full.append(sample(MODULE_AND_ADAPTERS, env))
    result: dict[str, float | bool] = {
        "runs": runs,
        "floor_ms_median": round(statistics.median(floor) * 1000, 1),
        "module_ms_median": round(statistics.median(module) * 1000, 1),
        "module_and_adapters_ms_median": round(statistics.median(full) * 1000, 1),
    }
    result["ratio"] = round(result["module_ms_median"] / result["floor_ms_median"], 3)
    result["ratio_with_adapters"] = round(result["module_and_adapters_ms_median"] / result["floor_ms_median"], 3)
    result["target_ratio"] = 1.15
    result["meets_target"] = result["ratio"] <= 1.15
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    print(json.dumps(run(args.runs), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
