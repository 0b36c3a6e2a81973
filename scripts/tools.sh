#!/usr/bin/env bash
# Installs the template tools (SAM CLI, cfn-lint, checkov) at pinned versions, each as an isolated uv tool in
# .tools/ of this repository: they pin old boto3/click releases and must never enter the project's own
# environment. Idempotent: a tool already installed at its pinned version is left alone.
#
#   bash scripts/tools.sh        (the Makefile's `make tools` runs it with UV=<its pinned uv>)
#
# Needs uv (UV=<path> or `uv` on PATH) and a Python 3.12 (python3.12 on PATH or a pyenv 3.12.x): uv may not
# download interpreters here (UV_PYTHON_DOWNLOADS=never).
set -euo pipefail

# package==version and the executable it provides. Bump the versions here; cfn-lint matches the one the
# SAM CLI bundles for `sam validate --lint`.
TOOLS=(
  "aws-sam-cli 1.170.0 sam"
  "cfn-lint 1.58.0 cfn-lint"
  "checkov 3.3.30 checkov"
)

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
uv="${UV:-uv}"
if ! command -v "$uv" >/dev/null 2>&1; then
  echo "error: uv not found (set UV=<path to uv> or put uv on PATH; 'make tools' bootstraps it)" >&2
  exit 1
fi

export UV_TOOL_DIR="$root/.tools/uv"
export UV_TOOL_BIN_DIR="$root/.tools/bin"
export UV_PYTHON_DOWNLOADS=never
mkdir -p "$UV_TOOL_DIR" "$UV_TOOL_BIN_DIR"

is_python312() {
  [ -x "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1
}

find_python312() {
  local candidate pyenv_root
  # A pyenv shim on PATH may exist without a selected 3.12: check every candidate by running it.
  candidate="$(command -v python3.12 2>/dev/null || true)"
  if [ -n "$candidate" ] && is_python312 "$candidate"; then
    echo "$candidate"
    return 0
  fi
  if command -v pyenv >/dev/null 2>&1; then
    pyenv_root="$(pyenv root)"
  else
    pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
  fi
  # Newest 3.12.x first.
  while IFS= read -r candidate; do
    if is_python312 "$candidate/bin/python3.12"; then
      echo "$candidate/bin/python3.12"
      return 0
    fi
  done < <(ls -d "$pyenv_root"/versions/3.12* 2>/dev/null | sort -V -r)
  return 1
}

# Installed tool versions, one "name vX.Y.Z" line each (uv prints the executables on indented lines).
installed="$("$uv" tool list 2>/dev/null | grep -v '^[- ]' || true)"

python=""
for entry in "${TOOLS[@]}"; do
  read -r package version executable <<<"$entry"
  if grep -qx "$package v$version" <<<"$installed" && [ -x "$UV_TOOL_BIN_DIR/$executable" ]; then
    echo "$package $version: already installed"
    continue
  fi
  if [ -z "$python" ]; then
    python="$(find_python312)" || {
      echo "error: Python 3.12 not found (python3.12 on PATH or a pyenv 3.12.x); e.g. 'pyenv install 3.12'" >&2
      exit 1
    }
  fi
  echo "$package $version: installing with $python"
  "$uv" tool install --quiet --force --python "$python" "$package==$version"
done

echo "tools in $UV_TOOL_BIN_DIR:"
"$UV_TOOL_BIN_DIR/sam" --version | sed 's/^/  sam:      /'
"$UV_TOOL_BIN_DIR/cfn-lint" --version | sed 's/^/  cfn-lint: /'
"$UV_TOOL_BIN_DIR/checkov" --version | sed 's/^/  checkov:  /'
