"""Processes a test starts to watch another one end: a parent script whose first line names a process it started,
and whether a pid still runs. Not here: the local stack's own child processes (``devstack.loadgen.stack_process``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def parent_process(script: str, pythonpath: Path) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """Run ``script`` in a new Python whose first printed line is the pid of a process it started, then anything
    else the test needs (space-separated); yields the parent and that line's words. The named process is killed at
    the end, whatever the test found, and so is the parent."""
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(pythonpath)},
    )
    assert parent.stdout is not None
    words = parent.stdout.readline().split()
    try:
        yield parent, words
    finally:
        parent.kill()
        parent.wait(timeout=10)
        parent.stdout.close()
        if words:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(words[0]), signal.SIGKILL)


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
