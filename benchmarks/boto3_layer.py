"""What boto3/botocore cost in the dependencies layer: size (unzipped and zipped) with and without them, and the
import of boto3 (plus one client) from the layer's bytecode vs. from the same files without bytecode.

The second case stands in for a copy of boto3 that ships no usable ``.pyc`` (on a read-only file system it is
compiled at every cold start). Whether the Lambda runtime's own boto3 (``/var/runtime``) ships ``.pyc`` cannot be
checked from here; see docs/build.md.

    PYTHONPATH=local .venv/bin/python benchmarks/boto3_layer.py --runs 9
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "local")]

from devstack import artefact  # noqa: E402

AWS_SDK = ("boto3", "botocore", "s3transfer")  # what the runtime provides (jmespath etc. stay: Powertools needs them)
IMPORT = "import boto3\nboto3.client('dynamodb', region_name='us-east-1')\n"


def owned(site: Path, names: tuple[str, ...]) -> set[Path]:
    files: set[Path] = set()
    for dist_info in site.glob("*.dist-info"):
        if dist_info.name.split("-")[0].lower() in names:
            for line in (dist_info / "RECORD").read_text(encoding="utf-8").splitlines():
                files.add((site / line.split(",", 1)[0]).resolve())
            files.update(path.resolve() for path in dist_info.rglob("*") if path.is_file())
    for name in names:
        files.update(path.resolve() for path in (site / name).rglob("*") if path.is_file())
    return files


def sizes(layer: Path, exclude: set[Path]) -> dict[str, float]:
    buffer, unzipped, count = io.BytesIO(), 0, 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(layer.rglob("*")):
            if path.is_file() and path.resolve() not in exclude:
                archive.write(path, path.relative_to(layer))
                unzipped += path.stat().st_size
                count += 1
    zipped = len(buffer.getvalue())
    return {"files": count, "unzipped_mb": round(unzipped / 1e6, 1), "zipped_mb": round(zipped / 1e6, 1)}


def import_ms(function: artefact.ArtefactFunction, runs: int) -> float:
    samples = []
    for _ in range(runs):
        argv = artefact.probe_argv(function, "floor", IMPORT)
        done = subprocess.run(argv, env=artefact.bare_env(**artefact.LAMBDA_ENV), capture_output=True, text=True)
        samples.append(json.loads(done.stdout.strip().splitlines()[-1])["import_s"])
    return round(statistics.median(samples) * 1000, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    build = artefact.ensure_built()
    layer = build / "DependenciesLayer"
    sdk = owned(layer / "python", AWS_SDK)
    result: dict[str, object] = {
        "layer_with_sdk": sizes(layer, set()),
        "layer_without_sdk": sizes(layer, sdk),
    }
    host = artefact.host_compatible(build)
    function = artefact.load_artefact(host)["WorkerFunction"]
    with tempfile.TemporaryDirectory() as scratch:
        # the same boto3, botocore and s3transfer without bytecode, in front of the layer
        bare = Path(scratch) / "sdk"
        for name in AWS_SDK:
            source = host / "DependenciesLayer" / "python" / name
            shutil.copytree(source, bare / name, ignore=shutil.ignore_patterns("__pycache__"))
        uncompiled = artefact.ArtefactFunction("sdk", "x.y", bare, function.layer_dirs)
        compiled = artefact.ArtefactFunction("sdk", "x.y", Path(scratch) / "empty", function.layer_dirs)
        (Path(scratch) / "empty").mkdir()
        runs = max(args.runs, 1)
        timings = {"compiled": [], "uncompiled": []}
        for _ in range(runs):  # alternate
            timings["compiled"].append(import_ms(compiled, 1))
            timings["uncompiled"].append(import_ms(uncompiled, 1))
    result["import_boto3_and_client_ms"] = {key: statistics.median(values) for key, values in timings.items()}
    result["runs"] = runs
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
