"""swift-fipo on ms-swift's *real* ``MegatronGRPOTrainer``, on real megatron-core tensors, on CPU.

Runs where the Megatron stack is installed (scripts/suites/megatron-4.6.0.sh: ms-swift, megatron-core,
mcore-bridge; no Transformer Engine, no CUDA); elsewhere the file is left out. Every check runs in a worker
process of its own (tests/megatron_cpu/worker_*.py; the import shim there touches module state, and each
process costs ~20 s of imports, so one worker measures many things and the tests here judge them):

* ``worker_single.py`` twice, at the same time: as installed (the swift-fipo .pth hook patches the class as
  ms-swift imports it) and with ``SWIFT_FIPO_DISABLE=1`` (ms-swift as shipped);
* ``worker_dp.py`` under ``torchrun --nproc_per_node 2`` (gloo, data parallel 2).

Real: megatron-core 0.16.1's ``GPTModel`` (local layer spec) with the tiny HF Qwen2's weights, the trainer built
by ms-swift's Ray ``GRPOLoss``, its ``forward_step`` and ``loss_func``, its batch helpers, gloo collectives.
Faked, because they need CUDA: Transformer Engine and triton at import time, megatron-core's CUDA device/RNG
calls (tests/megatron_cpu/__init__.py), and Megatron's distributed optimizer (torch's Adam in its place for
the optimizer-step test).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, need, not_applicable_here

pytestmark = [pytest.mark.ms_swift]
need('swift', 'ms-swift')
need('megatron', 'megatron-core')  # the namespace only: megatron.core imports a lot
sys.path.insert(0, str(REPO / 'tests'))
from megatron_cpu import real_trainer_runs_here  # noqa: E402  (torch only: nothing of the stack is imported)

if not real_trainer_runs_here():  # mcore-bridge's distribution is read, never imported (it imports TE)
    not_applicable_here('needs mcore-bridge and an ms-swift >= 4.4 (Ray GRPOLoss, OPD-RL check) beside '
                        'megatron-core: the Megatron suite (scripts/suites/megatron-4.6.0.sh)')

from megatron_cpu.worker_single import CASES  # noqa: E402  (the names only: importing it runs nothing)
from reference import brute_fipo_weight, is_close  # noqa: E402
from tiny_trl_model import build_tiny_model  # noqa: E402

from swift_fipo.integrations.metrics import METRIC_REDUCTIONS  # noqa: E402

WORKERS = REPO / 'tests' / 'megatron_cpu'
OPD_RL_ERROR = "ValueError: OPD-RL (teacher) does not support loss_type='fipo'"
NATIVE_KEYS = ('fipo/future_kl_mean', 'fipo/influence_weight_mean', 'fipo/safety_keep_ratio')
WORKER_TIMEOUT_S = 400


def _environment(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != 'SWIFT_FIPO_DISABLE'}
    # One thread each: the two single-process workers run at once, and their float reductions then agree.
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1', **extra)
    return env


def _finish(name: str, process: subprocess.Popen, began: float) -> float:
    try:
        output, _ = process.communicate(timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f'{name} ran over {WORKER_TIMEOUT_S} s:\n{output[-6000:]}')
    assert process.returncode == 0, f'{name} failed (rc {process.returncode}):\n{output[-6000:]}'
    return time.monotonic() - began


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp('megatron-real') / 'model')


@pytest.fixture(scope='module')
def single(model_dir: Path) -> dict[str, dict[str, Any]]:
    """{'patched': ..., 'native': ...}: what worker_single.py measured, as installed and with the hook off."""
    out = model_dir.parent
    began = time.monotonic()
    processes = {mode: _start([sys.executable, str(WORKERS / 'worker_single.py'), str(model_dir),
                               str(out / f'{mode}.pt')], _environment(**extra))
                 for mode, extra in (('patched', {}), ('native', {'SWIFT_FIPO_DISABLE': '1'}))}
    results = {}
    for mode, process in processes.items():
        wall = _finish(f'worker_single.py ({mode})', process, began)
        results[mode] = torch.load(out / f'{mode}.pt', weights_only=False)
        results[mode]['process_s'] = wall
    return results


@pytest.fixture(scope='module')
def two_ranks(model_dir: Path) -> list[dict[str, Any]]:
    out = model_dir.parent / 'dp.pt'
    command = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
               str(_free_port()), str(WORKERS / 'worker_dp.py'), str(model_dir), str(out)]
    _finish('worker_dp.py (torchrun, 2 processes)', _start(command, _environment()), time.monotonic())
    return torch.load(out, weights_only=False)


def _free_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def test_pth_hook_patches_the_real_trainer_class_on_import(single):
    patched, native = single['patched'], single['native']
    assert not patched['disabled'] and native['disabled']
    # Installed: patched as ms-swift imported the module (the worker never calls swift_fipo.install()).
    assert patched['patched'] and patched['teacher_patched'] and patched['loss_func_patched']
    assert not (native['patched'] or native['teacher_patched'] or native['loss_func_patched'])
    # And `swift-fipo doctor` says so, in each of the two processes.
    line = 'swift.megatron.trainers.grpo_trainer (megatron rlhf): '
    said = {mode: next(text for text in single[mode]['doctor']['text'].splitlines() if line in text)
            for mode in ('patched', 'native')}
    assert said['patched'].endswith(line + 'hooked when `megatron rlhf` imports it'), said
    assert (line + 'not hooked') in said['native'], said
    assert single['patched']['doctor']['rc'] == 0 and single['native']['doctor']['rc'] == 1


def test_native_refuses_fipo_and_the_plugin_trains_but_still_refuses_an_explicit_teacher(single):
    patched, native = single['patched'], single['native']
    # ms-swift 4.6.0 as shipped: no teacher configured still sets the teacher flag, and its loss rejects fipo.
    assert native['has_teacher'] is True
    assert native['default_error'] is not None and native['default_error'].startswith(OPD_RL_ERROR)
    assert patched['has_teacher'] is False and patched['default_error'] is None
    assert patched['explicit_teacher_error'] is not None and patched['explicit_teacher_error'].startswith(OPD_RL_ERROR)
    assert native['explicit_teacher_error'] is not None and native['explicit_teacher_error'].startswith(OPD_RL_ERROR)


@pytest.mark.parametrize('case', list(CASES))
def test_forward_step_loss_and_gradient_equal_native(single, case):
    """ms-swift's own forward_step + loss_func on the GPTModel: the plugin's loss and every parameter's gradient
    equal native's (run with the teacher flag cleared, the one thing that stops it) to 1e-6."""
    mine, theirs = single['patched']['cases'][case], single['native']['cases'][case]
    assert theirs['teacher_flag'] is True and mine['teacher_flag'] is False
    # Two code paths: only the plugin's loss_func wrapper logs its extra diagnostics.
    assert 'fipo/raw_weight_mean' in mine['metrics'] and 'fipo/raw_weight_mean' not in theirs['metrics']
    assert abs(float(mine['loss']) - float(theirs['loss'])) <= 1e-6, (float(mine['loss']), float(theirs['loss']))
    assert set(mine['grads']) == set(theirs['grads']) and len(mine['grads']) >= 17  # every GPTModel parameter
    for name, grad in mine['grads'].items():
        assert grad.abs().sum() > 0, f'no gradient reached {name}'
        torch.testing.assert_close(grad, theirs['grads'][name], rtol=0, atol=1e-6,
                                   msg=lambda m, name=name: f'{name}: {m}')
    for key in NATIVE_KEYS:
        assert mine['metrics'][key] == pytest.approx(theirs['metrics'][key], abs=1e-6), key
    # Each flag set does what it is there for, or the comparison would prove less than it claims.
    metrics, defaults = mine['metrics'], single['patched']['cases']['defaults']
    assert metrics['fipo/influence_weight_max'] > 1.0  # off-policy: the weights are not all 1
    if case == 'symmetric-clip':
        assert metrics['fipo/influence_weight_min'] < 1.0 and metrics['fipo/clipped_low_ratio'] > 0
    if case == 'delta':
        assert metrics['fipo/filtered_ratio'] > 0
    if case == 'safety-fires':
        assert theirs['metrics']['fipo/safety_keep_ratio'] < 1.0 and metrics['fipo/safety_fired_ratio'] > 0
    if case == 'sequence-is':
        assert float(mine['loss']) != pytest.approx(float(defaults['loss']), abs=1e-4)


