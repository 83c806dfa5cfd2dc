# ms-swift 4.0 (no native FIPO). Its default TRL (0.29) advances the step counter a second time, so no
# rollout is ever reused (the plugin refuses fipo there): TRL 0.25.1 with transformers 4.57 instead. Its
# GRPO trainer imports vLLM when it loads: tests/vllm_standin (importable, never usable) stands in.
set -euo pipefail
cd "$ROOT"
bash scripts/setup.sh 4.0.4 "$ROOT/.venv-ms-swift-4.0.4" trl==0.25.1 transformers==4.57.6
PYTHONPATH="$ROOT/tests/vllm_standin" "$ROOT/.venv-ms-swift-4.0.4/bin/python" -m pytest tests/test_cli_swift.py tests/test_integrations_ms_swift_legacy.py \
    -q -p no:cacheprovider -k 'fipo_run or dapo_is_unchanged or doctor or loss_is_ms_swift_dapo'
