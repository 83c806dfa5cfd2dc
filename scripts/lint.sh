#!/usr/bin/env bash
# Lint and type-check the tree (run by scripts/test.sh before any suite; a finding fails CI):
#   ruff check .   pyflakes, pycodestyle, isort, bugbear, pyupgrade, quotes ([tool.ruff] in pyproject.toml)
#   mypy           strict over config.py, ops/ and the shared layer ([tool.mypy] in pyproject.toml)
#   bash scripts/lint.sh              in .venv-lint (made on first use: ruff, mypy and the CPU torch mypy reads)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source "$root/scripts/install.sh"
venv="$root/.venv-lint"
prepare_venv "$venv" 'ruff==0.17.5' 'mypy==2.4.1'
status=0
echo '== ruff check .'
"$venv/bin/ruff" check --no-cache . || status=1
echo '== mypy'
# The cache lives in the venv: a fresh clone checks from scratch, a rerun reads what did not change.
"$venv/bin/mypy" --cache-dir "$venv/.mypy_cache" || status=1
exit "$status"
