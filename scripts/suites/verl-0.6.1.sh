# The oldest verl swift-fipo serves (its loss registry with the (loss, metrics) signature): the verl
# integration tests that its layers allow (no ppo_loss, no driver-side validate_config before 0.7).
set -euo pipefail
cd "$ROOT"
bash scripts/setup_verl.sh 0.6.1 "$ROOT/.venv-verl-0.6.1" 'transformers<5'
SWIFT_FIPO_REQUIRE_VERL=1 "$ROOT/.venv-verl-0.6.1/bin/python" -m pytest tests/test_integrations_verl.py -q -p no:cacheprovider
