"""FIPO inside upstream verl's own actor worker, on CPU, at verl's default bf16 mixed precision and at fp32.

``tests/verl_cpu/actor_update.py`` (in a subprocess: verl's platform is chosen once per process) builds
``ActorRolloutRefWorker(role='actor')`` from verl's composed ``ppo_trainer`` config with the FSDP2
engine, computes the old log-probs with the worker, GRPO advantages with verl's ``compute_advantage``
and runs ``update_actor`` as ``RayPPOTrainer._update_actor`` calls it. At bf16 verl's engine runs the
forward and the loss inside ``torch.autocast(dtype=bfloat16)``; at fp32 it skips autocast.

What is faked, because this machine cannot run it: the accelerator (a CPU platform registered in
verl's own platform registry, tests/verl_cpu/cpu_platform.py) and the rollout engine (HF ``generate``
on the tiny model; verl 0.9.1 registers no HF rollout). Everything from the worker down is verl's code.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import need, not_applicable_here

verl = need('verl')

VERL_DIR = Path(verl.__file__).resolve().parent
if not (VERL_DIR / 'plugin' / 'platform' / 'platform_manager.py').is_file() \
        or not (VERL_DIR / 'workers' / 'engine_workers.py').is_file():
    # 0.6.1's worker (fsdp_workers) has no platform registry: it can run only where CUDA is.
    not_applicable_here(f'verl {verl.__version__} has no platform registry or engine worker (0.9 and later have)')

pytestmark = pytest.mark.verl

TESTS = Path(__file__).resolve().parent
SCRIPT = TESTS / 'verl_cpu' / 'actor_update.py'
# 4 prompts x rollout.n 4 = 16 responses; mini-batches of 8 responses for 2 epochs: 4 optimizer steps.
STEPS = 4
FIPO_KEYS = ('future_kl_mean', 'raw_weight_mean', 'influence_weight_mean', 'influence_weight_min',
             'influence_weight_max', 'safety_keep_ratio', 'filtered_ratio', 'dropped_response_ratio')
RUNS = [
    {'name': 'fipo-bf16', 'loss_mode': 'fipo', 'precision': 'bf16', 'ppo_epochs': 2, 'mini_batch_responses': 8},
    {'name': 'fipo-fp32', 'loss_mode': 'fipo', 'precision': 'fp32', 'ppo_epochs': 2, 'mini_batch_responses': 8},
    # One optimizer step over the whole batch: old == new log-probs, so FIPO's weights are all 1.
    {'name': 'fipo-one-step', 'loss_mode': 'fipo', 'precision': 'bf16', 'ppo_epochs': 1, 'mini_batch_responses': 16},
    {'name': 'vanilla-one-step', 'loss_mode': 'vanilla', 'precision': 'bf16', 'ppo_epochs': 1,
     'mini_batch_responses': 16},
]


@pytest.fixture(scope='module')
def worker_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp('verl-worker')
    spec = {'work_dir': str(work), 'runs': [{**run, 'lr': 2e-3} for run in RUNS]}
    (work / 'spec.json').write_text(json.dumps(spec))
    env = {**os.environ, 'VERL_USE_EXTERNAL_MODULES': 'verl_cpu.cpu_platform', 'VERL_PLATFORM': 'cpu',
           'VERL_ENGINE_DEVICE': 'cuda', 'MASTER_PORT': '29613',
           'PYTHONPATH': os.pathsep.join(filter(None, [str(TESTS), os.environ.get('PYTHONPATH')]))}
    result = subprocess.run([sys.executable, str(SCRIPT), str(work / 'spec.json'), str(work / 'out.json')],
                            capture_output=True, text=True, env=env, timeout=600, cwd=work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    results = json.loads((work / 'out.json').read_text())
    results['work_dir'] = work
    return results


def fipo_metric(run: dict, key: str) -> list[float]:
    return run['metrics'][f'actor/fipo/{key}']


@pytest.mark.parametrize('name', ['fipo-bf16', 'fipo-fp32'])
def test_the_worker_reports_fipo_metrics_for_every_optimizer_step(worker_runs: dict, name: str) -> None:
    run = worker_runs['runs'][name]
    for key in FIPO_KEYS:
        values = fipo_metric(run, key)
        assert len(values) == STEPS, (key, values)
        assert all(math.isfinite(value) for value in values), (key, values)
    assert len(run['metrics']['actor/pg_loss']) == STEPS


@pytest.mark.parametrize('name, autocast', [('fipo-bf16', 'torch.bfloat16'), ('fipo-fp32', 'torch.float32')])
def test_the_engine_ran_at_the_asked_precision(worker_runs: dict, name: str, autocast: str) -> None:
    # verl's FSDP engine autocasts forward and loss to this dtype (float32: no autocast at all).
    assert worker_runs['runs'][name]['autocast_dtype'] == autocast


@pytest.mark.parametrize('name', ['fipo-bf16', 'fipo-fp32'])
def test_weights_are_one_on_policy_and_move_off_one_later(worker_runs: dict, name: str) -> None:
    run = worker_runs['runs'][name]
    first = [fipo_metric(run, key)[0] for key in ('influence_weight_mean', 'influence_weight_min',
                                                 'influence_weight_max', 'raw_weight_mean')]
    assert first == [1.0, 1.0, 1.0, 1.0]  # the first mini-batch is scored by the policy that sampled it
    assert fipo_metric(run, 'future_kl_mean')[0] == 0.0
    later = fipo_metric(run, 'influence_weight_max')[1:] + fipo_metric(run, 'influence_weight_min')[1:]
    assert any(value != 1.0 for value in later), later
    assert all(value != 0.0 for value in fipo_metric(run, 'future_kl_mean')[1:])


@pytest.mark.parametrize('name', ['fipo-bf16', 'fipo-fp32'])
def test_every_parameter_changes(worker_runs: dict, name: str) -> None:
    changed = worker_runs['runs'][name]['parameters_changed']
    assert changed and all(changed.values()), [param for param, moved in changed.items() if not moved]


def test_the_two_precisions_see_the_same_rollout(worker_runs: dict) -> None:
    # Same rollout, same old log-probs (fp32 inference), so the on-policy first step is identical in loss
    # up to the bf16 forward; the later steps differ because autocast changes the updates.
    bf16, fp32 = worker_runs['runs']['fipo-bf16'], worker_runs['runs']['fipo-fp32']
    assert bf16['advantages_spread'] == fp32['advantages_spread'] > 0
    assert bf16['metrics']['actor/pg_loss'][0] == pytest.approx(fp32['metrics']['actor/pg_loss'][0], abs=1e-2)


def test_an_on_policy_update_equals_vanillas(worker_runs: dict) -> None:
    fipo, vanilla = worker_runs['runs']['fipo-one-step'], worker_runs['runs']['vanilla-one-step']
    assert fipo_metric(fipo, 'influence_weight_min') == fipo_metric(fipo, 'influence_weight_max') == [1.0]
    assert fipo['metrics']['actor/pg_loss'] == vanilla['metrics']['actor/pg_loss']
    assert fipo['metrics']['grad_norm'] == vanilla['metrics']['grad_norm']
    after_fipo = torch.load(worker_runs['work_dir'] / 'fipo-one-step.pt')['after']
    after_vanilla = torch.load(worker_runs['work_dir'] / 'vanilla-one-step.pt')['after']
    assert after_fipo.keys() == after_vanilla.keys()
    for name in after_fipo:
        torch.testing.assert_close(after_fipo[name], after_vanilla[name], rtol=0, atol=0, msg=name)
