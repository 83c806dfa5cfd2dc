"""The plugin's command-line flags: argv splitting, presets, validation (pure), and the real
`swift rlhf` refusing bad settings before any model loads."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import need

from swift_fipo import FIPOConfig
from swift_fipo.config import PRESETS
from swift_fipo.integrations.messages import FIPOWarning
from swift_fipo.integrations.ms_swift import arguments as cli

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
    handed_to_swift = dict(zip(found.argv[2::2], found.argv[3::2], strict=False))
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


@pytest.mark.parametrize('token, candidates', [
    ('--fipo_clip', '--fipo_clip_high_only, --fipo_clip_range'),
    ('--fipo_s', '--fipo_safety_threshold, --fipo_sequence_drop'),  # ms-swift logged 0.5, FIPO used 4.0
    ('--fipo', None),  # every --fipo_x has its --fipo-x twin: always ambiguous to argparse
    ('--fipo_s=0.5', '--fipo_safety_threshold, --fipo_sequence_drop'),
])
@pytest.mark.parametrize('fields', [NATIVE, OLD])
def test_an_ambiguous_prefix_is_refused_naming_every_candidate(token, candidates, fields):
    with pytest.raises(ValueError, match=f'{token.partition("=")[0]} is ambiguous: it could be ') as refused:
        cli.split_argv([token, '0.5'] if '=' not in token else [token], fields)
    if candidates is not None:
        assert f'could be {candidates}.' in str(refused.value)


@pytest.mark.parametrize('argv, expected', [
    (['--loss_type', 'dapo', '--fipo_preset', 'paper-7b'], ['--loss_type', 'dapo']),
    (['--fipo_preset=paper-7b', '--loss_type=dapo', '--delta', '3'], ['--loss_type=dapo', '--delta', '3.0']),
    (['--loss_type', 'grpo', '--fipo_preset', 'paper-32b', '--fipo_decay_rate', '8'],
     ['--loss_type', 'grpo', '--fipo_decay_rate', '8.0']),
    (['--fipo_preset', 'paper-7b'], []),  # no --loss_type: ms-swift's default, not fipo
])
def test_a_preset_reaches_ms_swift_only_in_a_fipo_run(argv, expected):
    # An A/B baseline (--loss_type dapo) must not silently get the preset's dual clip (delta 10).
    assert cli.split_argv(argv, NATIVE).argv == expected


def test_a_mixed_spelling_is_not_a_flag_as_argparse_sees_it():
    # argparse registers --fipo_safety_threshold and --fipo-safety-threshold only: a mixed spelling is an
    # unknown option, left to ms-swift (which refuses it as remaining_argv) rather than read as 5.
    found = cli.split_argv(['--fipo_safety-threshold', '5'], NATIVE)
    assert found.argv == ['--fipo_safety-threshold', '5'] and found.explicit == {}


@pytest.mark.parametrize('value', ['-1e5', '-inf'])
def test_a_value_argparse_reads_as_an_option_is_refused_with_the_way_out(value):
    with pytest.raises(ValueError, match=f'--fipo_safety_threshold needs a value: argparse reads {value!r} as an '
                                         f'option, not a number; write --fipo_safety_threshold={value}'):
        cli.split_argv(['--fipo_safety_threshold', value], NATIVE)
    assert cli.split_argv([f'--fipo_weight_cap={value}'], NATIVE).explicit == {'unclipped_weight_cap': float(value)}


@pytest.mark.parametrize('rlhf_type', ['dpo', 'kto', 'gkd'])
def test_fipo_needs_grpo(rlhf_type):
    with pytest.raises(ValueError, match=f'--loss_type fipo is a GRPO loss: it needs --rlhf_type grpo; got '
                                         f'--rlhf_type {rlhf_type}'):
        cli.check_rlhf_type(_args(rlhf_type=rlhf_type))
    cli.check_rlhf_type(_args(rlhf_type='grpo'))


def _swift_parser_with_plugin_options():
    """ms-swift's own parser for its RLHF arguments (built as ms-swift builds it), with the plugin's options
    added as HfArgumentParser adds fields: the union argparse would read argv against."""
    import importlib

    import swift.utils
    from transformers import HfArgumentParser

    from swift_fipo.integrations.ms_swift.layout import module_path
    args_class = importlib.import_module(module_path('swift.pipelines.base')).SwiftPipeline  # ensures the import
    try:
        from swift.arguments import RLHFArguments
    except ImportError:
        from swift.llm import RLHFArguments
    del args_class
    patch = sys.modules[swift.utils.parse_args.__module__]._patch_get_type_hints
    with patch():
        parser = HfArgumentParser([RLHFArguments])
    own = set(parser._option_string_actions)
    for text, argument in cli.plugin_options().strings.items():
        if text not in own:
            parser.add_argument(text, dest=f'plugin_{argument}', nargs='?')
    return RLHFArguments, parser


@pytest.mark.ms_swift
def test_option_strings_are_those_of_ms_swifts_parser():
    need('swift', 'ms-swift')
    args_class, parser = _swift_parser_with_plugin_options()
    ours = cli.ParserOptions.for_class(args_class) | cli.plugin_options()
    assert set(ours.strings) == set(parser._option_string_actions)


@pytest.mark.ms_swift
def test_every_prefix_of_every_flag_reads_as_ms_swifts_argparse_reads_it():
    """Every prefix of every option string of the plugin (and some of ms-swift's), bare and with ``=``,
    against the installed ms-swift's real parser (``_parse_optional``: argparse's own reading of a token)."""
    need('swift', 'ms-swift')
    args_class, parser = _swift_parser_with_plugin_options()
    ours = cli.ParserOptions.for_class(args_class) | cli.plugin_options()
    names = [*cli.plugin_options().strings, '--loss_type', '--use_liger_kernel', '--rlhf_type', '--delta', '--help']
    tokens = {text[:end] for text in names for end in range(3, len(text) + 1)}
    tokens |= {f'{token}=1' for token in list(tokens)}
    tokens |= {'-1', '-1.5', '-.5', '-1e5', '-inf', '--fipo_safety-threshold', '--fipo_s x', 'plain', '-'}
    parser.error = lambda message: (_ for _ in ()).throw(ValueError(message))  # argparse exits; raise instead
    checked = 0
    for token in sorted(tokens):
        try:
            expected = parser._parse_optional(token)
        except ValueError as error:
            assert 'ambiguous option' in str(error)
            with pytest.raises(ValueError, match='is ambiguous') as refused:
                ours.read(token)
            listed = str(error).split('could match ')[1].split(', ')
            assert f'could be {", ".join(sorted(listed))}.' in str(refused.value), token
            checked += 1
            continue
        flag = ours.read(token)
        if expected is None:
            assert flag is None, token
        elif expected[0] is None:  # an option argparse does not know
            assert flag == cli.Flag(None), token
        else:
            _, option_string, explicit = expected
            assert flag == cli.Flag(ours.strings[option_string], explicit), token
        checked += 1
    assert checked == len(tokens) > 500


PARSE_ONLY = """
import importlib, json, sys
from swift_fipo.integrations.ms_swift.layout import module_path
base = importlib.import_module(module_path('swift.pipelines.base'))
try:
    from swift.arguments import RLHFArguments
