"""`swift rlhf --loss_type fipo` in two CPU processes: plain DDP (NPROC_PER_NODE=2, gloo) and DeepSpeed ZeRO-2,
through examples/fipo_cpu_tiny.sh on the tiny local model.

Each worker also loads a recording plugin (written below into the test's directory, passed with
``--external_plugins``) that appends, per rank and per loss call, the summaries the plugin computed on that
rank's own micro-batch. The logged value of every step can then be recomputed from the per-rank values:
ms-swift averages its 3 native keys over ranks, and the plugin reduces its extra keys the same way (min/max
for the extremes). So the test checks aggregation over ranks, not just that numbers are finite.
Each run takes ~15 s; the first ZeRO-2 run on a machine also JIT-builds DeepSpeed's CPU comm op (~1 min).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, need

pytestmark = [pytest.mark.ms_swift, pytest.mark.cli]
need('swift', 'ms-swift')

RECIPE = REPO / 'examples' / 'fipo_cpu_tiny.sh'
REWARD = REPO / 'examples' / 'tiny' / 'reward.py'
NATIVE_KEYS = ('fipo/future_kl_mean', 'fipo/influence_weight_mean', 'fipo/safety_keep_ratio')

RECORDER = '''
"""Test helper: record each rank's own FIPO summaries (the plugin's, before any cross-rank reduction)."""
import json, os
import swift_fipo.integrations.ms_swift.hooks as adapter_module
import swift_fipo.ops.loss as loss_module  # reweight_advantages: ms-swift without native FIPO

_inner = adapter_module.compute_fipo_influence
_path = os.path.join(os.environ['FIPO_RECORD_DIR'], 'rank%s.jsonl' % os.environ.get('RANK', '0'))


def _recording(log_ratio, completion_mask, advantages, config=None, ratio=None):
    weight, stats = _inner(log_ratio, completion_mask, advantages, config, ratio=ratio)
    row = {key: float(value) for key, value in stats.summary.items()}
    row['tokens'] = int(stats.completion_mask.sum())
    row['rows'] = int(log_ratio.shape[0])
    with open(_path, 'a') as f:
        f.write(json.dumps(row) + '\\n')
    return weight, stats


adapter_module.compute_fipo_influence = loss_module.compute_fipo_influence = _recording
'''


def free_port() -> int:
    """A port nothing listens on now: CI runs several suites at once, so fixed torchrun ports collide."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def run_two_ranks(tiny_run_dir: Path, work: Path, mode: str, *flags: str
                  ) -> tuple[subprocess.CompletedProcess, list[dict], list[list[dict]]]:
    """Run the recipe in MODE (ddp|zero2) with extra FLAGS; return the result, logged steps and each rank's
    recorded calls."""
    work.mkdir(parents=True)
    for name in ('model', 'train.jsonl'):
        (work / name).symlink_to(tiny_run_dir / name)
    records = work / 'records'
    records.mkdir()
    recorder = work / 'fipo_recorder.py'
    recorder.write_text(RECORDER)
    env = {key: value for key, value in os.environ.items() if key != 'SWIFT_FIPO_DISABLE'}
    env.update(PATH=f'{Path(sys.executable).parent}{os.pathsep}{env.get("PATH", "")}', MODE=mode,
               MASTER_PORT=str(free_port()), FIPO_RECORD_DIR=str(records))
    result = subprocess.run(['bash', str(RECIPE), str(work), '--external_plugins', str(REWARD), str(recorder), *flags],
                            capture_output=True, text=True, cwd=work, env=env, timeout=900, check=False)
    logs = sorted(work.glob('output/*/logging.jsonl'))
    rows = [json.loads(line) for line in logs[-1].read_text().splitlines()] if logs else []
    ranks = [[json.loads(line) for line in (records / f'rank{rank}.jsonl').read_text().splitlines()]
             if (records / f'rank{rank}.jsonl').exists() else [] for rank in range(2)]
    return result, [row for row in rows if 'loss' in row], ranks


def _tail(result: subprocess.CompletedProcess) -> str:
    return (result.stdout + result.stderr)[-4000:]


