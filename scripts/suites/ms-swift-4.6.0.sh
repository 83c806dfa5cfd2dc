# The newest ms-swift: the whole suite, then the TRL integration in a process of its own (ms-swift's
# GRPO trainer module deletes trl.GRPOTrainer.__init__ on import, so the combined run leaves that file out).
# SWIFT_FIPO_STRICT_SKIPS=1: a skip for any reason but the machine kind (no GPU/CUDA/Transformer Engine/vLLM)
# fails the run (tests/conftest.py), so a broken install cannot hide as a skip.
set -euo pipefail
cd "$ROOT"
bash scripts/setup.sh 4.6.0 "$ROOT/.venv"
export SWIFT_FIPO_STRICT_SKIPS=1
# Not collected here, as they cannot apply to a line with native FIPO and TRL >= 0.26 (run by the suites of
# the lines they are for): the legacy hook (3.11 - 4.2.1) and the refusal where no rollout is reused (4.0/4.1).
not_for_this_line=(--ignore=tests/test_integrations_ms_swift_legacy.py
                   --deselect tests/test_cli_swift.py::test_fipo_is_refused_where_no_rollout_is_reused)
"$ROOT/.venv/bin/python" -m pytest tests -q -p no:cacheprovider --ignore=tests/test_integrations_trl.py \
    "${not_for_this_line[@]}"
# TRL's option grid skips the options the TRL that ms-swift pins (0.29.1) does not have.
SWIFT_FIPO_ALLOWED_SKIPS='^trl [0-9.]+ has no ' "$ROOT/.venv/bin/python" -m pytest tests/test_integrations_trl.py -q \
    -p no:cacheprovider
