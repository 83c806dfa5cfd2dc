#!/usr/bin/env bash
# The test suite, on the newest ms-swift (4.6.0, the whole suite) and on the oldest clean one
# (4.3.2, everything that depends on ms-swift). Each gets its own virtual environment.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh 4.6.0 "$root/.venv"
"$root/.venv/bin/python" -m pytest tests -q -p no:cacheprovider "$@"
# ms-swift's GRPO trainer module deletes trl.GRPOTrainer.__init__ on import, so the TRL integration
# (skipped above once that happened) also runs in a process of its own.
"$root/.venv/bin/python" -m pytest tests/test_integrations_trl.py -q -p no:cacheprovider "$@"
bash scripts/setup.sh 4.3.2 "$root/.venv-ms-swift-4.3.2"
"$root/.venv-ms-swift-4.3.2/bin/python" -m pytest tests -q -p no:cacheprovider -m ms_swift "$@"
