"""Time for the local Flux emulator to answer a generation of the largest size (2048×2048) and serve the PNG.

Kept out of the unit tests (which check only that the image is a valid 2048×2048 PNG): a wall-clock bound there
fails on a loaded CI box. Here the figure is printed; the goal is well under 2 s per image, so that the local stack
stays snappy at any size.

    PYTHONPATH=local .venv/bin/python benchmarks/emulator_render.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import requests
from devstack.flux_emulator import AUTH_HEADER, FluxEmulator

SIZE = 2048


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="images to generate (each with another seed)")
    args = parser.parse_args()
    timings: list[float] = []
    with FluxEmulator(api_key="bench") as emulator, requests.Session() as session:
        session.trust_env = False
        for seed in range(args.runs):
            started = time.perf_counter()
            answer = session.post(
                emulator.url,
                json={"prompt": "benchmark", "seed": seed, "width": SIZE, "height": SIZE},
                headers={AUTH_HEADER: "bench"},
                timeout=60,
            )
            answer.raise_for_status()
            image = session.get(answer.json()["output"], timeout=60)
            image.raise_for_status()
            timings.append(time.perf_counter() - started)
    print(
        f"emulator {SIZE}x{SIZE} generate+download over {len(timings)} runs: "
        f"median {statistics.median(timings):.3f} s, max {max(timings):.3f} s (goal < 2 s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
