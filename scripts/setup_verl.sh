#!/usr/bin/env bash
# Create (or refresh) a virtual environment with torch (CPU), upstream verl and this package, apart from
# ms-swift's (their transformers pins conflict).
#   bash scripts/setup_verl.sh VERL_VERSION VENV_DIR [EXTRA_REQUIREMENT ...]
# Extra requirements pin what an old verl release forgets to (0.6.1 imports names transformers 5 removed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="${1:?usage: setup_verl.sh VERL_VERSION VENV_DIR [EXTRA_REQUIREMENT ...]}"
venv="${2:?usage: setup_verl.sh VERL_VERSION VENV_DIR [EXTRA_REQUIREMENT ...]}"
shift 2

source "$root/scripts/install.sh"
prepare_venv "$venv" "verl==$version" 'pytest>=8' "$@"
# Non-editable, as users get it: its .pth activation must run in every fresh interpreter (Ray workers).
# --no-deps: its one dependency, torch, is already there (pinned to the CPU build).
install_swift_fipo "$venv"
echo "ready: $venv (verl $version)"
