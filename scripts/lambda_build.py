"""What ``sam build`` runs for the functions and layers (``BuildMethod: makefile``): sources plus bytecode.

Lambda's ``/var/task`` and ``/opt`` are read-only, so a module without usable bytecode is compiled from source at
every cold start. SAM's Python builder ships none; this ships ``.pyc`` files for CPython 3.12 that are hash-based
and UNCHECKED (PEP 552): the interpreter uses them without comparing them to the source's time stamp or hash, so
they stay valid whatever times the zip gives the files (a time-stamp ``.pyc``, what pip writes, is discarded as
soon as the extracted ``.py`` carries another mtime than the one recorded in it).

    python3.12 scripts/lambda_build.py copy SRC DEST          # a function, or a layer (DEST = .../python)
    python3.12 scripts/lambda_build.py deps REQUIREMENTS DEST # third-party wheels for arm64 Lambda, into DEST

Run by each code folder's Makefile (``make build-<LogicalId>``, ``ARTIFACTS_DIR`` set by SAM).
"""

from __future__ import annotations

import argparse
import compileall
import os
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

# What a build never ships from a source folder: the build's own Makefile, bytecode of the dev environment.
SOURCE_EXCLUDES = ("Makefile", "__pycache__", "*.pyc", "requirements.txt")
# The platforms SAM's own Python builder accepts for python3.12 on arm64 (Amazon Linux 2023: glibc 2.34).
ARM64_PLATFORMS = ("manylinux2014_aarch64", *(f"manylinux_2_{minor}_aarch64" for minor in (17, 28, 34)))


def require_python312() -> None:
    """Bytecode is version-specific (the magic number): only a 3.12 interpreter may write it."""
    if sys.version_info[:2] != (3, 12):
        sys.exit(f"lambda_build.py must run on Python 3.12 (the Lambda runtime), not {sys.version.split()[0]}")


def compile_tree(root: Path) -> None:
    """Hash-based unchecked ``.pyc`` for every ``.py`` under ``root``; fails on any that does not compile."""
    ok = compileall.compile_dir(
        root,
        quiet=1,
        force=True,
        workers=min(2, os.cpu_count() or 1),
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    if not ok:
        sys.exit(f"lambda_build.py: some modules under {root} do not compile (see above)")


def copy_sources(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*SOURCE_EXCLUDES), dirs_exist_ok=True)
    compile_tree(target)


def prune(site: Path) -> None:
    """Drop what pip installs that nothing at run time reads: console scripts (``bin/``, with this machine's
    interpreter in their shebang). Licences, METADATA and RECORD stay (RECORD maps files to distributions)."""
    shutil.rmtree(site / "bin", ignore_errors=True)


def install_dependencies(requirements: Path, target: Path) -> None:
    """The pinned wheels for CPython 3.12 on manylinux aarch64 (never an sdist built on this host), then bytecode."""
    target.mkdir(parents=True, exist_ok=True)
    platforms = [argument for platform in ARM64_PLATFORMS for argument in ("--platform", platform)]
    subprocess.run(  # noqa: S603 - this interpreter's own pip
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-compile",  # pip would write time-stamp .pyc files: compiled below instead
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            "3.12",
            *platforms,
            "--target",
            str(target),
            "--requirement",
            str(requirements),
        ],
        check=True,
    )
    prune(target)
    compile_tree(target)


def main() -> int:
    require_python312()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["copy", "deps"])
    parser.add_argument("source", type=Path, help="the source folder (copy) or the requirements file (deps)")
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    if args.action == "copy":
        copy_sources(args.source, args.target)
    else:
        install_dependencies(args.source, args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
