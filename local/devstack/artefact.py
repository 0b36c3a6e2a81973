"""The built artefact (``make build`` → ``.aws-sam/build``) as Lambda lays it out, and bare processes to run it.

* :func:`load_artefact` reads ``.aws-sam/build/template.yaml``: each function's code folder, handler and layers.
  :meth:`ArtefactFunction.sys_path` is the function folder first, then each layer's ``python/`` folder in the
  template's order, as Lambda puts ``/var/task`` before ``/opt/python`` (Lambda extracts every layer into the one
  ``/opt``, a later layer's file replacing an earlier one's; separate folders here, so such a clash would resolve
  the other way; the project's two layers share no file).
* :func:`host_compatible` is the artefact with its compiled extension modules swapped for the host's builds of the
  same versions (the build targets arm64; a host is often x86_64).
* :func:`bare_argv` and :func:`bare_env` start a Python 3.12 with nothing on ``sys.path`` but the standard library
  and the artefact: no site-packages, no dev virtual environment, no ``PYTHON*`` variables, no bytecode written
  (Lambda's ``/var/task`` and ``/opt`` are read-only). :func:`probe_argv` runs ``artefact_probe.py`` in one (the
  artefact test and ``benchmarks/cold_start.py``), with :data:`LAMBDA_ENV` as its environment.
* :func:`ensure_built` runs ``make build`` when ``.aws-sam/build`` is missing or older than the sources.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .template import load_template

__all__ = [
    "BUILD_DIR",
    "LAMBDA_ENV",
    "ArtefactError",
    "ArtefactFunction",
    "bare_argv",
    "bare_env",
    "bootstrap",
    "build_arch",
    "ensure_built",
    "host_compatible",
    "is_stale",
    "link_tree",
    "load_artefact",
    "probe_argv",
    "python312",
    "swapped_distributions",
]

ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = ROOT / ".aws-sam" / "build"
HOST_DIR = ROOT / ".aws-sam" / "host"  # host-compatible copies of the build, one per build
WHEEL_CACHE = ROOT / ".aws-sam" / "host-wheels"  # the host's wheels of the swapped distributions
# What the artefact is made from: a build older than any of these is stale.
SOURCES = ("template.yaml", "functions", "layers", "scripts/lambda_build.py")

# ELF e_machine values → platform.machine() names and the manylinux platform tags pip accepts for them.
_ELF_MACHINES = {62: "x86_64", 183: "aarch64"}
_PLATFORM_TAGS = {
    arch: [f"manylinux2014_{arch}", *(f"manylinux_2_{minor}_{arch}" for minor in (17, 28, 34))]
    for arch in _ELF_MACHINES.values()
}


class ArtefactError(RuntimeError):
    """The artefact is missing, stale or unreadable."""


@dataclass(frozen=True)
class ArtefactFunction:
    """One function of the artefact: where its code and its layers' ``python/`` folders are."""

    logical_id: str
    handler: str  # "module.function", as in the template
    code_dir: Path
    layer_dirs: tuple[Path, ...]  # each layer's python/ folder, in the template's order

    @property
    def module(self) -> str:
        return self.handler.rsplit(".", 1)[0]

    @property
    def function(self) -> str:
        return self.handler.rsplit(".", 1)[1]

    def sys_path(self) -> list[str]:
        """The folders to put in front of the standard library, in Lambda's order."""
        return [str(self.code_dir), *(str(layer) for layer in self.layer_dirs)]

    def rebased(self, old_root: Path, new_root: Path) -> ArtefactFunction:
        """The same function in a copy of the build directory (``old_root`` → ``new_root``)."""

        def move(path: Path) -> Path:
            return new_root / path.relative_to(old_root)

        return ArtefactFunction(
            self.logical_id, self.handler, move(self.code_dir), tuple(move(layer) for layer in self.layer_dirs)
        )


def _ref(value: Any) -> str | None:
    return value.get("Ref") if isinstance(value, dict) and isinstance(value.get("Ref"), str) else None