@pytest.mark.parametrize('preset', ['paper-7b', 'paper-32b'])
def test_paper_presets_on_the_real_loss_match_the_float64_reference(single, preset):
    """The authors' recipes (filter c = 10, log-ratio clamp, sequence drop, dual clip --delta 10) in ms-swift's
    real loss: the weights its _compute_fipo_influence returned, on the inputs it received, are the float64
    reference's (tests/reference.py) to 1e-5."""
    seen = single['patched']['presets'][preset]
    mask = seen['mask']
    expected, _, _ = brute_fipo_weight(seen['log_ratio'], mask, seen['advantages'], ratio=seen['coef_1'],
                                       **seen['config'])
    assert is_close(seen['weight'][mask], expected[mask]), float((seen['weight'].double() - expected)[mask].abs().max())
    metrics = seen['metrics']
    # The recipe's parts all acted on this batch: the filter, the safety rule and the drop.
    assert metrics['fipo/filtered_ratio'] > 0 and metrics['fipo/safety_fired_ratio'] > 0
    assert metrics['fipo/dropped_response_ratio'] > 0 and math.isfinite(seen['loss'])


def test_megatron_logits_and_loss_equal_hf_for_the_same_weights(single):
    patched = single['patched']
    assert patched['logits_max_abs_diff'] <= 1e-5 * max(1.0, patched['logits_max_abs'])
    # The same loss_func fed log-probs from the HF model gives the loss the Megatron forward gave.
    assert patched['hf_logps_loss'] == pytest.approx(patched['megatron_loss'], abs=1e-6)


