# The newest ms-swift: the whole suite, then the TRL integration in a process of its own (ms-swift's
# GRPO trainer module deletes trl.GRPOTrainer.__init__ on import, so the combined run leaves that file out).
set -euo pipefail
cd "$ROOT"
bash scripts/setup.sh 4.6.0 "$ROOT/.venv"
"$ROOT/.venv/bin/python" -m pytest tests -q -p no:cacheprovider --ignore=tests/test_integrations_trl.py --ignore=tests/test_integrations_trl_precision.py
"$ROOT/.venv/bin/python" -m pytest tests/test_integrations_trl.py tests/test_integrations_trl_precision.py -q -p no:cacheprovider
