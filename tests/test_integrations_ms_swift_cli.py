"""The plugin's command-line flags: argv splitting, presets, validation (pure), and the real
`swift rlhf` refusing bad settings before any model loads."""

from __future__ import annotations

import sys
import warnings
from types import SimpleNamespace

import pytest

from conftest import need

from swift_fipo import FIPOConfig
from swift_fipo.config import PRESETS
from swift_fipo.integrations import ms_swift_cli as cli
from swift_fipo.integrations.contract import FIPOWarning

NATIVE = {'loss_type', 'delta', 'fipo_decay_rate', 'fipo_clip_range', 'fipo_clip_high_only', 'fipo_safety_threshold'}
OLD = {'loss_type', 'delta'}  # an argument class without ms-swift's native fipo flags


def _args(**values):
    base = dict(loss_type='fipo', delta=None, fipo_decay_rate=32.0, fipo_clip_range=0.2, fipo_clip_high_only=True,
                fipo_safety_threshold=4.0, epsilon=0.2, epsilon_high=None, num_iterations=2,
                steps_per_generation=1, gradient_accumulation_steps=1, importance_sampling_level='token')
    return SimpleNamespace(**{**base, **values})


def _config(argv, fields=NATIVE):
    return cli.split_argv(argv, fields).settings().config


def test_plain_command_line_keeps_its_values():
    argv = ['--loss_type', 'fipo', '--fipo_decay_rate', '16', '--delta=3']
    found = cli.split_argv(argv, NATIVE)
    assert found.argv == ['--loss_type', 'fipo', '--fipo_decay_rate', '16.0', '--delta', '3.0']
    assert found.preset == 'swift' and found.explicit == {'decay_rate': 16.0, 'delta': 3.0}


def test_preset_fills_what_was_not_given_and_explicit_flags_win():
    argv = ['--loss_type', 'fipo', '--fipo_preset', 'paper-7b', '--fipo_safety_threshold=5', '--fipo_filter_threshold',
            '20']
    found = cli.split_argv(argv, NATIVE)
    assert found.argv[:2] == ['--loss_type', 'fipo']
    handed_to_swift = dict(zip(found.argv[2::2], found.argv[3::2]))
    assert handed_to_swift == {'--fipo_decay_rate': '32.0', '--fipo_clip_range': '0.2',
                               '--fipo_clip_high_only': 'false', '--fipo_safety_threshold': '5.0', '--delta': '10.0'}
    assert found.settings().config == FIPOConfig.from_preset('paper-7b', safety_threshold=5.0, filter_threshold=20.0)


def test_flags_unknown_to_ms_swift_are_consumed_by_the_plugin():
    argv = ['--fipo_decay_rate', '8', '--fipo_clip_high_only', 'false', '--fipo_clip_range', 'None', '--seed', '1']
    found = cli.split_argv(argv, OLD)
    assert found.argv == ['--seed', '1']
    assert found.explicit == {'decay_rate': 8.0, 'clip_high_only': False, 'clip_range': None}
    config = found.settings().config
    assert (config.decay_rate, config.clip_high_only, config.clip_range) == (8.0, False, None)


@pytest.mark.parametrize('argv', [
    ['--fipo_preset', 'paper-7b', '--fipo_safety', '5'],  # a prefix, as argparse accepts it
    ['--fipo_safety=5', '--fipo_preset=paper-7b'],
    ['--fipo-safety-threshold', '5', '--fipo_preset', 'paper-7b'],
    ['--fipo_preset', 'paper-7b', '--fipo_safety_threshold', '2', '--fipo_safety_thr', '5'],  # the last wins
])
@pytest.mark.parametrize('fields', [NATIVE, OLD])
def test_explicit_beats_the_preset_however_spelled(argv, fields):
    found = cli.split_argv(argv, fields)
    assert found.settings().config.safety_threshold == 5.0
    # What ms-swift parses says the same: the flag appears once, with the explicit value.
    if 'fipo_safety_threshold' in fields:
        assert [token for token in found.argv if 'safety' in token] == ['--fipo_safety_threshold']
        assert found.argv[found.argv.index('--fipo_safety_threshold') + 1] == '5.0'


