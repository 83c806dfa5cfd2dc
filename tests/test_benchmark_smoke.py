"""The benchmark script runs end to end at tiny sizes (seconds), so it cannot rot. Not a timed test:
no number it prints is checked, only that every section and output file is produced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import need, not_applicable_here

from swift_fipo.integrations.ms_swift.layout import native_fipo_installed

need('swift', 'ms-swift')
if not native_fipo_installed():
    not_applicable_here('this ms-swift predates native FIPO (4.2.2), which the benchmark compares against')
need('swift.rlhf_trainers.grpo_trainer', 'ms-swift')  # the benchmark compares against ms-swift's native method
need('matplotlib')

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'benchmarks' / 'bench_future_kl.py'


def test_benchmark_script_smoke(tmp_path: Path) -> None:
    plot = tmp_path / 'plot.png'
    env = {key: value for key, value in os.environ.items() if key != 'SWIFT_FIPO_DISABLE'}
    command = [sys.executable, str(SCRIPT), '--smoke', '--out-dir', str(tmp_path), '--plot', str(plot)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / 'smoke.json').read_text())
    rows = results['influence']
    assert {(row['dtype'], row['B'], row['T']) for row in rows} == {
        (dtype, batch, length) for dtype in ('float32', 'bfloat16') for batch in (1, 2) for length in (64, 300)}
    for row in rows:
        assert {'plugin', 'floor'} <= set(row['time'])
        assert row['plugin_saved_bytes'] == 0  # the plugin never keeps anything alive for autograd
        # Native is timed at the first size; at larger ones the script may skip it when its predicted time
        # exceeds the budget (a loaded machine), and then says so.
        if row['T'] == 64 or 'native_skipped' not in row:
            assert 'native' in row['time']
            assert row['native_saved_bytes'] >= row['T']**2 * 2  # native: T^2 decay entries (bf16: 2 bytes each)
        else:
            assert row['native_skipped'].startswith('predicted')
    assert set(results['loss_step']['time']) == {'no FIPO', 'plugin FIPO', 'native FIPO'}
    assert results['machine']['torch'] and results['machine']['threads'] >= 1
    assert '| plugin FIPO |' in (tmp_path / 'smoke.md').read_text()
    assert plot.stat().st_size > 0
