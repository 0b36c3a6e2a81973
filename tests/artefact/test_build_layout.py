"""``sam build``'s output has the layout Lambda loads: each function's handler at its root, the shared code and the
dependencies under ``python/`` of their layers, native wheels for arm64. The session's one build (``make build``,
from nothing on a fresh clone, as CI runs it), not a second one of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.artefact, pytest.mark.timeout(900)]  # the first make build of a fresh clone included


def test_the_build_packages_each_function_and_layer_where_lambda_looks(built_artefact: Path) -> None:
    assert (built_artefact / "template.yaml").exists()
    assert (built_artefact / "ApiFunction" / "api_handler.py").exists(), "the handler was not packaged"
    assert (built_artefact / "WorkerFunction" / "worker_handler.py").exists(), "the worker was not packaged"
    assert (built_artefact / "SharedLayer" / "python" / "imagegen" / "__init__.py").exists(), (
        "imagegen not under python/"
    )
    dependencies = built_artefact / "DependenciesLayer" / "python"
    assert (dependencies / "aws_lambda_powertools").is_dir()
    assert list(dependencies.glob("pydantic_core/*aarch64*.so")), "pydantic-core must be built for arm64 (aarch64)"
