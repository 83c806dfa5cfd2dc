"""The plugin's command-line flags: argv splitting, presets, validation (pure), and the real
`swift rlhf` refusing bad settings before any model loads."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from swift_fipo import FIPOConfig
from swift_fipo.config import PRESETS
from swift_fipo.integrations import ms_swift_cli as cli

NATIVE = {'loss_type', 'delta', 'fipo_decay_rate', 'fipo_clip_range', 'fipo_clip_high_only', 'fipo_safety_threshold'}
OLD = {'loss_type', 'delta'}  # an argument class without ms-swift's native fipo flags


def _args(**values):
    base = dict(loss_type='fipo', delta=None, fipo_decay_rate=32.0, fipo_clip_range=0.2, fipo_clip_high_only=True,
                fipo_safety_threshold=4.0, epsilon=0.2, epsilon_high=None, num_iterations=2,
                steps_per_generation=1, gradient_accumulation_steps=1, importance_sampling_level='token')
    return SimpleNamespace(**{**base, **values})


def test_plain_command_line_is_untouched():
    argv = ['--loss_type', 'fipo', '--fipo_decay_rate', '16', '--delta=3']
    kept, found = cli.split_argv(argv, NATIVE)
    assert kept == argv
    assert found.preset == 'swift' and found.plugin_values == {} and found.explicit == {'decay_rate', 'delta'}


def test_preset_fills_what_was_not_given_and_explicit_flags_win():
    argv = ['--loss_type', 'fipo', '--fipo_preset', 'paper-7b', '--fipo_safety_threshold=5', '--fipo_filter_threshold',
            '20']
    kept, found = cli.split_argv(argv, NATIVE)
    assert kept[:3] == ['--loss_type', 'fipo', '--fipo_safety_threshold=5']
    appended = dict(zip(kept[3::2], kept[4::2]))
    assert appended == {'--fipo_decay_rate': '32.0', '--fipo_clip_range': '0.2', '--fipo_clip_high_only': 'false',
                        '--delta': '10.0'}
    assert found.plugin_values == {'filter_threshold': 20.0, 'log_ratio_clamp': 20.0, 'sequence_drop': True,
                                   'unclipped_weight_cap': 10.0}
    config = cli.resolve_config(_args(fipo_safety_threshold=5.0, fipo_clip_high_only=False, delta=10.0), found)
    assert config == FIPOConfig.from_preset('paper-7b', safety_threshold=5.0, filter_threshold=20.0)


def test_flags_unknown_to_ms_swift_are_consumed_by_the_plugin():
    argv = ['--fipo_decay_rate', '8', '--fipo_clip_high_only', 'false', '--fipo_clip_range', 'None', '--seed', '1']
    kept, found = cli.split_argv(argv, OLD)
    assert kept == ['--seed', '1']
    assert found.plugin_values == {'decay_rate': 8.0, 'clip_high_only': False, 'clip_range': None}
    config = cli.resolve_config(SimpleNamespace(delta=None), found)
    assert (config.decay_rate, config.clip_high_only, config.clip_range) == (8.0, False, None)


@pytest.mark.parametrize('argv, message', [
    (['--fipo_preset', 'paper-70b'], '--fipo_preset must be one of swift, paper-32b, paper-7b'),
    (['--fipo_sequence_drop', 'maybe'], '--fipo_sequence_drop must be true or false'),
    (['--fipo_weight_cap', 'ten'], '--fipo_weight_cap must be a number or None'),
    (['--fipo_filter_threshold'], '--fipo_filter_threshold needs a value'),
    (['--fipo_log_tokens', '-1'], '--fipo_log_tokens must be an integer >= 0'),
])
def test_malformed_flags_are_named(argv, message):
    with pytest.raises(ValueError, match=message):
        cli.split_argv(argv, NATIVE)


@pytest.mark.parametrize('values, message', [
    (dict(fipo_decay_rate=0.0), '--fipo_decay_rate must be a finite number > 0'),
    (dict(fipo_clip_range=1.5, fipo_clip_high_only=False), r'--fipo_clip_range must be \[0, 1\)'),
    (dict(fipo_safety_threshold=0.0), '--fipo_safety_threshold must be None, or a number > 0'),
])
def test_bad_native_values_name_the_flag(values, message):
    with pytest.raises(ValueError, match=message):
        cli.resolve_config(_args(**values), cli.CommandLineSettings())


@pytest.mark.parametrize('values, message', [
    (dict(use_liger_kernel=True), '--use_liger_kernel'),
    (dict(teacher_model='/some/model'), '--teacher_model is set'),
    (dict(delta=1.2), r'--delta must be > 1 \+ epsilon_high = 1.2'),
    (dict(delta=1.25, epsilon_high=0.28), r'--delta must be > 1 \+ epsilon_high = 1.28'),
])
def test_run_validation_refuses(values, message):
    args = _args(**values)
    with pytest.raises(ValueError, match=message):
        cli.validate_run(args, cli.resolve_config(args, cli.CommandLineSettings()))


def test_filter_threshold_is_checked_against_epsilon_high():
    found = cli.CommandLineSettings(plugin_values={'filter_threshold': 1.1})
    args = _args()
    with pytest.raises(ValueError, match='--fipo_filter_threshold must be > 1 \\+ epsilon_high'):
        cli.validate_run(args, cli.resolve_config(args, found))


@pytest.mark.parametrize('values, expected', [
    (dict(num_iterations=1, steps_per_generation=4, gradient_accumulation_steps=4), 'FIPO is a no-op'),
    (dict(num_iterations=2), None),
    (dict(num_iterations=1, steps_per_generation=8, gradient_accumulation_steps=4), None),
    (dict(importance_sampling_level='sequence'), '--importance_sampling_level sequence'),
])
def test_warnings_once(values, expected, capsys, monkeypatch):
    monkeypatch.setattr(cli, '_WARNED', set())
    monkeypatch.delenv('RANK', raising=False)
    args = _args(**values)
    for _ in range(2):
        cli.validate_run(args, cli.resolve_config(args, cli.CommandLineSettings()))
    err = capsys.readouterr().err
    if expected is None:
        assert err == ''
    else:
        assert err.count(expected) == 1


def test_warnings_only_on_rank_zero(capsys, monkeypatch):
    monkeypatch.setattr(cli, '_WARNED', set())
    monkeypatch.setenv('RANK', '1')
    args = _args(num_iterations=1)
    cli.validate_run(args, cli.resolve_config(args, cli.CommandLineSettings()))
    assert capsys.readouterr().err == ''


def test_every_config_field_has_a_flag():
    assert set(cli.FLAG_NAMES) == set(FIPOConfig.help())
    assert set(PRESETS) == {'swift', 'paper-32b', 'paper-7b'}


@pytest.mark.parametrize('argv, refused', [(['--loss_type', 'fipo', '--use_liger_kernel', 'true'], True),
                                           (['--use_liger_kernel=True', '--loss_type=fipo'], True),
                                           (['--loss_type', 'dapo', '--use_liger_kernel', 'true'], False),
                                           (['--loss_type', 'fipo', '--use_liger_kernel', 'false'], False)])
def test_liger_is_refused_from_argv(argv, refused):
    if refused:
        with pytest.raises(ValueError, match='--use_liger_kernel'):
            cli.precheck_argv(argv)
    else:
        cli.precheck_argv(argv)


def test_log_tokens_flag_is_consumed():
    kept, found = cli.split_argv(['--fipo_log_tokens=3', '--seed', '1'], NATIVE)
    assert kept == ['--seed', '1'] and found.log_tokens == 3


@pytest.mark.parametrize('megatron', [False, True])
def test_trainer_without_hook_is_refused_at_parse_time(tmp_path, megatron):
    # A stand-in ms-swift tree whose GRPO trainers predate FIPO (< 4.2.2; such releases import vLLM
    # eagerly and cannot be installed on this CPU machine).
    for parts in (('rlhf_trainers', 'grpo_trainer.py'), ('megatron', 'trainers', 'grpo_trainer.py')):
        path = tmp_path.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('class GRPOTrainer:\n    def _compute_loss(self): ...\n')
    with pytest.raises(RuntimeError, match=r'--loss_type fipo needs ms-swift >= 4\.2\.2'):
        cli.check_trainer_has_hook(megatron, swift_root=tmp_path)
    with pytest.raises(RuntimeError, match='Upgrade with'):
        cli.check_trainer_has_hook(megatron, swift_root=tmp_path / 'missing')


@pytest.mark.ms_swift
@pytest.mark.parametrize('megatron', [False, True])
def test_installed_ms_swift_trainers_have_the_hook(megatron):
    pytest.importorskip('swift')
    cli.check_trainer_has_hook(megatron)
