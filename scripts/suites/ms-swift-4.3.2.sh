# The oldest ms-swift with native FIPO tested here: everything that depends on ms-swift.
set -euo pipefail
cd "$ROOT"
bash scripts/setup.sh 4.3.2 "$ROOT/.venv-ms-swift-4.3.2"
"$ROOT/.venv-ms-swift-4.3.2/bin/python" -m pytest tests -q -p no:cacheprovider -m ms_swift
