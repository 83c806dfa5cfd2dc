# ms-swift 4.0 (no native FIPO), with the TRL it installs (0.29): ms-swift's _prepare_inputs and TRL's
# training_step both advance the step counter, so no rollout is ever reused and the plugin refuses fipo
# before the model loads (test_fipo_is_refused_where_no_rollout_is_reused); its loss is still served
# exactly (the in-process tests). Its own generation fails on the tiny model for every loss type
# (dataset columns reach generate()), so no training run is possible here. Its GRPO trainer imports
# vLLM when it loads: tests/vllm_standin (importable, never usable) stands in.
set -euo pipefail
cd "$ROOT"
bash scripts/setup.sh 4.0.4 "$ROOT/.venv-ms-swift-4.0.4"
PYTHONPATH="$ROOT/tests/vllm_standin" "$ROOT/.venv-ms-swift-4.0.4/bin/python" -m pytest tests/test_cli_swift.py \
    tests/test_integrations_ms_swift_legacy.py -q -p no:cacheprovider -k 'refused_where_no_rollout or doctor or legacy'