except ImportError:
    from swift.llm import RLHFArguments

class ParseOnly(base.SwiftPipeline):  # SwiftPipeline.__init__: _parse_args, then the checks; no model
    args_class = RLHFArguments

    def run(self):
        pass

results = []
for argv in json.loads(sys.argv[1]):
    try:
        args = ParseOnly(argv).args
        results.append({name: getattr(args, name, None) for name in ('loss_type', 'delta', 'rlhf_type')})
    except Exception as error:
        results.append({'error': f'{type(error).__name__}: {error}'})
print('PARSED ' + json.dumps(results, default=str))
"""


def parse_as_swift_rlhf(tiny_run_dir, work, argvs, env=None):
    """Each argv parsed by ms-swift's own pipeline start (``SwiftPipeline.__init__``), in one process."""
    import json
    import os
    import subprocess
    base = ['--model', str(tiny_run_dir / 'model'), '--model_type', 'qwen2', '--template', 'qwen', '--use_cpu',
            'true', '--dataset', str(tiny_run_dir / 'train.jsonl'), '--num_generations', '4',
            '--per_device_train_batch_size', '4', '--output_dir', str(work / 'output'), '--report_to', 'none']
    result = subprocess.run([sys.executable, '-c', PARSE_ONLY, json.dumps([base + argv for argv in argvs])],
                            capture_output=True, text=True, cwd=work, timeout=600,
                            env={**os.environ, **(env or {})})
    lines = [line for line in result.stdout.splitlines() if line.startswith('PARSED ')]
    assert lines, result.stdout[-2000:] + result.stderr[-4000:]
    return json.loads(lines[-1][len('PARSED '):])


