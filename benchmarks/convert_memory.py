"""Memory of mirroring a 2048×2048 image with a conversion (``output_format``), the largest the service makes.

The upstream image is the worst case for size: a 2048×2048 RGB PNG of random pixels (incompressible, ~12 MB).
Each format runs in a fresh process that first mirrors a small image with the same conversion (imports Pillow,
builds clients and pools), then reports how much mirroring the big one raised its peak RSS (``ru_maxrss``) and
the Python-level peak (``tracemalloc``; Pillow's pixel buffers are C allocations, seen only in RSS). Moto (S3) and
the image server run in another process. Also measured: the same image mirrored without a conversion (streaming).

What a conversion holds at its peak: the source file (it is decoded whole), one decoded RGB frame (12 MiB at
2048×2048), the encoded output and the upload buffer. Target: ≤ 64 MB above the warm process, against the API
function's 512 MB and the worker's.

    PYTHONPATH=layers/shared:local .venv/bin/python benchmarks/convert_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_MB = 64

INFRA = r"""
import io, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from PIL import Image
from devstack.aws import LocalAws, Resources

def png(side):
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, format="PNG", compress_level=1)
    return out.getvalue()

bodies = {"/big": png(2048), "/small": png(256)}

class Images(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_GET(self):
        body = bodies["/big" if self.path.startswith("/big") else "/small"]
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

aws = LocalAws().start()
aws.seed(Resources())
server = ThreadingHTTPServer(("127.0.0.1", 0), Images)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(aws.endpoint_url, f"http://127.0.0.1:{server.server_address[1]}", len(bodies["/big"]), flush=True)
sys.stdin.read()
"""

MEASURE = r"""
import json, resource, sys, tracemalloc
import boto3
from imagegen.adapters.convert import Conversion
from imagegen.adapters.mirror import ImageMirror
from imagegen.adapters.netguard import UrlGuard, guarded_session
from imagegen.budget import Deadline

fmt, endpoint, images = sys.argv[1], sys.argv[2], sys.argv[3]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="local", aws_secret_access_key="local")
mirror = ImageMirror(s3, "flux-images-local", UrlGuard(("127.0.0.1",), allow_http=True),
                     session=guarded_session(["127.0.0.0/8"]))
conversion = None if fmt == "none" else Conversion(fmt, None if fmt == "png" else 90)
mirror.mirror(images + "/small", "warmup-" + fmt, {}, Deadline.after(120), conversion=conversion)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
stored = mirror.mirror(images + "/big", "big-" + fmt, {}, Deadline.after(120), conversion=conversion)
python_peak = tracemalloc.get_traced_memory()[1]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"format": fmt, "content_type": stored.content_type, "bytes": stored.bytes,
                  "size": [stored.width, stored.height],
                  "peak_rss_increase_mb": round((after - before) / 1024, 1),
                  "tracemalloc_peak_mb": round(python_peak / 2**20, 1)}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ}
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / part) for part in ("layers/shared", "local"))
    infra = subprocess.Popen(
        [sys.executable, "-c", INFRA], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    formats = ("none", "png", "jpeg", "webp")
    results: dict[str, list[dict[str, object]]] = {fmt: [] for fmt in formats}
    try:
        assert infra.stdout is not None
        endpoint, images, source_bytes = infra.stdout.readline().split()
        for _ in range(args.runs):
            for fmt in formats:
                started = time.perf_counter()
                out = subprocess.run(
                    [sys.executable, "-c", MEASURE, fmt, endpoint, images],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                assert result["size"] == [2048, 2048], result
                results[fmt].append(result)
                print(
                    f"{fmt:5s} {result['content_type']:11s} {result['bytes']:>10,} B  "
                    f"peak RSS +{result['peak_rss_increase_mb']:5.1f} MB  "
                    f"tracemalloc {result['tracemalloc_peak_mb']:5.1f} MB"
                    f"  ({time.perf_counter() - started:.1f} s)"
                )
    finally:
        if infra.stdin is not None:
            infra.stdin.close()
        infra.wait(timeout=30)
    summary = {
        "source": f"2048x2048 RGB PNG of random pixels, {int(source_bytes):,} bytes",
        "peak_rss_increase_mb": {fmt: max(r["peak_rss_increase_mb"] for r in results[fmt]) for fmt in formats},  # type: ignore[type-var]
        "tracemalloc_peak_mb": {fmt: max(r["tracemalloc_peak_mb"] for r in results[fmt]) for fmt in formats},  # type: ignore[type-var]
        "target_mb": TARGET_MB,
    }
    summary["meets_target"] = all(value <= TARGET_MB for value in summary["peak_rss_increase_mb"].values())  # type: ignore[union-attr]
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
