#!/usr/bin/env bash
# Create (or refresh) a virtual environment with torch (CPU), ms-swift and this package.
#   bash scripts/setup.sh [MS_SWIFT_VERSION] [VENV_DIR] [REQUIREMENT...]     defaults: 4.6.0 .venv
# REQUIREMENTs are installed together with ms-swift (e.g. trl==0.25.1 where its default TRL is broken).
# swift-fipo itself is installed non-editable, as users get it, so that its .pth activation file
# lands in site-packages exactly as after `pip install swift-fipo`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="${1:-4.6.0}"
venv="${2:-$root/.venv}"
extra=("${@:3}")

source "$root/scripts/install.sh"
# ms-swift imports msgspec without declaring it; deepspeed: the CPU ZeRO-2 test (tests/test_cli_multiprocess.py).
prepare_venv "$venv" "ms-swift==$version" msgspec 'pytest>=8' deepspeed "${extra[@]}"
# hypothesis: the property and fuzz tests (tests/test_properties.py, tests/test_viz_fuzz.py); checked apart
# from the marker so that venvs made before it was needed get it too.
"$venv/bin/python" -c 'import hypothesis' 2>/dev/null || install_requirements "$venv" 'hypothesis>=6'
install_swift_fipo "$venv"
echo "ready: $venv (ms-swift $version, $("$venv/bin/python" -c 'import swift_fipo; print("swift-fipo", swift_fipo.__version__)'))"