def load_artefact(build_dir: Path = BUILD_DIR) -> dict[str, ArtefactFunction]:
    """The functions of a built template by logical id (``Globals.Function`` honoured for Handler and Layers)."""
    template_path = Path(build_dir) / "template.yaml"
    if not template_path.is_file():
        raise ArtefactError(f"no build at {build_dir} (no template.yaml there): run `make build`")
    template = load_template(template_path)
    defaults = (template.get("Globals") or {}).get("Function") or {}
    resources = template.get("Resources") or {}
    functions: dict[str, ArtefactFunction] = {}
    for logical_id, resource in resources.items():
        if not isinstance(resource, dict) or resource.get("Type") != "AWS::Serverless::Function":
            continue
        properties = {**defaults, **(resource.get("Properties") or {})}
        code_uri, handler = properties.get("CodeUri"), properties.get("Handler")
        if not isinstance(code_uri, str) or not isinstance(handler, str):
            continue  # an image function or inline code: nothing to import from the artefact
        layer_dirs = []
        for layer in [*(defaults.get("Layers") or []), *((resource.get("Properties") or {}).get("Layers") or [])]:
            layer_id = _ref(layer)
            if layer_id is None:
                raise ArtefactError(f"{logical_id}: layer {layer!r} is not a !Ref to a layer of this template")
            layer_resource = resources.get(layer_id) or {}
            content = (layer_resource.get("Properties") or {}).get("ContentUri")
            if not isinstance(content, str):
                raise ArtefactError(f"{logical_id}: layer {layer_id} has no built ContentUri")
            layer_dirs.append((Path(build_dir) / content / "python").resolve())
        code_dir = (Path(build_dir) / code_uri).resolve()
        if not code_dir.is_dir():
            raise ArtefactError(f"{logical_id}: {code_dir} is missing: run `make build`")
        functions[logical_id] = ArtefactFunction(logical_id, handler, code_dir, tuple(layer_dirs))
    return functions


# ------------------------------------------------------------------------------------------- freshness


def _files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = [name for name in dirnames if name != "__pycache__"]
        for name in filenames:
            if not name.endswith(".pyc"):
                yield Path(directory) / name


def _newest_source_mtime() -> float:
    return max((path.stat().st_mtime for source in SOURCES for path in _files(ROOT / source)), default=0.0)


def is_stale(build_dir: Path = BUILD_DIR) -> bool:
    template = Path(build_dir) / "template.yaml"
    return not template.is_file() or template.stat().st_mtime < _newest_source_mtime()


def ensure_built(build_dir: Path = BUILD_DIR, *, stdout: TextIO | None = None) -> Path:
    """``make build`` when ``.aws-sam/build`` is missing or older than any source; the build directory. ``stdout``:
    where the build's own output goes (a benchmark whose standard output is its JSON result sends it to stderr)."""
    if Path(build_dir).resolve() == BUILD_DIR.resolve() and is_stale(build_dir):
        subprocess.run(["make", "--no-print-directory", "build"], cwd=ROOT, check=True, stdout=stdout)  # noqa: S607
    load_artefact(build_dir)  # a clear error when it is still not there
    return Path(build_dir)


# ---------------------------------------------------------------------------------------------- bare runs


@functools.lru_cache(maxsize=1)
def python312() -> str:
    """The Python 3.12 interpreter the build uses (``scripts/find-python.sh``), not the dev virtual environment's."""
    found = subprocess.run(  # noqa: S603
        [str(ROOT / "scripts" / "find-python.sh")], capture_output=True, text=True, check=True
    )
    return found.stdout.strip()


def bootstrap(function: ArtefactFunction, code: str) -> str:
    """``code`` preceded by the artefact's ``sys.path`` (in front of the standard library)."""
    return f"import sys\nsys.path[:0] = {function.sys_path()!r}\n{code}"


def bare_argv(function: ArtefactFunction, code: str, *, python: str | None = None) -> list[str]:
    """The command running ``code`` in a bare Python 3.12 laid out for ``function``.

    ``-I``: no ``PYTHON*`` variables, no user site, no script or current folder on ``sys.path``; ``-S``: no
    ``site`` (so no site-packages at all: the interpreter's own or a virtual environment's); ``-B``: no bytecode
    written (the artefact stays as built, like Lambda's read-only ``/var/task`` and ``/opt``).
    """
    return [python or python312(), "-I", "-S", "-B", "-c", bootstrap(function, code)]


def bare_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: this process's environment) without Python's and virtual environments' variables."""
    source = os.environ if base is None else base
    env = {
        key: value
        for key, value in source.items()
        if not key.startswith("PYTHON") and key not in {"VIRTUAL_ENV", "CONDA_PREFIX", "UV_PROJECT_ENVIRONMENT"}
    }
    env.update(extra)
    return env


