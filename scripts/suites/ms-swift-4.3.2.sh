# The oldest ms-swift with native FIPO tested here: everything that depends on ms-swift. Tests written for
# other lines (the legacy hook of 3.11 - 4.2.1, the refusal of 4.0/4.1) leave themselves out (tests/conftest.py).
set -euo pipefail
cd "$ROOT"
bash scripts/setup.sh 4.3.2 "$ROOT/.venv-ms-swift-4.3.2"
"$ROOT/.venv-ms-swift-4.3.2/bin/python" -m pytest tests -q -p no:cacheprovider -m ms_swift
