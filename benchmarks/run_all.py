"""Run every benchmark and print their figures (the README's table comes from this).

make bench
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    ("Cold start of both functions on the built artefact, vs their floors", ["cold_start.py", "--runs", "15"]),
    ("Memory (mirroring a 64 MB image)", ["mirror_memory.py", "--runs", "3"]),
    ("Overhead on the local stack (emulator at 1 s)", ["local_overhead.py", "--requests", "20"]),
    ("Bulk: 200 items, emulator at 1 s and 16 concurrent; vendor sample serial", ["bulk_jobs.py"]),
    (
        "Bulk: 200 items on the built artefact, an execution environment per process",
        ["bulk_jobs.py", "--vendor-items", "0", "--built"],
    ),
    (
        "Bulk: 2,000 items in 20 jobs, 16 x 1 slot, batches of 2",
        ["bulk_jobs.py", "--vendor-items", "0", "--items", "2000", "--job-items", "100"],
    ),
    ("Load: 50 clients for 60 s on POST /v1/images, emulator at 200 ms", ["loopback_load.py"]),
]


def main() -> int:
    failed = 0
    for title, command in BENCHMARKS:
        print(f"\n== {title}", flush=True)
        result = subprocess.run([sys.executable, str(HERE / command[0]), *command[1:]], check=False)
        failed += result.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
