"""``benchmarks/bulk_jobs.py`` run as a user runs it (its own process, its own local stack), small: two worker
invocations of one slot each, batches of one message, the emulator at 0.1 s. Its JSON result, for tests that assert
what it counted (never its timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_bulk_benchmark(items: int, *extra: str, timeout_s: float = 240) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            str(ROOT / part) for part in ("layers/shared", "functions/api", "functions/worker", "local")
        ),
    }
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "bulk_jobs.py"),
        "--vendor-items",
        "0",
        "--items",
        str(items),
        "--job-items",
        str(items),
        "--invocations",
        "2",
        "--slots",
        "1",
        "--batch-size",
        "1",
        "--latency",
        "0.1",
        *extra,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{\n") :])
