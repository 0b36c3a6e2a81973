"""The Makefile as a newcomer meets it: ``make help`` and what the first bootstrap says."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make(*args: str) -> str:
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_make_help_prints_clean_aligned_lines():
    # When a newcomer runs `make help`
    lines = make("help").splitlines()
    # Then every line is "make <target>  <what>", with no make or shell syntax left in it
    parsed = [re.match(r"^  make (\S+)( +)(\S.*)$", line) for line in lines]
    assert lines and all(parsed), lines
    assert not [line for line in lines if "$" in line], "make syntax printed as is"
    # And the descriptions start in one column
    columns = {len("  make ") + len(m.group(1)) + len(m.group(2)) for m in parsed if m}
    assert len(columns) == 1, lines
    assert {m.group(1) for m in parsed if m} >= {"run", "unit", "test", "demo", "events", "venv"}


def test_the_bootstrap_says_what_it_installs_and_how_long_it_takes():
    # When the bootstrap's commands are listed (dry run, every step forced as on a fresh clone)
    commands = make("-n", "-B", "venv").splitlines()
    # Then each step announces itself before it runs, with a rough duration
    uv_install = next(i for i, line in enumerate(commands) if "pip install" in line)
    sync = next(i for i, line in enumerate(commands) if " sync " in line)
    announce_uv = [i for i, line in enumerate(commands) if line.startswith("echo") and "bootstrap: uv" in line]
    announce_venv = [i for i, line in enumerate(commands) if line.startswith("echo") and "about a minute" in line]
    assert announce_uv and announce_uv[0] < uv_install, commands
    assert announce_venv and announce_venv[0] < sync, commands
    assert "MB" in commands[announce_venv[0]]  # and what it costs on disk
