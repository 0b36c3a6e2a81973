#!/usr/bin/env bash
# Prints the path of a Python 3.12 interpreter (the Lambda runtime's version): python3.12 on PATH, else the
# newest pyenv 3.12.x. `sam build` and the project's virtual environment both use it.
set -euo pipefail
want="3.12"
candidates=()
command -v "python${want}" >/dev/null 2>&1 && candidates+=("$(command -v "python${want}")")
root="${PYENV_ROOT:-$HOME/.pyenv}"
command -v pyenv >/dev/null 2>&1 && root="$(pyenv root)"
if [ -d "$root/versions" ]; then
  while IFS= read -r dir; do candidates+=("$dir/bin/python${want}"); done \
    < <(ls -d "$root/versions/${want}".* 2>/dev/null | sort -V -r)
fi
for python in "${candidates[@]}"; do
  if [ -x "$python" ] && "$python" -c "import sys; sys.exit(sys.version_info[:2] != (3, 12))" 2>/dev/null; then
    echo "$python"
    exit 0
  fi
done
echo "error: Python ${want} not found (the Lambda runtime is python${want}); install it, e.g. 'pyenv install ${want}'" >&2
exit 1
