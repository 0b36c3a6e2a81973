"""A bounded loopback load on the local stack: ``make run``'s program in a child process, N clients for T seconds.

Used by ``benchmarks/loopback_load.py`` (the README's figures) and ``tests/reliability/test_loopback_load.py``
(the same run, smaller, in CI). Traffic goes to 127.0.0.1 only and stops at the deadline.

A client counts each answer: 201 served (the body must be an image document with a URL), 429 a deliberate
throttle of the usage plan (it backs off 200–400 ms, as a client should), anything else an error by status, and
connection failures or timeouts an error by kind.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]
LOAD_KEY = "load-test-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class StackProcess:
    url: str
    moto_url: str
    api_key: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    exit_code: int | None = None  # after the context: how the program ended on Ctrl-C (SIGINT)
    log_file: Path | None = None  # the full log (``DEVSTACK_LOG``); deleted when the context ends
    log_text: str = ""  # its content, read when the context ends


@contextlib.contextmanager
def stack_process(
    *,
    emulator_latency_s: float,
    api_key: str = LOAD_KEY,
    timeout_s: float = 90,
    built: bool = False,
    env_overrides: dict[str, str] | None = None,
    sigint_ignored: bool = False,
) -> Iterator[StackProcess]:
    """``python -m devstack`` (what ``make run`` runs; ``built``: ``make run-built``) on free loopback ports, with
    the template's usage plan. ``output`` holds every line it writes to the terminal, also after the start; the
    full log goes to a temporary file, read into ``log_text`` and deleted at the end. The program runs in its own
    process group and is stopped like Ctrl-C in a terminal stops it: SIGINT to the whole group (moto included).
    ``sigint_ignored``: started as a non-interactive shell starts a background job (``make run &`` in a script),
    with SIGINT ignored, which a program inherits."""
    with tempfile.TemporaryDirectory(prefix="devstack-test-") as folder:
        log_file = Path(folder) / "devstack.log"
        with _stack_process(
            emulator_latency_s, api_key, timeout_s, built, log_file, env_overrides or {}, sigint_ignored
        ) as stack:
            yield stack


@contextlib.contextmanager
def _stack_process(
    emulator_latency_s: float,
    api_key: str,
    timeout_s: float,
    built: bool,
    log_file: Path,
    env_overrides: dict[str, str],
    sigint_ignored: bool,
) -> Iterator[StackProcess]:
    port, moto_port = free_port(), free_port()
    inherited = ("PATH", "HOME", "LANG", "SYSTEMROOT", "TMPDIR")  # not a test session's service variables
    env = {
        **{name: os.environ[name] for name in inherited if name in os.environ},
        "PYTHONPATH": os.pathsep.join(str(ROOT / part) for part in ("layers/shared", "functions/api", "local")),
        "PORT": str(port),
        "MOTO_PORT": str(moto_port),
        "FLUX_EMULATOR_PORT": str(free_port()),
        "CONSOLE_PORT": str(free_port()),  # the web console's own origin
        "MODERATION_PORT": str(free_port()),  # the ApplyGuardrail stand-in
        "LOCAL_API_KEY": api_key,
        "FLUX_EMULATOR_LATENCY": str(emulator_latency_s),
        "POWERTOOLS_LOG_LEVEL": "WARNING",  # a line per request would cost the child more than the work
        "DEVSTACK_LOG": str(log_file),
        **env_overrides,
    }
    if built:  # the functions run from the artefact: the stack's own process needs none of their code
        env["PYTHONPATH"] = str(ROOT / "local")
    command = [sys.executable, "-m", "devstack", *(["--built"] if built else [])]
    if sigint_ignored:  # `trap '' INT`: what sh does to a background job; exec keeps the disposition
        command = ["/bin/sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
    process = subprocess.Popen(  # noqa: S603 - this interpreter, a fixed module
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    lines: queue.Queue[str | None] = queue.Queue()
    stack = StackProcess(
        f"http://127.0.0.1:{port}", f"http://127.0.0.1:{moto_port}", api_key, process, log_file=log_file
    )

    def pump() -> None:
        assert process.stdout is not None
        with contextlib.suppress(OSError, ValueError):
            for line in process.stdout:
                stack.output.append(line)
                lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, name="devstack-output", daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError("the local stack did not start in time:\n" + "".join(stack.output)) from None
            if line is None:
                raise RuntimeError("the local stack exited:\n" + "".join(stack.output))
            if "Ctrl-C" in line:
                break
        yield stack
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the program and its children (moto)
            try:
                stack.exit_code = process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        reader.join(timeout=10)
        with contextlib.suppress(OSError):
            stack.log_text = log_file.read_text(encoding="utf-8")


@dataclass
class LoadResult:
    clients: int
    seconds: float
    sent: int = 0
    served: int = 0
    throttled: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        latencies = sorted(self.latencies_ms)

        def pct(p: float) -> float | None:
            if not latencies:
                return None
            return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))], 1)

        return {
            "clients": self.clients,
            "seconds": round(self.elapsed_s, 1),
            "sent": self.sent,
            "served": self.served,
            "throttled": self.throttled,
            "errors": sum(self.errors.values()),
            "errors_by_kind": dict(self.errors),
            "served_per_s": round(self.served / self.elapsed_s, 2) if self.elapsed_s else 0.0,
            "p50_ms": pct(50),
            "p90_ms": pct(90),
            "p99_ms": pct(99),
            "max_ms": round(latencies[-1], 1) if latencies else None,
            "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
        }


def run_load(url: str, api_key: str, *, clients: int, seconds: float, request_timeout_s: float = 60) -> LoadResult:
    """``clients`` threads POST /v1/images until ``seconds`` have passed (requests in flight then finish)."""
    result = LoadResult(clients, seconds)
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    started = time.monotonic()

    def client(number: int) -> None:
        session = requests.Session()
        session.trust_env = False
        rng = random.Random(number)  # noqa: S311 - back-off jitter
        while time.monotonic() < stop_at:
            body = {"prompt": f"load test client {number}", "width": 256, "height": 256}
            began = time.perf_counter()
            kind: str
            try:
                response = session.post(
                    f"{url}/v1/images", json=body, headers={"x-api-key": api_key}, timeout=request_timeout_s
                )
                elapsed_ms = (time.perf_counter() - began) * 1000
                if response.status_code == 201 and response.json().get("image", {}).get("url"):
                    kind = "served"
                elif response.status_code == 429:
                    kind = "throttled"
                else:
                    kind = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                elapsed_ms, kind = 0.0, type(exc).__name__
            with lock:
                result.sent += 1
                if kind == "served":
                    result.served += 1
                    result.latencies_ms.append(elapsed_ms)
                elif kind == "throttled":
                    result.throttled += 1
                else:
                    result.errors[kind] += 1
            if kind == "throttled":
                time.sleep(rng.uniform(0.2, 0.4))

    threads = [threading.Thread(target=client, args=(n,), name=f"load-{n}", daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + request_timeout_s + 10)
    result.elapsed_s = time.monotonic() - started
    return result


def stored_objects(moto_url: str, bucket: str) -> int:
    """Objects in the local stack's images bucket (one per served image: nothing generated twice)."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - moto's dummy credentials
    )
    return sum(page.get("KeyCount", 0) for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket))
