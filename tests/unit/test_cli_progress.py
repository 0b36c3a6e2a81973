"""``flux-images``' first ten minutes: a progress line that fits the terminal, plain lines in a pipe, a sane rate,
and warnings when an option changes nothing or a re-run found the job of an earlier run."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_fake_server import FakeJobsApi
from flux_images import JobState
from flux_images_cli import api
from flux_images_cli.main import main
from flux_images_cli.progress import ProgressLine

API_KEY = "progress-test-key-0123456789abcdef"
JOB_ID = "job_5f0e2b7c9a1d4e3f8b6a0c2d4e6f8a0b"


def state(succeeded: int, *, failed: int = 0, running: int = 0, total: int = 1000, status: str = "running") -> JobState:
    queued = total - succeeded - failed - running
    counts = {"succeeded": succeeded, "failed": failed, "canceled": 0, "running": running, "queued": queued}
    return JobState.from_json({"id": JOB_ID, "status": status, "total": total, "counts": counts})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def terminal_line(width: int, *states: JobState, clock: Clock | None = None) -> tuple[ProgressLine, str]:
    stream = io.StringIO()
    line = ProgressLine(JOB_ID, stream=stream, tty=True, columns=lambda: width, clock=clock or Clock())
    for each in states:
        line.update(each)
    return line, line.line_text(width)


@pytest.mark.parametrize("width", [80, 120])
def test_the_line_fits_the_terminal_with_every_count_whole_and_a_bar(width: int) -> None:
    _, text = terminal_line(width, state(412, failed=3, running=16))
    assert len(text) <= width - 1
    for part in ("415/1000", "ok 412", "failed 3", "running 16", "queued 569", " 41%"):
        assert part in text
    bar = text[text.index("|") + 1 : text.rindex("|")]
    assert len(bar) >= 10 and set(bar) <= {"#", "-"}


def test_the_bar_shrinks_first_then_goes_and_the_counts_stay_whole() -> None:
    _, wide = terminal_line(120, state(412, failed=3, running=16))
    _, medium = terminal_line(80, state(412, failed=3, running=16))
    _, narrow = terminal_line(50, state(412, failed=3, running=16))
    bar = lambda text: text.count("#") + text.count("-")  # noqa: E731
    assert bar(wide) > bar(medium) >= 10
    assert "|" not in narrow and len(narrow) <= 49
    assert "ok 412 failed 3 running 16 queued 569" in narrow


def test_in_a_pipe_plain_lines_at_most_every_interval_and_the_final_one() -> None:
    clock, stream = Clock(), io.StringIO()
    line = ProgressLine(JOB_ID, stream=stream, tty=False, interval_s=10, clock=clock)
    for now, done in [(0, 0), (1, 10), (5, 50), (11, 110), (12, 120)]:
        clock.now = now
        line.update(state(done, total=200))
    clock.now = 13
    line.update(state(200, total=200, status="succeeded"))
    line.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and "|" not in stream.getvalue()
    assert len(lines) == 3
    assert lines[0].startswith(f"{JOB_ID}: running 0/200") and "110/200" in lines[1]
    assert lines[2].startswith(f"{JOB_ID}: succeeded 200/200 (ok 200)")


def test_the_rate_counts_only_what_finished_while_watched() -> None:
    clock = Clock()
    # A job already finished at the first poll: no rate at all (it was 131758 img/s)
    finished, text = terminal_line(120, state(1000, total=1000, status="succeeded"), clock=clock)
    assert finished.rate() is None and "img/s" not in text and "img/min" not in text
    # A job moving 0 → 40 over 20 s of watching: 2 img/s; nothing shown in the first 2 s
    clock = Clock()
    line, _ = terminal_line(120, state(0), clock=clock)
    clock.now = 1.0
    line.update(state(30))
    assert line.rate() is None
    clock.now = 20.0
    line.update(state(40))
    assert line.rate() == pytest.approx(2.0) and "2.0 img/s" in line.line_text(120)
    # A slow job: per minute
    clock.now = 600.0
    line.update(state(50))
    assert "5.0 img/min" in line.line_text(120)


def test_a_redraw_overwrites_a_longer_previous_line_and_close_ends_it() -> None:
    stream = io.StringIO()
    line = ProgressLine(JOB_ID, stream=stream, tty=True, columns=lambda: 60, clock=Clock())
    line.update(state(1, running=100))
    line.update(state(1))
    first, second = stream.getvalue().split("\r")[1:]
    assert len(second) >= len(first)  # padded over the old text
    line.close()
    assert stream.getvalue().endswith("\n")


# ------------------------------------------------------------------------------------------------ the CLI
@pytest.fixture
def fake() -> Iterator[FakeJobsApi]:
    with FakeJobsApi(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def cli(fake: FakeJobsApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    monkeypatch.setenv("FLUX_IMAGES_API_URL", fake.url)
    monkeypatch.setenv("FLUX_IMAGES_API_KEY", API_KEY)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(api, "_sleep", lambda seconds: None)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def prompts(path: Path, *lines: dict[str, Any]) -> str:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_an_option_every_line_overrides_is_warned_about(cli: Any, tmp_path: Path) -> None:
    every = prompts(tmp_path / "p.jsonl", {"prompt": "a", "width": 512}, {"prompt": "b", "width": 1024})
    code, _, err = cli("submit", every, "--width", "768", "--height", "512", "--dry-run")
    assert code == 0
    assert "warning: --width 768 changes nothing: every input line sets its own width" in err
    assert "--height" not in err  # no line sets a height: the option applies

    some = prompts(tmp_path / "q.jsonl", {"prompt": "a", "width": 512}, {"prompt": "b"})
    code, _, err = cli("submit", some, "--width", "768", "--dry-run")
    assert code == 0 and "changes nothing" not in err


def test_a_rerun_that_finds_an_earlier_job_says_so(cli: Any, fake: FakeJobsApi, tmp_path: Path) -> None:
    file = prompts(tmp_path / "p.jsonl", {"prompt": "a", "width": 512})
    code, out, err = cli("submit", file, "--no-wait")
    job_id = out.strip()
    assert code == 0 and f"submitted {job_id}" in err and "earlier run" not in err
    # The earlier run was long ago: the API replays its stored answer, created_at and all
    created = fake.jobs[job_id].created_at
    for key, (digest, status, answer) in list(fake._idempotency.items()):
        fake._idempotency[key] = (digest, status, answer.replace(created.encode(), b"2026-01-02T03:04:05Z"))
    code, out, err = cli("submit", file, "--no-wait")
    assert code == 0 and out.strip() == job_id and len(fake.jobs) == 1
    assert f"{job_id} is the job an earlier run created (2026-01-02 03:04:05 UTC)" in err
    assert "--idempotency-key" in err and f"submitted {job_id}" not in err


def test_in_a_pipe_waiting_and_downloading_write_no_carriage_returns(
    cli: Any, fake: FakeJobsApi, tmp_path: Path
) -> None:
    file = prompts(tmp_path / "p.jsonl", {"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"})
    code, _, err = cli("submit", file, "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert "\r" not in err
    assert any(line.startswith("job_") and "3/3 (ok 3)" in line for line in err.splitlines())
    assert "download: 3/3" in err
