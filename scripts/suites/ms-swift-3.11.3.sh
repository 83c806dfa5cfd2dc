# The oldest ms-swift line served (3.11 brought the DAPO loss FIPO reuses; no native FIPO): every
# ms-swift-dependent test.
set -euo pipefail
cd "$ROOT"
bash scripts/setup.sh 3.11.3 "$ROOT/.venv-ms-swift-3.11.3"
"$ROOT/.venv-ms-swift-3.11.3/bin/python" -m pytest tests -q -p no:cacheprovider -m ms_swift
