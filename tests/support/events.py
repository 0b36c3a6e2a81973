"""Sample API Gateway (REST, Lambda proxy v1) events from ``events/`` at the repository root."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EVENTS_DIR = Path(__file__).resolve().parents[2] / "events"


def load_event(name: str) -> dict[str, Any]:
    """A fresh copy of ``events/<name>.json`` (``name`` with or without ``.json``)."""
    file_name = name if name.endswith(".json") else f"{name}.json"
    path = EVENTS_DIR / file_name
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in EVENTS_DIR.glob("*.json")))
        raise FileNotFoundError(f"no event {file_name!r} in {EVENTS_DIR} (available: {available})")
    event = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(event, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return event
