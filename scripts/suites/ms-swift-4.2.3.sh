# ms-swift 4.2 (the first native FIPO): the CLI runs against native FIPO and the in-process parity tests.
# Its GRPO trainer imports vLLM when it loads: tests/vllm_standin (importable, never usable) stands in.
set -euo pipefail
cd "$ROOT"
bash scripts/setup.sh 4.2.3 "$ROOT/.venv-ms-swift-4.2.3"
PYTHONPATH="$ROOT/tests/vllm_standin" "$ROOT/.venv-ms-swift-4.2.3/bin/python" -m pytest tests/test_cli_swift.py \
    tests/test_integrations_ms_swift.py -q -p no:cacheprovider -k 'fipo_run or dapo_is_unchanged or disable_restores or test_integrations_ms_swift'