@pytest.mark.parametrize('argv, field, value', [
    (['--fipo_clip_high_only', 'yes'], 'clip_high_only', True),
    (['--fipo_clip_high_only', 'No'], 'clip_high_only', False),
    (['--fipo_clip_high_only', '--seed', '1'], 'clip_high_only', True),  # a bare boolean is true
    (['--no_fipo_clip_high_only'], 'clip_high_only', False),
    (['--fipo_sequence_drop', 'y', '--delta', '5'], 'sequence_drop', True),
    (['--fipo_clip_range', 'None'], 'clip_range', None),
    (['--fipo_safety_threshold', 'none'], 'safety_threshold', None),
    (['--delta', '5', '--delta', 'None'], 'delta', None),
])
def test_values_read_as_documented(argv, field, value):
    assert getattr(_config(argv), field) == value
    assert getattr(_config(argv, OLD), field) == value


def test_values_ms_swift_cannot_say_are_kept_by_the_plugin():
    found = cli.split_argv(['--fipo_clip_range', 'None', '--fipo_safety_threshold', 'None', '--delta', 'None'], NATIVE)
    # ms-swift's parser has no None for numbers: clip range 0 also means no clip; None thresholds keep
    # ms-swift's defaults in its own arguments while the plugin's config has None.
    assert found.argv == ['--fipo_clip_range', '0']
    config = found.settings().config
    assert (config.clip_range, config.safety_threshold, config.delta) == (None, None, None)


def test_ambiguous_prefixes_are_left_to_ms_swift():
    found = cli.split_argv(['--fipo_clip', '0.3'], NATIVE)  # fipo_clip_range or fipo_clip_high_only
    assert found.argv == ['--fipo_clip', '0.3'] and found.explicit == {}


@pytest.mark.parametrize('argv, message', [
    (['--fipo_preset', 'paper-70b'], '--fipo_preset must be one of swift, paper-32b, paper-7b'),
    (['--fipo_sequence_drop', 'maybe'], '--fipo_sequence_drop must be true or false'),
    (['--fipo_weight_cap', 'ten'], '--fipo_weight_cap must be a number or None'),
    (['--fipo_filter_threshold'], '--fipo_filter_threshold needs a value'),
    (['--fipo_log_tokens', '-1'], '--fipo_log_tokens must be an integer >= 0'),
    (['--fipo_log_tokens', '\u00b3'], '--fipo_log_tokens must be an integer >= 0'),  # superscript 3: isdigit()
    (['--fipo_log_tokens', '\u0663'], '--fipo_log_tokens must be an integer >= 0'),  # Arabic-Indic 3
])
def test_malformed_flags_are_named(argv, message):
    with pytest.raises(ValueError, match=message):
        cli.split_argv(argv, NATIVE)


@pytest.mark.parametrize('argv, message', [
    (['--fipo_decay_rate', '0'], r'--fipo_decay_rate must be a number in \[1/126, 2\*\*24\]'),
    (['--fipo_clip_range', '1.5', '--fipo_clip_high_only', 'false'], r'--fipo_clip_range must be \[0, 1\)'),
    (['--fipo_safety_threshold', '0'], r'--fipo_safety_threshold must be None, or a number in \(0, '),
])
def test_bad_native_values_name_the_flag(argv, message):
    with pytest.raises(ValueError, match=message):
        _config(argv)


@pytest.mark.parametrize('values, message', [
    (dict(use_liger_kernel=True), '--use_liger_kernel'),
    (dict(teacher_model='/some/model'), '--teacher_model is set'),
    (dict(delta=1.2), r'--delta must be > 1 \+ epsilon_high = 1.2'),
    (dict(delta=1.25, epsilon_high=0.28), r'--delta must be > 1 \+ epsilon_high = 1.28'),
])
def test_run_validation_refuses(values, message):
    args = _args(**values)
    with pytest.raises(ValueError, match=message):
        cli.validate_run(args, cli.config_from_arguments(args))


def test_filter_threshold_is_checked_against_epsilon_high():
    with pytest.raises(ValueError, match='--fipo_filter_threshold must be > 1 \\+ epsilon_high'):
        cli.validate_run(_args(), FIPOConfig(filter_threshold=1.1))