def _reduce(key: str, values: list[float]) -> float:
    """How a metric of two ranks is combined for the log: minima by min, maxima and the p99 (an upper
    tail) by max, the rest by their mean; a rank without such tokens (NaN) does not count."""
    values = [value for value in values if not math.isnan(value)]
    if not values:
        return math.nan
    if key.endswith('_min'):
        return min(values)
    if key.endswith(('_max', '_p99')):
        return max(values)
    return sum(values) / len(values)


def check_aggregated_over_ranks(result, rows, ranks, extremes_disagree: bool = False):
    assert result.returncode == 0, _tail(result)
    assert 'world_size: 2' in result.stdout + result.stderr, 'not a 2-process run'
    assert len(rows) == 4, rows
    # One loss call per rank and step (gradient_accumulation_steps 1), on that rank's 2 of the 4 completions.
    assert [len(calls) for calls in ranks] == [4, 4], _tail(result)
    assert all(call['rows'] == 2 for calls in ranks for call in calls)
    for step, row in enumerate(rows):
        for key in NATIVE_KEYS:
            assert key in row and math.isfinite(row[key]), (step, key, row)
        per_rank = [ranks[0][step], ranks[1][step]]
        checked = 0
        for key, logged in row.items():
            name = key.removeprefix('fipo/')
            if not key.startswith('fipo/') or name not in per_rank[0]:
                continue
            expected = _reduce(name, [calls[name] for calls in per_rank])
            if math.isnan(expected):
                assert logged is None or math.isnan(logged), (step, key, logged, per_rank)
            else:
                assert logged == pytest.approx(expected, rel=1e-4, abs=1e-5), (step, key, logged, per_rank)
            checked += 1
        assert checked >= len(NATIVE_KEYS) + 2, (step, row)
    # Steps 1 and 3 are first passes over a rollout (on-policy: weights exactly 1), 2 and 4 reuse it.
    for row in rows[0::2]:
        assert row['fipo/future_kl_mean'] == 0 and row['fipo/influence_weight_mean'] == 1, row
    for step in (1, 3):
        assert rows[step]['fipo/future_kl_mean'] != 0, rows[step]
        # exp(Future-KL) moves off 1; the high-only clip keeps weights at 1 where Future-KL is negative,
        # so the weights themselves are only sure to move in the unclipped run.
        assert any(calls[step]['raw_weight_mean'] != 1 for calls in ranks), ranks
        if extremes_disagree:
            assert any(calls[step]['influence_weight_max'] > 1 or calls[step]['influence_weight_min'] < 1
                       for calls in ranks), ranks
    # The two ranks trained on different completions (data parallel, not a duplicated batch).
    assert any(ranks[0][step]['tokens'] != ranks[1][step]['tokens'] or
               ranks[0][step]['future_kl_mean'] != ranks[1][step]['future_kl_mean'] for step in (1, 3))
    if extremes_disagree:  # then a min taken as a max (or the reverse) would show in the log
        for name in ('influence_weight_min', 'influence_weight_max'):
            assert any(ranks[0][step][name] != ranks[1][step][name] for step in (1, 3)), (name, ranks)


def test_two_processes_fipo_metrics_are_finite_and_averaged_over_ranks(tiny_run_dir, tmp_path):
    # Unclipped weights (--fipo_clip_range 0), so the ranks' minima and maxima differ.
    check_aggregated_over_ranks(*run_two_ranks(tiny_run_dir, tmp_path / 'ddp', 'ddp', '--fipo_clip_range', '0'),
                                extremes_disagree=True)


def test_deepspeed_zero2_fipo_metrics_are_finite_and_averaged_over_ranks(tiny_run_dir, tmp_path):
    need('deepspeed')  # CI installs it (scripts/setup.sh): a broken install fails here
    result, rows, ranks = run_two_ranks(tiny_run_dir, tmp_path / 'zero2', 'zero2')
    assert 'zero_optimization' in result.stdout + result.stderr and "'stage': 2" in result.stdout + result.stderr, \
        _tail(result)
    check_aggregated_over_ranks(result, rows, ranks)
