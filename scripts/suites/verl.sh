# Upstream verl, newest release, in its own environment: the verl integration, and the activation tests
# in an environment that has verl but no ms-swift. SWIFT_FIPO_REQUIRE_VERL=1: a missing or broken verl
# fails here instead of skipping. verl's own actor worker (tests/test_verl_worker.py) imports cachetools,
# uvicorn and fastapi, which verl does not declare.
set -euo pipefail
cd "$ROOT"
bash scripts/setup_verl.sh 0.9.1 "$ROOT/.venv-verl" cachetools uvicorn fastapi
SWIFT_FIPO_REQUIRE_VERL=1 "$ROOT/.venv-verl/bin/python" -m pytest tests/test_integrations_verl.py tests/test_verl_worker.py tests/test_activation.py tests/test_one_rule.py \
    -q -p no:cacheprovider -m 'not ms_swift'
