# ms-swift's real Megatron GRPO trainer on CPU: ms-swift 4.6.0 with megatron-core and mcore-bridge (pinned; no
# Transformer Engine, no CUDA: tests/megatron_cpu/ stands in for what needs them). Only the Megatron test files:
# the rest of the ms-swift 4.6.0 suite runs in ms-swift-4.6.0.sh. Each real-trainer check runs in worker
# processes of its own (tests/megatron_cpu/worker_*.py), one of them torchrun with two ranks.
set -euo pipefail
cd "$ROOT"
venv="$ROOT/.venv-megatron-4.6.0"
bash scripts/setup.sh 4.6.0 "$venv" megatron-core==0.16.1 mcore-bridge==1.6.5
"$venv/bin/python" -m pytest tests/test_integrations_megatron_real.py tests/test_integrations_megatron.py \
    -q -p no:cacheprovider
