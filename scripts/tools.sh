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

# Installed tool versions, one "name vX.Y.Z" line each (uv prints the executables on indented lines).
installed="$("$uv" tool list 2>/dev/null | grep -v '^[- ]' || true)"

python=""
fresh=0
for entry in "${TOOLS[@]}"; do
  read -r package version executable <<<"$entry"
  if grep -qx "$package v$version" <<<"$installed" && [ -x "$UV_TOOL_BIN_DIR/$executable" ]; then
    echo "$package $version: already installed"
    continue
  fi
  fresh=1
  if [ -z "$python" ]; then
    python="$("$root/scripts/find-python.sh")"  # says what is missing when there is no 3.12
  fi
  echo "$package $version: installing with $python (each takes up to a minute; the three ~680 MB in .tools/)"
  "$uv" tool install --quiet --force --python "$python" "$package==$version"
done

# Each tool is started once after an install, to show it runs. Every `make test` comes through here, and the three
# starts cost ~5 s of a run when nothing was installed; uv's record above names the versions then.
[ "$fresh" = 1 ] || exit 0
echo "tools in $UV_TOOL_BIN_DIR:"
"$UV_TOOL_BIN_DIR/sam" --version | sed 's/^/  sam:      /'
"$UV_TOOL_BIN_DIR/cfn-lint" --version | sed 's/^/  cfn-lint: /'
"$UV_TOOL_BIN_DIR/checkov" --version | sed 's/^/  checkov:  /'
