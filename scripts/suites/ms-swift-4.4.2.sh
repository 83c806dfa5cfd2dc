# ms-swift 4.4 (native FIPO, and the false OPD-RL teacher check the plugin fixes): CLI runs and the
# in-process hook tests.
set -euo pipefail
cd "$ROOT"
bash scripts/setup.sh 4.4.2 "$ROOT/.venv-ms-swift-4.4.2"
"$ROOT/.venv-ms-swift-4.4.2/bin/python" -m pytest tests/test_cli_swift.py tests/test_integrations_ms_swift.py \
    -q -p no:cacheprovider -k 'fipo_run or dapo_is_unchanged or disable_restores or test_integrations_ms_swift'
