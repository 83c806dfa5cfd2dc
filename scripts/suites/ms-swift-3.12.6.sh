# The last ms-swift 3.x (no native FIPO): the real CLI runs and the exact-objective tests.
set -euo pipefail
cd "$ROOT"
bash scripts/setup.sh 3.12.6 "$ROOT/.venv-ms-swift-3.12.6"
"$ROOT/.venv-ms-swift-3.12.6/bin/python" -m pytest tests/test_cli_swift.py tests/test_integrations_ms_swift_legacy.py \
    -q -p no:cacheprovider
