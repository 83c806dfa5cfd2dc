# The oldest ms-swift with native FIPO tested here: everything that depends on ms-swift.
# SWIFT_FIPO_STRICT_SKIPS=1: only machine-kind skips are allowed (tests/conftest.py).
set -euo pipefail
cd "$ROOT"
bash scripts/setup.sh 4.3.2 "$ROOT/.venv-ms-swift-4.3.2"
# Not collected here, as they cannot apply to a line with native FIPO (run by the suites of the lines they are
# for): the legacy hook (3.11 - 4.2.1) and the refusal where no rollout is reused (4.0/4.1).
SWIFT_FIPO_STRICT_SKIPS=1 "$ROOT/.venv-ms-swift-4.3.2/bin/python" -m pytest tests -q -p no:cacheprovider -m ms_swift \
    --ignore=tests/test_integrations_ms_swift_legacy.py \
    --deselect tests/test_cli_swift.py::test_fipo_is_refused_where_no_rollout_is_reused
