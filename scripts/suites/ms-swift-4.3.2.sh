# The oldest ms-swift with native FIPO tested here: everything that depends on ms-swift.
# SWIFT_FIPO_STRICT_SKIPS=1: only machine-kind skips are allowed (tests/conftest.py).
set -euo pipefail
cd "$ROOT"
bash scripts/setup.sh 4.3.2 "$ROOT/.venv-ms-swift-4.3.2"
SWIFT_FIPO_STRICT_SKIPS=1 "$ROOT/.venv-ms-swift-4.3.2/bin/python" -m pytest tests -q -p no:cacheprovider -m ms_swift