# What the functions find in their environment on AWS (template.yaml: Globals and their own variables), with
# made-up names: no AWS call happens at import, and the probes reach no AWS (the endpoint is a closed port).
LAMBDA_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",  # a placeholder: nothing is signed for a real account
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_LAMBDA_FUNCTION_NAME": "probe",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
    "POWERTOOLS_SERVICE_NAME": "image-api",
    "POWERTOOLS_METRICS_NAMESPACE": "FluxImageService",
    "POWERTOOLS_LOG_LEVEL": "WARNING",
    "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
    "XRAY_SDK_TRACING": "false",
    "FLUX_SECRET_ID": "arn:aws:secretsmanager:us-east-1:123456789012:secret:flux-key",
    "IMAGES_BUCKET": "probe-images",
    "IMAGES_TABLE": "probe-images",
    "JOBS_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/probe-jobs",
    "JOBS_DLQ_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/probe-jobs-dlq",
    "EVENT_BUS_NAME": "probe-bus",
    "WEBHOOK_SECRET_ID": "arn:aws:secretsmanager:us-east-1:123456789012:secret:webhook",
    "IDEMPOTENCY_TABLE": "probe-idempotency",
    "CORS_ALLOWED_ORIGINS": "https://app.example.com",
    "ENABLE_DOCS": "true",
}


def probe_argv(function: ArtefactFunction, mode: str, payload: str, *, watch: bool = False) -> list[str]:
    """A bare child running ``devstack/artefact_probe.py`` (``mode`` ``handler``: ``payload`` is JSON with
    ``module``, ``kind`` and ``event``; ``floor``: ``payload`` is import lines); its last output line is JSON."""
    probe = (Path(__file__).parent / "artefact_probe.py").read_text(encoding="utf-8")
    code = f"{probe}\nmain(*sys.argv[1:])\n"
    return [*bare_argv(function, code), mode, payload, "watch" if watch else "-"]


# ------------------------------------------------------------------------------------------ host compatible


def _elf_machine(path: Path) -> str | None:
    with path.open("rb") as stream:
        header = stream.read(20)
    if header[:4] != b"\x7fELF":
        return None
    little = header[5] == 1
    return _ELF_MACHINES.get(int.from_bytes(header[18:20], "little" if little else "big"), "unknown")


def _extensions(build_dir: Path) -> Iterator[Path]:
    for path in _files(Path(build_dir)):
        if path.suffix == ".so" or ".so." in path.name:
            yield path


def build_arch(build_dir: Path = BUILD_DIR) -> str | None:
    """The architecture of the artefact's compiled extensions (``aarch64``, ``x86_64``), None without any."""
    machines = {_elf_machine(path) for path in _extensions(build_dir)} - {None}
    if len(machines) > 1:
        raise ArtefactError(f"{build_dir}: extension modules of several architectures: {sorted(map(str, machines))}")
    return machines.pop() if machines else None


@dataclass(frozen=True)
class _Distribution:
    site: Path  # the python/ folder holding it
    dist_info: Path
    name: str
    version: str

    def files(self) -> list[Path]:
        """Every file the distribution installed (its RECORD), dist-info included."""
        record = self.dist_info / "RECORD"
        return [self.site / line.split(",", 1)[0] for line in record.read_text(encoding="utf-8").splitlines() if line]


def _metadata(dist_info: Path) -> tuple[str, str]:
    fields: dict[str, str] = {}
    for line in (dist_info / "METADATA").read_text(encoding="utf-8").splitlines():
        if not line:
            break
        key, _, value = line.partition(": ")
        fields.setdefault(key, value)
    return fields["Name"], fields["Version"]


def _foreign_distributions(build_dir: Path, host: str) -> list[_Distribution]:
    """The distributions that installed an extension module not built for ``host``."""
    owners: dict[Path, _Distribution] = {}
    for dist_info in Path(build_dir).glob("*/python/*.dist-info"):
        name, version = _metadata(dist_info)
        distribution = _Distribution(dist_info.parent, dist_info, name, version)
        for path in distribution.files():
            owners[path.resolve()] = distribution
    foreign: dict[Path, _Distribution] = {}
    for path in _extensions(build_dir):
        machine = _elf_machine(path)
        if machine is None or machine == host:
            continue
        owner = owners.get(path.resolve())
        if owner is None:
            raise ArtefactError(f"{path}: an extension module of {machine} that no distribution's RECORD lists")
        foreign[owner.dist_info] = owner
    return sorted(foreign.values(), key=lambda distribution: distribution.name.lower())