@pytest.mark.ms_swift
def test_ms_swifts_own_parse_reads_what_fipo_reads(tiny_run_dir, tmp_path):
    need('swift', 'ms-swift')
    dapo, ambiguous, dpo, dpo_default = parse_as_swift_rlhf(tiny_run_dir, tmp_path, [
        ['--rlhf_type', 'grpo', '--loss_type', 'dapo', '--fipo_preset', 'paper-7b'],
        ['--rlhf_type', 'grpo', '--loss_type', 'fipo', '--fipo_s', '0.5'],
        ['--rlhf_type', 'dpo', '--loss_type', 'fipo'],
        ['--loss_type', 'fipo'],
    ])
    assert dapo == {'loss_type': 'dapo', 'delta': None, 'rlhf_type': 'grpo'}  # before: delta 10.0
    assert ambiguous['error'].startswith('ValueError: swift-fipo: --fipo_s is ambiguous: it could be ')
    assert 'needs --rlhf_type grpo; got --rlhf_type dpo' in dpo['error']
    assert 'needs --rlhf_type grpo; got --rlhf_type dpo' in dpo_default['error']


@pytest.mark.ms_swift
def test_the_explicit_route_refuses_bad_values_after_parsing(tiny_run_dir, tmp_path):
    """--external_plugins with the activation off: ms-swift imports the plugin inside its argument class,
    after _parse_args; the values are refused before the pipeline goes on (before: a ZeroDivisionError in
    the trainer's __init__, or a refusal inside the first loss step)."""
    need('swift', 'ms-swift')
    from swift_fipo.integrations.ms_swift.layout import native_fipo_installed
    plugin = str(Path(cli.__file__).resolve().parents[2] / 'plugin.py')  # swift_fipo/plugin.py
    grpo = ['--rlhf_type', 'grpo', '--loss_type', 'fipo', '--external_plugins', plugin]
    argvs = [grpo + ['--rlhf_type', 'dpo'], grpo + ['--delta', '1.1']]
    if native_fipo_installed():  # the --fipo_* flags are ms-swift's own only there
        argvs += [grpo + ['--fipo_decay_rate', '0'], grpo + ['--fipo_clip_range', '-1']]
    results = parse_as_swift_rlhf(tiny_run_dir, tmp_path, argvs, env={'SWIFT_FIPO_DISABLE': '1'})
    assert 'needs --rlhf_type grpo; got --rlhf_type dpo' in results[0]['error']
    assert '--delta must be > 1 + epsilon_high' in results[1]['error']
    if native_fipo_installed():
        assert '--fipo_decay_rate must be a number in [1/126, 2**24]' in results[2]['error']
        assert '--fipo_clip_range must be' in results[3]['error']


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
                                           (['--use_liger_', 'yes', '--loss_', 'fipo'], True),  # unique prefixes
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
    from swift_fipo.integrations.ms_swift.layout import native_fipo_installed
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
    from swift_fipo.integrations.ms_swift.layout import rollout_reuse_broken
    reason = rollout_reuse_broken(swift_root=tmp_path / 'swift', trl_root=tmp_path / 'trl')
    if swift_advances and trl_advances:
        assert 'none is reused' in reason
    else:
        assert reason is None


def test_parse_hook_reads_the_command_line_when_given_no_list(monkeypatch):
    """ms-swift calls _parse_args(None) for a real command line: the flags come from sys.argv[1:]."""
    from swift_fipo.integrations.settings import settings_of
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


ONE_LINE_PROGRAM = """
import sys
from swift_fipo.integrations.ms_swift.arguments import refusals_in_one_line
try:
    with refusals_in_one_line():
        raise ValueError('swift-fipo: --fipo_x must be caught')
except ValueError:
    pass  # caught by the caller: shortens nothing later
if sys.argv[1] == 'refusal':
    with refusals_in_one_line():
        raise ValueError('swift-fipo: --fipo_decay_rate must be a number')
raise ValueError('a real error of ms-swift')
"""


@pytest.mark.parametrize('case', ['refusal', 'other'])
def test_only_the_plugins_uncaught_refusal_is_shortened_to_one_line(case):
    import subprocess
    result = subprocess.run([sys.executable, '-c', ONE_LINE_PROGRAM, case], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    if case == 'refusal':
        assert result.stderr == 'ValueError: swift-fipo: --fipo_decay_rate must be a number\n'
    else:  # any other error keeps its traceback
        assert 'Traceback' in result.stderr and result.stderr.endswith('ValueError: a real error of ms-swift\n')
