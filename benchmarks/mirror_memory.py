"""Memory of mirroring a 64 MB image into S3: the streaming mirror against the naive way.

Naive: ``requests.get(url).content`` then ``put_object`` — the whole image in memory (twice, briefly).
Streaming: ``ImageMirror`` — 1 MiB reads into one 5 MiB multipart part buffer.

Moto (the S3 endpoint) and the image server run in a separate process, so only the mirroring side is measured.
Each approach runs in a fresh process that first does a small warm-up mirror (imports, clients, connection
pools), then reports how much the 64 MB mirror raised its peak RSS (``ru_maxrss``). Target: ≤ 16 MB for the
streaming mirror.

    PYTHONPATH=layers/shared:functions/api:local .venv/bin/python benchmarks/mirror_memory.py
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
MIB = 1024 * 1024

INFRA = r"""
import sys, threading, struct, zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from devstack.aws import LocalAws, Resources

size = int(sys.argv[1])
header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 4096, 4096, 8, 2, 0, 0, 0)
header += struct.pack(">I", zlib.crc32(header[12:29]))
block = bytes(range(256)) * 4096  # 1 MiB, generated once; the body is streamed from it

class Images(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_GET(self):
        total = size if self.path.startswith("/big") else 64 * 1024
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(total))
        self.end_headers()
        self.wfile.write(header)
        left = total - len(header)
        while left > 0:
            chunk = block[: min(left, len(block))]
            self.wfile.write(chunk)
            left -= len(chunk)

aws = LocalAws().start()
aws.seed(Resources())
server = ThreadingHTTPServer(("127.0.0.1", 0), Images)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(aws.endpoint_url, f"http://127.0.0.1:{server.server_address[1]}", flush=True)
sys.stdin.read()
"""

MEASURE = r"""
import json, resource, sys
import boto3, requests
from imagegen.adapters.mirror import ImageMirror
from imagegen.adapters.netguard import UrlGuard, guarded_session
from imagegen.budget import Deadline

mode, endpoint, images, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="local", aws_secret_access_key="local")
bucket = "flux-images-local"
mirror = ImageMirror(s3, bucket, UrlGuard(("127.0.0.1",), allow_http=True),
                     session=guarded_session(["127.0.0.0/8"]), max_bytes=size * 2)
session = requests.Session()

def naive(url, key):
    body = session.get(url, timeout=60).content
    s3.put_object(Bucket=bucket, Key=key + ".png", Body=body, ContentType="image/png")
    return len(body)

def streaming(url, key):
    return mirror.mirror(url, key, {}, Deadline.after(120)).bytes

run = naive if mode == "naive" else streaming
run(images + "/small", "warmup")          # imports, clients, pools: not part of the measurement
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stored = run(images + "/big", "big-" + mode)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mode": mode, "bytes": stored, "peak_rss_increase_mb": round((after - before) / 1024, 1)}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mb * MIB
    env = {**os.environ}
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / part) for part in ("layers/shared", "local"))
    infra = subprocess.Popen(
        [sys.executable, "-c", INFRA, str(size)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        endpoint, images = infra.stdout.readline().split()
        results: dict[str, list[float]] = {"naive": [], "streaming": []}
        for _ in range(args.runs):
            for mode in ("naive", "streaming"):
                started = time.perf_counter()
                out = subprocess.run(
                    [sys.executable, "-c", MEASURE, mode, endpoint, images, str(size)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                assert result["bytes"] == size, result
                results[mode].append(result["peak_rss_increase_mb"])
                print(f"{mode:9s} {result['peak_rss_increase_mb']:6.1f} MB  ({time.perf_counter() - started:.1f} s)")
    finally:
        infra.stdin.close()
        infra.wait(timeout=30)
    summary = {
        "image_mb": args.size_mb,
        "naive_peak_rss_increase_mb": max(results["naive"]),
        "streaming_peak_rss_increase_mb": max(results["streaming"]),
        "target_mb": 16,
    }
    summary["meets_target"] = summary["streaming_peak_rss_increase_mb"] <= 16
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
