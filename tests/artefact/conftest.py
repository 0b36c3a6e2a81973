"""The built artefact for the tests of this folder: ``make build`` once per session when ``.aws-sam/build`` is
missing or older than template.yaml or any file under functions/ or layers/ (``devstack.artefact.ensure_built``), so
CI, which runs every test on a fresh clone, checks the artefact it has just built."""

from __future__ import annotations

from pathlib import Path

import pytest
from devstack import artefact


@pytest.fixture(scope="session")
def built_artefact() -> Path:
    """``.aws-sam/build``, up to date with the sources."""
    return artefact.ensure_built()
