"""The documentation a user clones must be whole: every relative link in it resolves inside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked(pattern: str) -> list[Path]:
    names = subprocess.run(["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / name for name in names.stdout.split()]


MARKDOWN = tracked("*.md")


@pytest.mark.skipif(not MARKDOWN, reason="not a git checkout")
@pytest.mark.parametrize("document", MARKDOWN, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(document: Path) -> None:
    broken = []
    for target in LINK.findall(document.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # an absolute URL (https:, mailto:) or an anchor in the same page
        path = (document.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(target)
    assert broken == [], f"{document.relative_to(ROOT)} links to what a clone does not have: {broken}"


def test_the_upstream_contract_is_described_in_the_repository() -> None:
    text = (ROOT / "docs/upstream.md").read_text(encoding="utf-8")
    assert "Ocp-Apim-Subscription-Key" in text and "num_steps" in text
    assert "(docs/upstream.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