def test_several_optimizer_steps_on_one_rollout_weights_are_one_first_then_move(single):
    steps = single['patched']['steps']
    assert len(steps) >= 3
    first = steps[0]
    # The first step is on-policy (old log-probs from the same weights): every weight exactly 1.
    assert first['fipo/influence_weight_min'] == 1.0 and first['fipo/influence_weight_max'] == 1.0
    assert first['fipo/future_kl_mean'] == 0.0 and first['fipo/influence_weight_mean'] == 1.0
    for index, step in enumerate(steps[1:], start=2):
        assert step['fipo/future_kl_mean'] != 0.0, index
        assert step['fipo/influence_weight_max'] > 1.0 or step['fipo/influence_weight_min'] < 1.0, (index, step)


def _expected(key: str, values: list[float]) -> float:
    """The documented cross-rank combination: METRIC_REDUCTIONS' mean / min / max; a rank without such tokens
    (NaN) adds nothing to an extreme and 0 to a mean (as ms-swift's own keys)."""
    how = METRIC_REDUCTIONS[key]
    if how == 'mean':
        return sum(0.0 if math.isnan(value) else value for value in values) / len(values)
    finite = [value for value in values if not math.isnan(value)]
    return (min if how == 'min' else max)(finite) if finite else math.nan


def test_two_ranks_reduce_every_extra_metric_as_metric_reductions_says(two_ranks):
    """Two data-parallel ranks with different batches (three runs: unclipped with the filter and the safety
    rule, symmetric clipping, a rank without completion tokens): every fipo/* value the trainer's own reduction
    logs is the mean, min or max of the ranks' own values, as METRIC_REDUCTIONS says."""
    assert [rank['world'] for rank in two_ranks] == [2, 2] and [rank['data_parallel'] for rank in two_ranks] == [2, 2]
    configs = [name for name in two_ranks[0] if isinstance(two_ranks[0][name], dict)]
    checked, disagreeing = set(), set()
    for config in configs:
        alone = [rank[config]['alone'] for rank in two_ranks]
        together = [rank[config]['together'] for rank in two_ranks]
        assert together[0] == pytest.approx(together[1], nan_ok=True), config  # every rank logs the same
        for key, value in together[0].items():
            short = key.removeprefix('fipo/')
            values = [rank[key] for rank in alone]
            assert value == pytest.approx(_expected(short, values), rel=1e-6, abs=1e-7, nan_ok=True), \
                (config, key, values, value)
            checked.add(short)
            if not (values[0] == pytest.approx(values[1], nan_ok=True)):
                disagreeing.add(short)
    assert checked == set(METRIC_REDUCTIONS), sorted(set(METRIC_REDUCTIONS) - checked)
    # The ranks saw different batches, so the check distinguishes mean from min from max; the authors'
    # sequence drop is not among ms-swift's flags, so no response is dropped on either rank.
    assert disagreeing >= set(METRIC_REDUCTIONS) - {'dropped_response_ratio'}, \
        sorted(set(METRIC_REDUCTIONS) - disagreeing)
