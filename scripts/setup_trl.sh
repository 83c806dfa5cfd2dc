#!/usr/bin/env bash
# Create (or refresh) a virtual environment as a TRL user has it: torch (CPU), one TRL release with the
# transformers it resolves to, pytest and this package; no ms-swift.
#   bash scripts/setup_trl.sh TRL_VERSION VENV_DIR [EXTRA_REQUIREMENT ...]
# EXTRA_REQUIREMENT: further pip requirements resolved together with TRL (e.g. 'transformers<5').
# swift-fipo is installed non-editable and without its dependencies, as scripts/setup.sh does.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="${1:?usage: setup_trl.sh TRL_VERSION VENV_DIR [EXTRA_REQUIREMENT ...]}"
venv="${2:?usage: setup_trl.sh TRL_VERSION VENV_DIR [EXTRA_REQUIREMENT ...]}"
shift 2

source "$root/scripts/install.sh"
prepare_venv "$venv" "trl==$version" "$@" 'pytest>=8'
install_swift_fipo "$venv"
if "$venv/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("swift") is None)'; then
    echo "$venv has ms-swift installed; this environment must not" >&2
    exit 1
fi
"$venv/bin/python" - <<'PY'
import importlib.metadata as m
print('ready:', ', '.join(f'{name} {m.version(name)}' for name in ('trl', 'transformers', 'torch', 'swift-fipo')))
PY