def _build_key(build_dir: Path) -> str:
    """Changes whenever a file of the build is added, removed or rewritten."""
    digest = hashlib.sha256()
    for path in sorted(_files(Path(build_dir))):
        stat = path.stat()
        digest.update(f"{path.relative_to(build_dir)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _host_wheel(name: str, version: str, host: str) -> Path:
    """The host's wheel of ``name==version`` for CPython 3.12, from the cache or PyPI (through pip)."""
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    normalized = name.lower().replace("-", "_").replace(".", "_")

    def cached() -> list[Path]:
        return [
            wheel
            for wheel in WHEEL_CACHE.glob("*.whl")
            if wheel.name.lower().startswith(f"{normalized}-{version}-") and host in wheel.name
        ]

    if not cached():
        platforms = [argument for tag in _PLATFORM_TAGS[host] for argument in ("--platform", tag)]
        subprocess.run(  # noqa: S603
            [
                python312(),
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--only-binary=:all:",
                "--implementation",
                "cp",
                "--python-version",
                "3.12",
                *platforms,
                "--dest",
                str(WHEEL_CACHE),
                f"{name}=={version}",
            ],
            check=True,
        )
    wheels = cached()
    if not wheels:
        raise ArtefactError(f"pip found no {host} wheel of {name}=={version} for CPython 3.12")
    return sorted(wheels)[-1]


def link_tree(source: Path, target: Path) -> None:
    """Hard links where the file system allows (the copy costs no space), else copies."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link, symlinks=True)


def _install_wheel(wheel: Path, site: Path) -> list[Path]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        if any(".data/" in name.split("/", 1)[0] + "/" for name in names):
            raise ArtefactError(f"{wheel.name}: has a .data folder; install it with pip instead")
        for name in names:  # a hard link left in place would be written through, into the build itself
            if not name.endswith("/") and not (site / name).is_dir():
                (site / name).unlink(missing_ok=True)
        archive.extractall(site)
    return [site / name for name in names if not name.endswith("/")]


def _compile(paths: Iterable[Path]) -> None:
    """Hash-based, unchecked bytecode for CPython 3.12 (what the build ships), in a 3.12 interpreter."""
    sources = [str(path) for path in paths if path.suffix == ".py"]
    if not sources:
        return
    code = (
        "import py_compile, sys\n"
        "mode = py_compile.PycInvalidationMode.UNCHECKED_HASH\n"
        "for source in sys.argv[1:]:\n"
        "    py_compile.compile(source, doraise=True, invalidation_mode=mode)\n"
    )
    subprocess.run([python312(), "-I", "-c", code, *sources], check=True)  # noqa: S603


def host_compatible(build_dir: Path = BUILD_DIR) -> Path:
    """The build with its extension modules swapped for this host's: what runs here is not byte-for-byte the
    deployed artefact.

    The build targets arm64 (Lambda's Graviton); an x86_64 host cannot load its ``*.so`` files. Every distribution
    that installed an extension module of another architecture (today pydantic-core, charset-normalizer and wrapt)
    is replaced, in a copy of the build, by the host's wheel of the SAME version (read from its ``*.dist-info``,
    fetched once with pip into ``.aws-sam/host-wheels``), then compiled to hash-based unchecked bytecode as the
    build does. Everything else is the build's own files (hard links). So figures measured on the copy are for the
    deployed Python code and bytecode with the host's native code of the same library versions.

    The copy (``.aws-sam/host/<key>``) is kept for the build it came from and remade when ``.aws-sam/build``
    changes. When the host's architecture is the build's (or the build has no extension), the build directory
    itself is returned.
    """
    build_dir = Path(build_dir).resolve()
    load_artefact(build_dir)
    host = platform.machine()
    target = HOST_DIR / f"{host}-{_build_key(build_dir)}"
    if (target / ".complete").is_file():  # made for this very build: its extensions were foreign
        return target
    if build_arch(build_dir) in (None, host):
        return build_dir
    HOST_DIR.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=HOST_DIR))
    try:
        copy = staging / "build"
        link_tree(build_dir, copy)
        swapped = []
        for distribution in _foreign_distributions(build_dir, host):
            site = copy / distribution.site.relative_to(build_dir)
            for path in distribution.files():
                moved = site / path.relative_to(distribution.site)
                moved.unlink(missing_ok=True)
                cached = moved.parent / "__pycache__" / f"{moved.stem}.cpython-312.pyc"
                if moved.suffix == ".py":
                    cached.unlink(missing_ok=True)
            _compile(_install_wheel(_host_wheel(distribution.name, distribution.version, host), site))
            swapped.append(f"{distribution.name}=={distribution.version}")
        if build_arch(copy) not in (None, host):
            raise ArtefactError(f"{copy}: extension modules of another architecture are left after the swap")
        (copy / ".complete").write_text("\n".join(swapped) + "\n", encoding="utf-8")
        try:
            copy.rename(target)
        except OSError:
            if not (target / ".complete").is_file():  # another process made it meanwhile: keep theirs
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for stale in HOST_DIR.glob(f"{host}-*"):
        if stale != target:
            shutil.rmtree(stale, ignore_errors=True)
    return target


def swapped_distributions(directory: Path) -> list[str]:
    """``name==version`` of each distribution :func:`host_compatible` swapped in ``directory`` (none: [])."""
    marker = Path(directory) / ".complete"
    return marker.read_text(encoding="utf-8").split() if marker.is_file() else []
