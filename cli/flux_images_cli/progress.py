"""A job's progress on stderr that fits the terminal, or plain periodic lines when stderr is not a terminal.

On a terminal: one line redrawn in place, as wide as the terminal (``shutil.get_terminal_size``, read at every
redraw): the counts first, then a bar that takes what room is left and disappears below ``MIN_BAR`` cells; on a
very narrow terminal the label and the rate go before the counts are cut. In a pipe or a file: a plain line (no
``\\r``, no bar) at most every ``interval_s`` seconds, and one for the final state.

The rate is the items finished while this run watched, over the wall time it watched them; it is shown only
after ``MIN_RATE_WINDOW_S`` and once something finished meanwhile, so a job that was already finished (or
whose counts jumped at the first poll) never shows thousands of images per second.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from flux_images import JobState

MIN_BAR = 10
MIN_RATE_WINDOW_S = 2.0
PLAIN_INTERVAL_S = 10.0

_active: ProgressLine | None = None


def drawing(stream: TextIO) -> bool:
    """Whether a progress line is drawn on ``stream`` now."""
    return _active is not None and _active.drawn and _active.stream is stream


def write_message(text: str, stream: TextIO) -> None:
    """Print ``text`` on its own line(s) without breaking the progress line being drawn, if any."""
    line = _active
    if line is not None and line.drawn and line.stream is stream:
        line.clear()
        print(text, file=stream, flush=True)
        line.redraw()
    else:
        print(text, file=stream, flush=True)


def format_rate(per_second: float) -> str:
    if per_second >= 1:
        return f"{per_second:.1f} img/s"
    return f"{per_second * 60:.1f} img/min"


@dataclass(frozen=True)
class _Shown:
    done: int
    total: int
    parts: list[str]
    status: str
    final: bool


class ProgressLine:
    """Progress of one job, fed with each ``JobState`` the polls read (``Job.wait(progress=line.update)``), or of
    any count (``show``: the downloads)."""

    def __init__(
        self,
        label: str,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        tty: bool | None = None,
        interval_s: float = PLAIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        columns: Callable[[], int] | None = None,
    ) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval_s = interval_s
        self.clock = clock
        self.columns = columns or (lambda: shutil.get_terminal_size((80, 24)).columns)
        self.drawn = False
        self._started: float | None = None
        self._first_done = 0
        self._last_plain: float | None = None
        self._shown: _Shown | None = None
        self._text = ""

    def __enter__(self) -> ProgressLine:
        global _active
        _active = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------- feeding
    def update(self, state: JobState) -> None:
        """A job's state as a poll read it."""
        counts = state.counts
        parts = [f"ok {counts.succeeded}"]
        for name in ("failed", "canceled", "running", "queued"):
            value = getattr(counts, name)
            if value or (name in {"running", "queued"} and not state.done):
                parts.append(f"{name} {value}")
        self.show(state.finished, state.total, parts, status=state.status, final=state.done)

    def show(self, done: int, total: int, parts: list[str], *, status: str = "", final: bool = False) -> None:
        """``done`` of ``total`` finished, with ``parts`` (``"ok 3"``, …) after the numbers."""
        now = self.clock()
        if self._started is None:
            self._started, self._first_done = now, done
        self._shown = _Shown(done, total, parts, status, final)
        if not self.enabled:
            return
        if self.tty:
            self.redraw()
        elif self._last_plain is None or now - self._last_plain >= self.interval_s or final:
            self._last_plain = now
            print(self.plain_text(), file=self.stream, flush=True)

    def close(self) -> None:
        global _active
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
        if _active is self:
            _active = None

    # ------------------------------------------------------------------------------------------- text
    def rate(self) -> float | None:
        """Items per second finished while watched; None until that means something."""
        if self._shown is None or self._started is None:
            return None
        elapsed = self.clock() - self._started
        moved = self._shown.done - self._first_done
        if elapsed < MIN_RATE_WINDOW_S or moved <= 0:
            return None
        return moved / elapsed

    def plain_text(self) -> str:
        shown = self._shown
        if shown is None:
            return f"{self.label}: waiting"
        rate = self.rate()
        status = f"{shown.status} " if shown.status else ""
        text = f"{self.label}: {status}{shown.done}/{shown.total}"
        text += f" ({', '.join(shown.parts)})" if shown.parts else ""
        return text + (f", {format_rate(rate)}" if rate else "")

    def line_text(self, width: int) -> str:
        """The terminal line for ``width`` columns (at most ``width - 1`` characters: no wrap on the last column)."""
        shown = self._shown
        room = max(width - 1, 1)
        if shown is None:
            return f"{self.label}: waiting"[:room]
        done = f"{shown.done}/{shown.total}"
        percent = f"{100 * shown.done // shown.total if shown.total else 100:3d}%"
        counts = " ".join(shown.parts)
        rate = self.rate()
        rate_text = format_rate(rate) if rate else ""
        label = self.label[:16]
        candidates = [[label, done, counts, rate_text], [done, counts, rate_text], [done, counts]]
        heads = [" ".join(part for part in parts if part) for parts in candidates]
        for head in heads:  # the bar shrinks first; below MIN_BAR the label, then the rate make room for it
            bar_cells = room - len(head) - len(percent) - 4  # " |" + bar + "| " around the bar
            if bar_cells >= MIN_BAR:
                filled = min(bar_cells, bar_cells * shown.done // shown.total) if shown.total else bar_cells
                return f"{head} |{'#' * filled}{'-' * (bar_cells - filled)}| {percent}"
        for head in heads:
            if len(head) + 1 + len(percent) <= room:
                return f"{head} {percent}"
        return heads[-1][:room]

    def redraw(self) -> None:
        if not self.enabled or not self.tty or self._shown is None:
            return
        width = self.columns()
        text = self.line_text(width)
        pad = max(0, len(self._text) - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._text = text
        self.drawn = True

    def clear(self) -> None:
        if self.drawn:
            self.stream.write("\r" + " " * len(self._text) + "\r")
            self.stream.flush()
            self._text = ""
