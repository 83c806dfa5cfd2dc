# The oldest ms-swift with native FIPO tested here (the hook without the 4.4 teacher fix): every in-process
# ms-swift test, and the swift rlhf runs whose path is this line's: a FIPO run, dapo unchanged by the plugin,
# SWIFT_FIPO_DISABLE and the --external_plugins route. Every other swift rlhf test (two processes, DeepSpeed,
# bf16, LoRA, presets, refusals) takes the same native path on ms-swift-4.6.0, which runs them. Tests written
# for other lines (the legacy hook of 3.11 - 4.2.1, the refusal of 4.0/4.1) leave themselves out (conftest).
set -euo pipefail
cd "$ROOT"
bash scripts/setup.sh 4.3.2 "$ROOT/.venv-ms-swift-4.3.2"
python="$ROOT/.venv-ms-swift-4.3.2/bin/python"
"$python" -m pytest tests -q -p no:cacheprovider -m 'ms_swift and not cli'
"$python" -m pytest tests/test_cli_swift.py -q -p no:cacheprovider \
    -k 'fipo_run or dapo_is_unchanged or disable_restores or external_plugins'
