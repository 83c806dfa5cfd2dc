"""`swift rlhf --loss_type fipo --torch_dtype bfloat16 --use_cpu true`, the real command line on the tiny
model. On ms-swift 3.11 - 4.1 (transformers 4.57) the trainer's CPU AMP wraps ``compute_loss`` in
``torch.autocast('cpu', bfloat16)``: the FIPO weights are computed inside it, and crashed there before
the maths turned autocast off for itself."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import need
from test_cli_swift import _tail, run_tiny, trains_fipo

pytestmark = [pytest.mark.ms_swift, pytest.mark.cli]
need('swift', 'ms-swift')


@trains_fipo
def test_bf16_run_trains_with_fipo_weights_that_move_on_reuse_steps(tiny_run_dir: Path, tmp_path: Path) -> None:
    result, rows = run_tiny(tiny_run_dir, tmp_path / 'run', '--torch_dtype', 'bfloat16')
    assert result.returncode == 0, _tail(result)
    assert len(rows) == 4
    for row in rows:
        assert math.isfinite(row['loss']) and math.isfinite(row['fipo/influence_weight_mean']), row
    # Steps 1 and 3 are first passes over a rollout (weights exactly 1), 2 and 4 reuse it.
    for row in rows[0::2]:
        assert row['fipo/influence_weight_mean'] == 1 and row['fipo/future_kl_mean'] == 0, row
    for row in rows[1::2]:
        assert row['fipo/future_kl_mean'] != 0 and row['fipo/raw_weight_mean'] != 1, row
