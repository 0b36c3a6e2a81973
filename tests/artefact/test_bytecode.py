"""The built artefact never compiles a module from source: Lambda's /var/task and /opt are read-only, so a module
without usable bytecode is compiled at every cold start (measured: the API's import took ~505 ms instead of ~245).

Each handler is imported, and handles its first event, in a bare Python 3.12 laid out as Lambda lays it out (the
function folder, then the layers in the template's order; no site-packages, no dev environment), from the
host-compatible artefact (``devstack.artefact.host_compatible``: the arm64 extension modules swapped for the host's
builds of the same versions). Needs ``make build``: the session builds when ``.aws-sam/build`` is missing or older
than the sources, so CI (which runs everything) checks the artefact it just built.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from devstack import artefact
from devstack.artefact_probe import first_event

pytestmark = [pytest.mark.artefact, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
HANDLERS = {"ApiFunction": "api", "WorkerFunction": "worker"}
UNCHECKED_HASH = 0b01  # PEP 552: bit 0 hash-based, bit 1 check_source


@pytest.fixture(scope="session")
def build_dir() -> Path:
    return artefact.ensure_built()


@pytest.fixture(scope="session")
def host_dir(build_dir: Path) -> Path:
    return artefact.host_compatible(build_dir)


def probe(directory: Path, logical_id: str) -> dict[str, Any]:
    function = artefact.load_artefact(directory)[logical_id]
    kind = HANDLERS[logical_id]
    payload = json.dumps({"module": function.module, "kind": kind, "event": first_event(kind)})
    done = subprocess.run(
        artefact.probe_argv(function, "handler", payload, watch=True),
        env=artefact.bare_env(**artefact.LAMBDA_ENV),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=directory,
    )
    assert done.returncode == 0, f"{logical_id} failed in the bare process:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("logical_id", sorted(HANDLERS))
def test_handler_runs_from_bytecode_only(host_dir: Path, logical_id: str) -> None:
    # Given the built artefact, when the handler's module is imported and handles its first event
    result = probe(host_dir, logical_id)
    # Then it answered, and no module was compiled from source
    assert result["answer"], result
    assert result["compiled"] == [], f"{logical_id} compiled {len(result['compiled'])} modules from source:\n" + (
        "\n".join(result["compiled"])
    )


@pytest.mark.parametrize("logical_id", sorted(HANDLERS))
def test_handler_loads_nothing_from_outside_the_artefact(host_dir: Path, logical_id: str) -> None:
    result = probe(host_dir, logical_id)
    stdlib = Path(artefact.python312()).resolve().parents[1] / "lib" / "python3.12"
    outside = {}
    for name, file in result["modules"].items():
        if file is None:
            continue  # built in, frozen, or a namespace package
        path = Path(file).resolve()
        in_artefact = path.is_relative_to(host_dir)
        in_stdlib = path.is_relative_to(stdlib) and "site-packages" not in path.parts
        if not (in_artefact or in_stdlib):
            outside[name] = file
    assert outside == {}, f"{logical_id} loaded modules from outside the artefact and the standard library"
    # the dev virtual environment and the repository's sources in particular
    assert not any(str(ROOT / ".venv") in file or "/site-packages/" in file for file in outside.values())


def test_every_pyc_is_hash_based_unchecked_for_python_312(build_dir: Path, host_dir: Path) -> None:
    wrong, missing, foreign = [], [], []
    for directory in (build_dir, host_dir):
        for path in directory.rglob("*.py"):
            if not (path.parent / "__pycache__" / f"{path.stem}.cpython-312.pyc").is_file():
                missing.append(str(path))
        for pyc in directory.rglob("*.pyc"):
            if not pyc.name.endswith(".cpython-312.pyc"):
                foreign.append(str(pyc))
                continue
            header = pyc.read_bytes()[:8]
            if header[:4] != importlib.util.MAGIC_NUMBER or int.from_bytes(header[4:8], "little") != UNCHECKED_HASH:
                wrong.append(str(pyc))
    assert sys.version_info[:2] == (3, 12), "MAGIC_NUMBER is read from this interpreter: it must be 3.12"
    assert missing == [], f"{len(missing)} sources without bytecode, e.g. {missing[:5]}"
    assert foreign == [], f"bytecode of another interpreter: {foreign[:5]}"
    assert wrong == [], f"{len(wrong)} .pyc files are not hash-based unchecked (3.12), e.g. {wrong[:5]}"


def test_a_missing_pyc_is_caught(host_dir: Path, tmp_path: Path) -> None:
    # Given a copy of the artefact with the bytecode of one module the API imports deleted
    copy = tmp_path / "build"
    artefact.link_tree(host_dir, copy)
    settings_pyc = copy / "SharedLayer" / "python" / "imagegen" / "__pycache__" / "settings.cpython-312.pyc"
    settings_pyc.unlink()
    # When the handler is probed, then the module compiled from source is reported
    result = probe(copy, "ApiFunction")
    assert result["compiled"] == [str(copy / "SharedLayer" / "python" / "imagegen" / "settings.py")]


# Loaded only when asked for (XRAY_SDK_TRACING=true) or never needed: the X-Ray SDK and wrapt (~200 ms, see
# imagegen.observability), and Powertools' parser models (~160 ms; Powertools' batch utility imports them when
# pydantic is loaded before it, see imagegen.batch).
NEVER_LOADED = ("aws_xray_sdk", "wrapt", "aws_lambda_powertools.utilities.parser")


@pytest.mark.parametrize("logical_id", sorted(HANDLERS))
def test_handler_loads_no_tracing_sdk_nor_parser_models(host_dir: Path, logical_id: str) -> None:
    result = probe(host_dir, logical_id)
    loaded = sorted(name for name in result["modules"] if name.split(".")[0] in NEVER_LOADED[:2])
    loaded += sorted(name for name in result["modules"] if name.startswith(NEVER_LOADED[2]))
    assert loaded == [], f"{logical_id} loaded {loaded[:10]} with XRAY_SDK_TRACING=false"


@pytest.mark.parametrize("logical_id", sorted(HANDLERS))
def test_handler_loads_no_imaging_library(host_dir: Path, logical_id: str) -> None:
    # Given the artefact, whose dependencies layer ships Pillow for output_format conversions
    assert list((host_dir / "DependenciesLayer" / "python" / "PIL").glob("_imaging.*.so")), "Pillow is not shipped"
    # When each handler is imported and handles its first event (no conversion asked for)
    result = probe(host_dir, logical_id)
    # Then Pillow was not imported: only a conversion loads it (imagegen.adapters.convert)
    loaded = sorted(name for name in result["modules"] if name.split(".")[0] == "PIL")
    assert loaded == [], f"{logical_id} loaded {loaded[:10]} at cold start"