def _warnings_of(args) -> list[str]:
    """The FIPO warnings two validations of ``args`` show, in a process that silences other warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()  # as in a fresh process: nothing shown yet
        warnings.simplefilter('ignore')  # as hosts do; FIPO's own warnings must still show
        for _ in range(2):
            cli.validate_run(args, cli.config_from_arguments(args))
    return [str(warning.message) for warning in caught if issubclass(warning.category, FIPOWarning)]


@pytest.mark.parametrize('values, expected', [
    (dict(num_iterations=1, steps_per_generation=4, gradient_accumulation_steps=4), 'FIPO is a no-op'),
    (dict(num_iterations=2), None),
    (dict(num_iterations=1, steps_per_generation=8, gradient_accumulation_steps=4), None),
    (dict(importance_sampling_level='sequence'), '--importance_sampling_level sequence:'),
    (dict(importance_sampling_level='sequence_token'), '--importance_sampling_level sequence_token:'),
])
def test_warnings_once(values, expected, monkeypatch):
    monkeypatch.delenv('RANK', raising=False)
    shown = _warnings_of(_args(**values))
    if expected is None:
        assert shown == []
    else:
        assert sum(expected in message for message in shown) == 1
        assert all(message.startswith('[swift-fipo] WARNING: ') for message in shown)


def test_warnings_only_on_rank_zero(monkeypatch):
    monkeypatch.setenv('RANK', '1')
    assert _warnings_of(_args(num_iterations=1)) == []


def test_every_config_field_has_a_flag():
    assert set(cli.FLAG_NAMES) == set(FIPOConfig.help())
    assert len(set(cli.FLAG_NAMES.values())) == len(cli.FLAG_NAMES)
    assert set(PRESETS) == {'swift', 'paper-32b', 'paper-7b'}


@pytest.mark.parametrize('argv, refused', [(['--loss_type', 'fipo', '--use_liger_kernel', 'true'], True),
                                           (['--use_liger_kernel=True', '--loss_type=fipo'], True),
                                           (['--use_liger', 'yes', '--loss', 'fipo'], True),
                                           (['--loss_type', 'fipo', '--use_liger_kernel'], True),
                                           (['--loss_type', 'dapo', '--use_liger_kernel', 'true'], False),
                                           (['--loss_type', 'fipo', '--use_liger_kernel', 'false'], False),
                                           # A value is never read as an option, whatever it looks like.
                                           (['--loss_type', 'fipo', '--model', 'x-use-liger-kernel', 'true'], False)])
@pytest.mark.parametrize('swift_fields', [NATIVE | {'use_liger_kernel'}, frozenset()], ids=['native', 'none-known'])
def test_liger_is_refused_from_argv(argv, refused, swift_fields):
    if refused:
        with pytest.raises(ValueError, match='--use_liger_kernel'):
            cli.precheck_argv(argv, swift_fields)
    else:
        cli.precheck_argv(argv, swift_fields)


def test_log_tokens_flag_is_consumed():
    found = cli.split_argv(['--fipo_log_tokens=3', '--seed', '1'], NATIVE)
    assert found.argv == ['--seed', '1'] and found.settings().capture_completions == 3
    assert cli.split_argv(['--seed', '1'], NATIVE).settings().capture_completions == 0  # off unless asked


@pytest.mark.parametrize('fields', [NATIVE, OLD])
def test_a_negated_boolean_leaves_the_next_flag_alone(fields):
    found = cli.split_argv(['--no_fipo_clip_high_only', '--seed', '1', '--loss_type', 'fipo'], fields)
    assert found.settings().config.clip_high_only is False
    assert found.argv[:4] == ['--seed', '1', '--loss_type', 'fipo']


@pytest.mark.parametrize('module, megatron', [('swift.arguments.rlhf_args', False),
                                              ('swift.megatron.arguments.megatron_args', True)])
def test_parse_hook_checks_the_trainer_of_the_run(monkeypatch, module, megatron):
    """`swift rlhf` and `megatron rlhf` train with different GRPO trainers: the parse-time check reads
    the one whose arguments were parsed."""
    checked = []
    monkeypatch.setattr(cli, 'check_trainer_has_hook', lambda megatron: checked.append(megatron))
    arguments = type('RLHFArguments', (), {'__module__': module})
    parsed = arguments()
    vars(parsed).update(vars(_args()))
    parse = cli.with_fipo_flags(lambda self, argv: parsed)
    assert parse(SimpleNamespace(args_class=arguments), ['--loss_type', 'fipo']) is parsed
    assert checked == [megatron]


@pytest.mark.parametrize('megatron', [False, True])
def test_trainer_without_hook_is_refused_at_parse_time(tmp_path, megatron):
    # A stand-in ms-swift tree whose GRPO trainers have neither native FIPO nor a DAPO loss (< 3.11).
    for parts in (('rlhf_trainers', 'grpo_trainer.py'), ('megatron', 'trainers', 'grpo_trainer.py')):
        path = tmp_path.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('class GRPOTrainer:\n    def _compute_loss(self): ...\n')
    with pytest.raises(RuntimeError, match=r'--loss_type fipo needs ms-swift >= 3\.11 \(megatron rlhf: >= 4\.2\.2\)'):
        cli.check_trainer_has_hook(megatron, swift_root=tmp_path)
    with pytest.raises(RuntimeError, match='Upgrade with'):
        cli.check_trainer_has_hook(megatron, swift_root=tmp_path / 'missing')


@pytest.mark.ms_swift
@pytest.mark.parametrize('megatron', [False, True])
def test_installed_ms_swift_trainers_have_the_hook(megatron):
    need('swift', 'ms-swift')
    from swift_fipo.integrations.ms_swift_layout import native_fipo_installed
    if megatron and not native_fipo_installed():
        # Before native FIPO only the HF trainer is served.
        with pytest.raises(RuntimeError, match='megatron rlhf: >= 4.2.2'):
            cli.check_trainer_has_hook(megatron)
    else:
        cli.check_trainer_has_hook(megatron)


@pytest.mark.parametrize('swift_advances, trl_advances', [(True, True), (True, False), (False, True)])
def test_a_step_counter_advanced_twice_is_refused(tmp_path, swift_advances, trl_advances):
    # Stand-in sources: ms-swift 4.0/4.1's _prepare_inputs advances the counter itself; TRL >= 0.26 does
    # it again in training_step. Together no rollout is ever reused.
    advance = '        self._step += 1\n'
    swift_file = tmp_path / 'swift' / 'rlhf_trainers' / 'grpo_trainer.py'
    trl_file = tmp_path / 'trl' / 'trainer' / 'grpo_trainer.py'
    for path in (swift_file, trl_file):
        path.parent.mkdir(parents=True)
    swift_file.write_text(
        'class GRPOTrainer:\n'
        '    def _prepare_inputs(self, batch):\n' + (advance if swift_advances else '') + '        return batch\n'
        '    def _compute_loss_and_metrics(self, model, inputs):\n'
        '        per_token_logps, _ = self._get_per_token_logps_and_entropies(model, inputs)\n'
        "        advantages = inputs['advantages']\n"
        "        if self.loss_type in ['grpo', 'bnpo', 'dr_grpo', 'dapo']:\n"
        '            per_token_loss1 = per_token_logps * advantages.unsqueeze(1)\n')
    trl_file.write_text('class GRPOTrainer:\n    def training_step(self, model, inputs):\n'
                        + (advance if trl_advances else '') + '        return 0\n')
    from swift_fipo.integrations.ms_swift_layout import rollout_reuse_broken
    reason = rollout_reuse_broken(swift_root=tmp_path / 'swift', trl_root=tmp_path / 'trl')
    if swift_advances and trl_advances:
        assert 'none is reused' in reason
    else:
        assert reason is None


def test_parse_hook_reads_the_command_line_when_given_no_list(monkeypatch):
    """ms-swift calls _parse_args(None) for a real command line: the flags come from sys.argv[1:]."""
    from swift_fipo.integrations.contract import settings_of
    monkeypatch.setattr(cli, 'check_trainer_has_hook', lambda megatron: None)
    monkeypatch.setattr(sys, 'argv', ['swift', '--fipo_preset', 'paper-7b', '--loss_type', 'fipo'])
    arguments = type('RLHFArguments', (), {'__module__': 'swift.arguments.rlhf_args'})
    parsed = arguments()
    vars(parsed).update(vars(_args()))
    seen = []
    parse = cli.with_fipo_flags(lambda self, argv: seen.append(argv) or parsed)
    assert parse(SimpleNamespace(args_class=arguments), None) is parsed
    assert seen == [['--loss_type', 'fipo']]  # the plugin's flag taken off, ms-swift's left
    assert settings_of(parsed).config == PRESETS['paper-7b']


@pytest.mark.parametrize('argv, warned', [(['--loss_type', 'dapo', '--fipo_decay_rate', '16'], True),
                                          (['--loss_type', 'dapo', '--fipo_preset', 'paper-7b'], True),
                                          (['--loss_type', 'dapo', '--fipo_log_tokens', '2'], True),
                                          (['--loss_type', 'dapo'], False)])
def test_fipo_flags_without_the_fipo_loss_warn(monkeypatch, argv, warned):
    monkeypatch.setattr(cli, 'check_trainer_has_hook', lambda megatron: None)
    arguments = type('RLHFArguments', (), {'__module__': 'swift.arguments.rlhf_args'})
    parsed = arguments()
    vars(parsed).update(vars(_args(loss_type='dapo')))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        cli.with_fipo_flags(lambda self, argv: parsed)(SimpleNamespace(args_class=arguments), argv)
    messages = [str(warning.message) for warning in caught if issubclass(warning.category, FIPOWarning)]
    assert any('--fipo_* flags are ignored' in message for message in messages) is warned
