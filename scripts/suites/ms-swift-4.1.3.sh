# ms-swift 4.1 (no native FIPO): TRL pinned as for 4.0; its GRPO trainer imports vLLM when it loads, so
# tests/vllm_standin (importable, never usable) stands in for it.
set -euo pipefail
cd "$ROOT"
bash scripts/setup.sh 4.1.3 "$ROOT/.venv-ms-swift-4.1.3" trl==0.25.1 transformers==4.57.6
PYTHONPATH="$ROOT/tests/vllm_standin" "$ROOT/.venv-ms-swift-4.1.3/bin/python" -m pytest tests/test_cli_swift.py \
    tests/test_integrations_ms_swift_legacy.py -q -p no:cacheprovider
