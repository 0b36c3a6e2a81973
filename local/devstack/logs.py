"""Where ``make run``'s output goes: everything to a log file, a short summary to the terminal.

The functions log one JSON object per line (Powertools Logger), which is what CloudWatch wants and too much for a
terminal: two long lines per image. The stack's own lines (the gateway's one line per request, the queue's one
line per batch, the banner, tracebacks) stay short. So every line goes to the log file as written, and the
terminal gets the stack's own lines as they are and, of the functions' JSON records, only those at or above
``LOG_LEVEL`` [WARNING], each as one short line (level, service, message, the error's type).
"""

from __future__ import annotations

import io
import json
import logging
import threading
from typing import Any, TextIO

DEFAULT_TERMINAL_LEVEL = "WARNING"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_MESSAGE = 200  # characters of a record's message on the terminal


def parse_level(text: str | None, *, name: str = "LOG_LEVEL", default: str = DEFAULT_TERMINAL_LEVEL) -> str:
    """A level name (``debug``, ``INFO``, …) in upper case; anything else is refused naming the variable."""
    value = (text or "").strip().upper() or default
    if value == "WARN":
        value = "WARNING"
    if value not in LEVELS:
        raise SystemExit(f"devstack: {name}={text!r} is not a log level: use one of {', '.join(LEVELS)}")
    return value


def function_log_level(terminal_level: str) -> str:
    """The functions' ``POWERTOOLS_LOG_LEVEL`` for a terminal level: INFO at least, so the file is complete."""
    return min((terminal_level, "INFO"), key=LEVELS.index)


def summarise(line: str, threshold: int) -> str | None:
    """What the terminal shows of one output line: ``None`` to show nothing, else the line to show."""
    stripped = line.strip()
    if not stripped.startswith("{"):
        return line  # the stack's own short lines, tracebacks
    try:
        record = json.loads(stripped)
    except ValueError:
        return line
    if not isinstance(record, dict) or "level" not in record:
        return None  # a metrics document (EMF) or other machine output: the file has it
    level = str(record.get("level", "")).upper()
    number = logging.getLevelName(level)  # an int for a known level name
    if isinstance(number, int) and number < threshold:
        return None
    message = record.get("message")
    text = message if isinstance(message, str) else json.dumps(message, default=str)
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 1] + "…"
    parts = [f"{level:<7}", f"{record.get('service') or 'function'}:", text]
    if record.get("exception_name"):
        parts.append(f"({record['exception_name']})")
    return " ".join(parts)


class LogRouter(io.TextIOBase):
    """A text stream (for ``sys.stdout`` / ``sys.stderr``) that writes every line to ``file`` and its
    :func:`summarise` to ``terminal``. Thread-safe; a partial line waits for its end."""

    def __init__(self, file: TextIO, terminal: TextIO, terminal_level: str, lock: threading.Lock | None = None):
        self._file = file
        self._terminal = terminal
        self._threshold = logging.getLevelName(terminal_level)
        self._lock = lock or threading.Lock()
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                self._emit(line)
        return len(text)

    def _emit(self, line: str) -> None:
        self._file.write(line + "\n")
        shown = summarise(line, self._threshold)
        if shown is not None:
            self._terminal.write(shown + "\n")

    def flush(self) -> None:
        with self._lock:
            self._file.flush()
            self._terminal.flush()

    def close_pending(self) -> None:
        """Write a last line without its newline, if any."""
        with self._lock:
            if self._pending:
                self._emit(self._pending)
                self._pending = ""

    @property
    def encoding(self) -> Any:  # type: ignore[override]
        return getattr(self._terminal, "encoding", "utf-8")

    def isatty(self) -> bool:
        return self._terminal.isatty()
