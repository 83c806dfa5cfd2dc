# OpenRLHF 0.11.2 in its own environment: its real PolicyLoss, its real train_ppo_ray command line and its
# own actor (PolicyModelActor -> DeepSpeed engine -> ActorPPOTrainer.ppo_train) training on CPU.
# flash-attn is installed as its Python part only (its CUDA extension cannot build here; see
# scripts/setup_openrlhf.sh); vLLM is a test stand-in (tests/openrlhf_cpu/vllm).
set -euo pipefail
cd "$ROOT"
venv="$ROOT/.venv-openrlhf-0.11.2"
bash scripts/setup_openrlhf.sh 0.11.2 "$venv"
# DeepSpeed JIT-builds its CPU ops (shared-memory comm, fused Adam: minutes each) on first use: keep them in
# the machine's cache, apart from other suites' DeepSpeed (same op names, other versions) and keyed by the
# versions they were built against, so a fresh clone (CI) reuses them. A build killed midway leaves its
# lock file and the next one waits on it forever; one suite at a time uses this directory, so any lock
# left here is stale.
versions="$("$venv/bin/python" -c 'import importlib.metadata as m; print("-".join(m.version(n) for n in ("torch", "deepspeed")))')"
export TORCH_EXTENSIONS_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/swift-fipo/torch_extensions/openrlhf-0.11.2-$versions"
export DS_ACCELERATOR=cpu
mkdir -p "$TORCH_EXTENSIONS_DIR"
find "$TORCH_EXTENSIONS_DIR" -maxdepth 2 -name lock -delete
"$venv/bin/python" -m pytest tests/test_integrations_openrlhf.py -q -p no:cacheprovider
