"""The real `swift rlhf` command line, as a subprocess, on the tiny local model, with the installed
(non-editable) plugin. Each run takes ~10 s on CPU."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, ms_swift_version, need, only_where

from swift_fipo.integrations.ms_swift.layout import module_path, native_fipo_installed, rollout_reuse_broken

pytestmark = [pytest.mark.ms_swift, pytest.mark.cli]
need('swift', 'ms-swift')
TRAINER_MODULE = module_path('swift.rlhf_trainers.grpo_trainer')
PIPELINE_MODULE = module_path('swift.pipelines.base')
# ms-swift 3.x calls --tuner_type --train_type.
TUNER_FLAG = '--train_type' if TRAINER_MODULE.startswith('swift.trainers.') else '--tuner_type'
# ms-swift 4.0/4.1 with TRL >= 0.26 never reuse a rollout; the plugin then refuses fipo at start-up.
REUSE_BROKEN = rollout_reuse_broken()
trains_fipo = only_where(REUSE_BROKEN is None, f'fipo is refused here: {REUSE_BROKEN}')


def trainer_class() -> type:
    import importlib
    return importlib.import_module(TRAINER_MODULE).GRPOTrainer

TRAIN_SCRIPT = REPO / 'examples' / 'tiny' / 'train_fipo_cpu.sh'
NATIVE_KEYS = ('fipo/future_kl_mean', 'fipo/influence_weight_mean', 'fipo/safety_keep_ratio')
PLUGIN_ONLY_KEYS = ('fipo/influence_weight_max', 'fipo/raw_weight_mean', 'fipo/clipped_high_ratio')


def run_tiny(tiny_run_dir: Path, work: Path, *flags: str, disable: bool = False
             ) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run examples/tiny/train_fipo_cpu.sh (4 steps, --num_iterations 2) and read its logging.jsonl."""
    work.mkdir(parents=True, exist_ok=True)
    for name in ('model', 'train.jsonl'):
        (work / name).symlink_to(tiny_run_dir / name)
    env = {key: value for key, value in os.environ.items() if key != 'SWIFT_FIPO_DISABLE'}
    env['PATH'] = f'{Path(sys.executable).parent}{os.pathsep}{env.get("PATH", "")}'
    if disable:
        env['SWIFT_FIPO_DISABLE'] = '1'
    result = subprocess.run(['bash', str(TRAIN_SCRIPT), str(work), *flags], capture_output=True, text=True,
                            cwd=work, env=env, timeout=600, check=False)
    logs = sorted(work.glob('output/*/logging.jsonl'))
    rows = [json.loads(line) for line in logs[-1].read_text().splitlines()] if logs else []
    return result, [row for row in rows if 'loss' in row]


def _tail(result: subprocess.CompletedProcess) -> str:
    return (result.stdout + result.stderr)[-3000:]


