# OpenRLHF 0.11.2 in its own environment: its real PolicyLoss, its real train_ppo_ray command line and its
# own actor (PolicyModelActor -> DeepSpeed engine -> ActorPPOTrainer.ppo_train) training on CPU.
# flash-attn is installed as its Python part only (its CUDA extension cannot build here; see
# scripts/setup_openrlhf.sh); vLLM is a test stand-in (tests/openrlhf_cpu/vllm).
set -euo pipefail
cd "$ROOT"
venv="$ROOT/.venv-openrlhf-0.11.2"
bash scripts/setup_openrlhf.sh 0.11.2 "$venv"
# DeepSpeed JIT-builds its CPU ops (shared-memory comm, fused Adam: minutes each) on first use: keep them
# with the environment. A build killed midway leaves its lock file and the next one waits on it forever;
# one suite at a time uses this environment, so any lock left here is stale.
export TORCH_EXTENSIONS_DIR="$venv/torch_extensions" DS_ACCELERATOR=cpu
mkdir -p "$TORCH_EXTENSIONS_DIR"
find "$TORCH_EXTENSIONS_DIR" -maxdepth 2 -name lock -delete
"$venv/bin/python" -m pytest tests/test_integrations_openrlhf.py tests/test_one_rule.py -q -p no:cacheprovider
