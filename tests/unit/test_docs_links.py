"""The documentation a user clones must be whole: every relative link in it resolves inside the repository."""

from __future__ import annotations

import ast
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


def test_every_top_level_folder_and_module_says_what_lives_there() -> None:
    # Each top-level folder of the repository opens with a README.md, each Python module with a docstring:
    # a reader landing anywhere learns what is there (and what is not) before reading code.
    files = [path.relative_to(ROOT) for path in tracked("*")]
    folders = sorted({path.parts[0] for path in files if len(path.parts) > 1 and not path.parts[0].startswith(".")})
    assert folders, "no tracked folder: not a git checkout?"
    assert [folder for folder in folders if not (ROOT / folder / "README.md").is_file()] == []
    without = [
        str(path)
        for path in files
        if path.suffix == ".py"
        and (ROOT / path).stat().st_size
        and not ast.get_docstring(ast.parse((ROOT / path).read_text(encoding="utf-8")))
    ]
    assert without == [], f"modules without a docstring: {without}"
