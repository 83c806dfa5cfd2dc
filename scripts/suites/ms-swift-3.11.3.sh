# The oldest ms-swift line served (3.11 brought the DAPO loss FIPO reuses; no native FIPO): every in-process
# ms-swift test, and the swift rlhf runs of the legacy path no other suite makes: two processes and DeepSpeed
# ZeRO-2 (metrics over ranks through the legacy sink), bf16 under 3.x's CPU autocast, token capture and its
# resumed run, and a FIPO run. The rest of tests/test_cli_swift.py runs on the same legacy path in
# ms-swift-3.12.6.
set -euo pipefail
cd "$ROOT"
bash scripts/setup.sh 3.11.3 "$ROOT/.venv-ms-swift-3.11.3"
python="$ROOT/.venv-ms-swift-3.11.3/bin/python"
"$python" -m pytest tests -q -p no:cacheprovider -m 'ms_swift and not cli'
"$python" -m pytest -m 'ms_swift and cli' tests/test_cli_multiprocess.py tests/test_cli_swift_precision.py \
    tests/test_token_capture.py tests/test_viz_inspect.py \
    tests/test_cli_swift.py::test_fipo_run_logs_finite_metrics_that_move_on_reuse_steps -q -p no:cacheprovider