@pytest.fixture(scope='module')
def fipo_run(tiny_run_dir: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """The example's FIPO run with the plugin, shared by the tests that read it."""
    return run_tiny(tiny_run_dir, tmp_path_factory.mktemp('fipo') / 'run')


@trains_fipo
def test_fipo_run_logs_finite_metrics_that_move_on_reuse_steps(fipo_run):
    result, rows = fipo_run
    assert result.returncode == 0, _tail(result)
    assert len(rows) == 4
    for row in rows:
        for key in NATIVE_KEYS + PLUGIN_ONLY_KEYS:
            assert key in row and math.isfinite(row[key]), (key, row)
    # Steps 1 and 3 are the first pass over a rollout (on-policy: FIPO == DAPO), 2 and 4 reuse it.
    first_pass, reuse = rows[0::2], rows[1::2]
    for row in first_pass:
        assert row['fipo/future_kl_mean'] == 0 and row['fipo/influence_weight_mean'] == 1, row
    for row in reuse:
        assert row['fipo/future_kl_mean'] != 0 and row['fipo/raw_weight_mean'] != 1, row
        assert 1 <= row['fipo/influence_weight_mean'] <= 1.2, row
    # A reuse step whose Future-KL is negative everywhere keeps weight 1 (high-only clip): ask for one above 1.
    assert any(row['fipo/influence_weight_max'] > 1 for row in reuse), reuse
    assert 'FIPO metrics per step' in result.stdout


def test_dapo_is_unchanged_by_the_plugin(tiny_run_dir, tmp_path):
    with_plugin, rows = run_tiny(tiny_run_dir, tmp_path / 'dapo', '--loss_type', 'dapo')
    stock, stock_rows = run_tiny(tiny_run_dir, tmp_path / 'dapo-stock', '--loss_type', 'dapo', disable=True)
    assert with_plugin.returncode == 0, _tail(with_plugin)
    assert stock.returncode == 0, _tail(stock)
    assert len(rows) == len(stock_rows) == 4
    assert [row['loss'] for row in rows] == [row['loss'] for row in stock_rows]
    assert [row['grad_norm'] for row in rows] == [row['grad_norm'] for row in stock_rows]
    assert not any(key.startswith('fipo/') for row in rows for key in row)


@trains_fipo
def test_disable_restores_stock_ms_swift(tiny_run_dir, tmp_path, fipo_run):
    result, rows = run_tiny(tiny_run_dir, tmp_path / 'stock', disable=True)
    GRPOTrainer = trainer_class()
    if not hasattr(GRPOTrainer, '_compute_fipo_influence'):
        # No native FIPO: stock ms-swift loads the model and fails at the first step, in its loss (no
        # branch computes a per-token loss for 'fipo': an UnboundLocalError, or 'Unknown loss type').
        assert result.returncode != 0 and rows == []
        assert 'model_parameter_info' in result.stdout + result.stderr
        assert "'per_token_loss'" in result.stderr or 'Unknown loss type: fipo' in result.stderr, _tail(result)
    elif hasattr(GRPOTrainer, '_setup_teacher'):
        # ms-swift >= 4.4 without the plugin: the false OPD-RL rejection users hit.
        assert result.returncode != 0
        assert "OPD-RL (teacher) does not support loss_type='fipo'" in result.stderr
    else:
        assert result.returncode == 0, _tail(result)
        assert all(key in rows[-1] for key in NATIVE_KEYS)
        assert not any(key in row for row in rows for key in PLUGIN_ONLY_KEYS)
        # Native FIPO and the plugin train the same first rollout identically: step 1 is on-policy for
        # both, so step 2 reuses the same rollout from the same weights, and its FIPO values agree.
        _, plugin_rows = fipo_run
        for native_row, plugin_row in zip(rows[:2], plugin_rows[:2], strict=False):
            for key in NATIVE_KEYS + ('loss',):
                assert plugin_row[key] == pytest.approx(native_row[key], rel=1e-4, abs=1e-6), (key, native_row)
        assert rows[1]['fipo/future_kl_mean'] != 0


@trains_fipo
@only_where(native_fipo_installed(), "without native FIPO the --fipo_* flags of the example are the plugin's own, and "
            '--external_plugins loads only after ms-swift has parsed (and rejected) them')
def test_external_plugins_route_works_without_activation(tiny_run_dir, tmp_path):
    plugin = subprocess.run([str(Path(sys.executable).parent / 'swift-fipo'), 'plugin-path'], capture_output=True,
                            text=True, check=True).stdout.strip()
    reward = str(REPO / 'examples' / 'tiny' / 'reward.py')
    result, rows = run_tiny(tiny_run_dir, tmp_path / 'plugin', '--external_plugins', reward, plugin, disable=True)
    assert result.returncode == 0, _tail(result)
    assert all(key in rows[-1] for key in PLUGIN_ONLY_KEYS)


@trains_fipo
def test_explicit_teacher_is_still_rejected(tiny_run_dir, tmp_path):
    if not hasattr(trainer_class(), '_setup_teacher'):  # before OPD-RL (4.4) there is no teacher to reject
        assert ms_swift_version() < (4, 4), 'ms-swift >= 4.4 without _setup_teacher: the teacher fix lost its hook'
        return
    result, _ = run_tiny(tiny_run_dir, tmp_path / 'teacher', '--teacher_model', str(tiny_run_dir / 'model'))
    assert result.returncode != 0
    assert "OPD-RL (teacher) does not support loss_type='fipo'" in result.stderr


def test_doctor_reports_the_active_hook():
    doctor = shutil.which('swift-fipo', path=str(Path(sys.executable).parent))
    result = subprocess.run([doctor, 'doctor'], capture_output=True, text=True, check=False)
    import importlib.metadata
    verdicts = dict(re.findall(r'^verdict: (.+?) is (computed by swift-fipo|NOT computed)', result.stdout, re.M))
    # One verdict per installed host; exit 0 only where every one is served.
    assert result.returncode == (0 if set(verdicts.values()) == {'computed by swift-fipo'} else 1), result.stdout
    # ms-swift: served, except where swift-fipo refuses fipo for this ms-swift's TRL (no rollout reuse).
    served = verdicts['`swift rlhf --loss_type fipo`'] == 'computed by swift-fipo'
    assert served == (REUSE_BROKEN is None), result.stdout
    # TRL (installed with ms-swift): FIPOGRPOTrainer serves trl >= 0.26 only (ms-swift 3.x installs 0.24).
    trl_version = tuple(int(part) for part in re.findall(r'\d+', importlib.metadata.version('trl'))[:2])
    trl_served = verdicts['swift_fipo.FIPOGRPOTrainer (trl)'] == 'computed by swift-fipo'
    assert trl_served == (trl_version >= (0, 26)), result.stdout
    assert f"ms-swift      {importlib.metadata.version('ms-swift')}" in result.stdout
    assert f'{TRAINER_MODULE}.GRPOTrainer: hooked' in result.stdout
    assert f'{PIPELINE_MODULE}.SwiftPipeline: hooked (--fipo_* flags' in result.stdout
    assert 'state         active' in result.stdout
    if not list(importlib.metadata.distributions(name='megatron-core')):
        assert 'megatron rlhf): unavailable: megatron-core is not installed' in result.stdout
    disabled = subprocess.run([doctor, 'doctor'], capture_output=True, text=True, check=False,
                              env={**os.environ, 'SWIFT_FIPO_DISABLE': '1'})
    # Before: doctor installed the hook itself, said "hooked" and exited 0 under SWIFT_FIPO_DISABLE=1.
    assert disabled.returncode == 1 and 'disabled by SWIFT_FIPO_DISABLE=1' in disabled.stdout
    assert ': hooked' not in disabled.stdout and 'not hooked: SWIFT_FIPO_DISABLE is set' in disabled.stdout
    assert 'Traceback' not in result.stderr + disabled.stderr


@trains_fipo
@pytest.mark.parametrize('flags, message', [
    (['--use_liger_kernel', 'true'], '--use_liger_kernel'),
    (['--fipo_decay_rate', '0'], '--fipo_decay_rate must be a number in [1/126, 2**24]'),
    # Used to pass, load the model and overflow at the first step (exp(100) is not a float32).
    (['--fipo_log_ratio_clamp', '100'], '--fipo_log_ratio_clamp must be None, or a number in (0, 88]'),
    (['--delta', '1.1'], '--delta must be > 1 + epsilon_high'),
    (['--fipo_preset', 'paper-70b'], '--fipo_preset must be one of swift, paper-32b, paper-7b'),
])
def test_bad_settings_fail_before_the_model_loads(tiny_run_dir, tmp_path, flags, message):
    result, rows = run_tiny(tiny_run_dir, tmp_path / 'bad', *flags)
    assert result.returncode != 0 and rows == []
    assert message in result.stderr, _tail(result)
    assert 'model_parameter_info' not in result.stdout + result.stderr
    # One line, as verl and OpenRLHF print theirs; before: a 20-line traceback through ms-swift's pipeline.
    assert 'Traceback' not in result.stderr, _tail(result)
    assert [line for line in result.stderr.splitlines() if message in line][0].startswith('ValueError: swift-fipo: ')


@trains_fipo
def test_plugin_flags_and_presets_on_the_command_line(tiny_run_dir, tmp_path):
    # The preset sets what is not given explicitly: delta 10 and the safeguards (explicit: the clip range
    # and the filter); --fipo_clip_high_only false is the 7B recipe's symmetric clip.
    result, rows = run_tiny(tiny_run_dir, tmp_path / 'preset', '--fipo_preset', 'paper-7b', '--fipo_clip_range', '0.2',
                            '--fipo_clip_high_only', 'false', '--fipo_filter_threshold', '12')
    assert result.returncode == 0, _tail(result)
    assert 'delta=10.0' in result.stdout + result.stderr  # ms-swift's own args show the preset's dual clip
    reuse = rows[1::2]
    assert all(row['fipo/influence_weight_min'] < 1 for row in reuse), reuse  # symmetric clip lets it go below 1
    assert all('fipo/dropped_response_ratio' in row and 'fipo/filtered_ratio' in row for row in rows)


@trains_fipo
def test_no_op_configuration_warns(tiny_run_dir, tmp_path):
    result, rows = run_tiny(tiny_run_dir, tmp_path / 'noop', '--num_iterations', '1', '--max_steps', '1')
    assert result.returncode == 0, _tail(result)
    assert result.stderr.count('[swift-fipo] WARNING: FIPO is a no-op here') == 1


@trains_fipo
def test_lora_run_applies_fipo(tiny_run_dir, tmp_path):
    result, rows = run_tiny(tiny_run_dir, tmp_path / 'lora', TUNER_FLAG, 'lora', '--lora_rank', '4',
                            '--target_modules', 'all-linear', '--learning_rate', '1e-2')
    assert result.returncode == 0, _tail(result)
    assert all(key in rows[-1] for key in PLUGIN_ONLY_KEYS)
    assert any(row['fipo/future_kl_mean'] != 0 for row in rows[1::2]), rows


@only_where(REUSE_BROKEN is not None,
            'this ms-swift and TRL reuse rollouts (the refusal is for ms-swift 4.0/4.1 with TRL >= 0.26)')
def test_fipo_is_refused_where_no_rollout_is_reused(tiny_run_dir, tmp_path):
    result, rows = run_tiny(tiny_run_dir, tmp_path / 'refused')
    assert result.returncode != 0 and rows == []
    assert 'none is reused' in result.stderr and 'ms-swift >= 4.2' in result.stderr, _tail(result)
    assert 'model_parameter_info' not in result.stdout + result.stderr
