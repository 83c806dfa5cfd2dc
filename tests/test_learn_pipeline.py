"""A smoke of the README's main job (examples/learn/quick_run.sh), cut to a few steps: the task, the model, the real
`swift sft`, the held-out evaluation, the real `swift rlhf --loss_type fipo` with off-policy reuse, the console it
prints, and the grouped plot of its run beside a DAPO run from the same SFT checkpoint.

It checks the pipeline's files and numbers, not learning: a handful of steps teaches nothing, and whether FIPO learns
is the study's result (docs/learning.md), not a timed test. Runs only with ms-swift 4.6 (the README's .venv): 93 s on
a 2-core machine at a load average of 3.1-3.6 from other work (pytest tests/test_learn_pipeline.py, 4 tests).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, ms_swift_version, need, only_where

pytestmark = [pytest.mark.ms_swift]
need('swift', 'ms-swift')
pytestmark.append(only_where(ms_swift_version()[:2] == (4, 6), 'the quick run (README main job) is written for the '
                             'ms-swift the README installs, 4.6'))

QUICK_RUN = REPO / 'examples' / 'learn' / 'quick_run.sh'
SFT_STEPS, RL_STEPS, STEPS_PER_ROLLOUT, HELDOUT = 3, 4, 4, 24
ACCURACY_LINE = re.compile(r'^held-out accuracy: (\d+\.\d)% -> (\d+\.\d)%$')


def _run(work: Path, *flags: str, **settings: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != 'SWIFT_FIPO_DISABLE'}
    env['PATH'] = f'{Path(sys.executable).parent}{os.pathsep}{env.get("PATH", "")}'
    env.update(SFT_STEPS=str(SFT_STEPS), SFT_BATCH='16', RL_STEPS=str(RL_STEPS), HELDOUT=str(HELDOUT), THREADS='1',
               **settings)
    return subprocess.run(['bash', str(QUICK_RUN), str(work), *flags], capture_output=True, text=True, env=env,
                          cwd=work.parent, timeout=900, check=False)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp('learn') / 'quick'
    return work, _run(work)


def _output(result: subprocess.CompletedProcess) -> str:
    return (result.stdout + result.stderr)[-4000:]


def test_sft_trains_and_is_evaluated(quick_run):
    work, result = quick_run
    assert result.returncode == 0, _output(result)
    steps = [row for row in _rows(work / 'sft' / 'logging.jsonl') if 'loss' in row]
    assert [row['global_step/max_steps'] for row in steps] == [f'{step}/{SFT_STEPS}' for step in
                                                                range(1, SFT_STEPS + 1)]
    assert all(math.isfinite(row['loss']) for row in steps)
    assert (work / 'sft' / f'checkpoint-{SFT_STEPS}' / 'config.json').is_file()
    before = _rows(work / 'eval-before.jsonl')
    assert len(before) == 1 and before[0]['global_step'] == 0 and before[0]['heldout/prompts'] == HELDOUT
    assert 0 <= before[0]['heldout/greedy_accuracy'] <= 1


def test_fipo_acts_on_the_reused_steps_of_each_rollout(quick_run):
    work, result = quick_run
    assert result.returncode == 0, _output(result)
    steps = [row for row in _rows(work / 'rl' / 'output' / 'logging.jsonl') if 'fipo/influence_weight_mean' in row]
    assert [row['global_step/max_steps'] for row in steps] == [f'{step}/{RL_STEPS}' for step in range(1, RL_STEPS + 1)]
    for index, row in enumerate(steps):
        for key in ('fipo/future_kl_mean', 'fipo/influence_weight_mean', 'fipo/influence_weight_max',
                    'fipo/raw_weight_mean'):
            assert math.isfinite(row[key]), (key, row)
        if index % STEPS_PER_ROLLOUT == 0:  # the first optimizer step of a rollout is on-policy: FIPO == DAPO
            assert row['fipo/future_kl_mean'] == 0 and row['fipo/influence_weight_mean'] == 1, row
        else:  # later steps train on completions of a policy that has moved since
            assert row['fipo/future_kl_mean'] != 0 and row['fipo/raw_weight_mean'] != 1, row
            assert 1 <= row['fipo/influence_weight_mean'] <= row['fipo/influence_weight_max'] <= 1.2, row
    assert (work / 'rl' / 'output' / f'checkpoint-{RL_STEPS}' / 'config.json').is_file()


def test_console_shows_each_step_and_ends_with_the_accuracy_line(quick_run):
    work, result = quick_run
    assert result.returncode == 0, _output(result)
    lines = result.stdout.strip().splitlines()
    match = ACCURACY_LINE.match(lines[-1])
    assert match, lines[-5:]
    assert sum(bool(ACCURACY_LINE.match(line)) for line in lines) == 1
    evaluations = _rows(work / 'rl' / 'eval.jsonl')
    assert [row['global_step'] for row in evaluations] == [0, RL_STEPS]
    assert all(row['heldout/prompts'] == HELDOUT for row in evaluations)
    printed = [float(value) for value in match.groups()]
    assert printed == [round(100 * row['heldout/greedy_accuracy'], 1) for row in evaluations]
    # One console line per RL step, its FIPO weight as logged.
    header = next(index for index, line in enumerate(lines) if line.split()[:2] == ['step', 'reward'])
    step_lines = lines[header + 1:header + 1 + RL_STEPS]
    logged = [row for row in _rows(work / 'rl' / 'output' / 'logging.jsonl') if 'fipo/influence_weight_mean' in row]
    assert [line.split()[0] for line in step_lines] == [f'{step}/{RL_STEPS}' for step in range(1, RL_STEPS + 1)]
    assert [float(line.split()[4]) for line in step_lines] == pytest.approx(
        [row['fipo/influence_weight_mean'] for row in logged], abs=1e-4)


def test_grouped_plot_of_fipo_beside_dapo(quick_run):
    work, result = quick_run
    assert result.returncode == 0, _output(result)
    # DAPO from the same SFT checkpoint and held-out evaluation: the script keeps finished stages.
    dapo = _run(work, '--loss_type', 'dapo', RL_NAME='rl-dapo')
    assert dapo.returncode == 0, _output(dapo)
    assert 'swift sft:' not in dapo.stdout  # SFT reused, not run again
    dapo_rows = [row for row in _rows(work / 'rl-dapo' / 'output' / 'logging.jsonl') if 'loss' in row]
    assert len(dapo_rows) == RL_STEPS and not any(key.startswith('fipo/') for row in dapo_rows for key in row)
    png = work / 'groups.png'
    plot = subprocess.run([str(Path(sys.executable).parent / 'swift-fipo'), 'plot', '--group', 'FIPO', str(work / 'rl'),
                           '--group', 'DAPO', str(work / 'rl-dapo'), '-o', str(png)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert plot.returncode == 0, plot.stdout + plot.stderr
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 10_000
