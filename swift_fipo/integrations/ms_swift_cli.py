"""ms-swift command line: the plugin's ``--fipo_*`` flags, presets, and validation before any model loads.

ms-swift parses argv into its argument dataclass with argparse (through ``HfArgumentParser``) and
rejects leftovers (``remaining_argv``). The plugin wraps ``SwiftPipeline._parse_args`` (used by both
``swift rlhf`` and ``megatron rlhf``, in every worker process) and, before ms-swift parses:

* takes every FIPO flag out of argv, read the way argparse reads it: unique prefixes (``--fipo_safety``),
  ``--flag=value``, dashes for underscores, repeated flags (the last wins), bare booleans, and
  ``true/yes/1``-style boolean words;
* resolves the run's ``FIPOConfig`` once: the ``--fipo_preset``, then every flag given explicitly on
  top, and refuses bad values naming the flag and its allowed range;
* gives ms-swift back the values in force for the flags its argument class has (``--delta``, and the
  native ``--fipo_*`` on ms-swift >= 4.2.2), so its own code and logs see them;

and after it parses, validates a ``--loss_type fipo`` run against ms-swift's other arguments and
attaches the resolved ``RunSettings`` to the arguments the trainer is built from.

This module imports no torch: it runs while ms-swift is still parsing its arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from swift_fipo.config import PRESETS, FIPOConfig
from swift_fipo.integrations.contract import (RunSettings, attach_settings, installed_version, liger_refusal,
                                              on_policy_reason, resolve_config, settle_gloo_workers_at_exit, warn)

HOST = 'swift-fipo'
PIPELINE_MODULE = 'swift.pipelines.base'
SUPPORTED_RANGE = 'ms-swift >= 3.11 (megatron rlhf: >= 4.2.2)'
PRESET_FLAG = 'fipo_preset'
LOG_TOKENS_FLAG = 'fipo_log_tokens'
# FIPOConfig field -> ms-swift flag (without the dashes), from the fields' metadata.
FLAG_NAMES = FIPOConfig.flag_names()
_FIELD_OF_FLAG = {flag: field for field, flag in FLAG_NAMES.items()}
_BOOLEAN_FIELDS = {field.name for field in dataclasses.fields(FIPOConfig) if field.type in ('bool', bool)}
# HfArgumentParser's reading of boolean words.
_TRUE_WORDS, _FALSE_WORDS = ('yes', 'true', 't', 'y', '1'), ('no', 'false', 'f', 'n', '0')
# ms-swift's environment variable that replaces argv in Ray-launched processes.
_RAY_ARGV_ENV = 'RAY_SWIFT_ARGS'


@dataclasses.dataclass(frozen=True)
class CommandLine:
    """What the command line said about FIPO; ``argv`` is what ms-swift gets to parse."""

    argv: list[str]
    preset: str = 'swift'
    explicit: dict[str, Any] = dataclasses.field(default_factory=dict)
    """FIPOConfig fields the user gave explicitly (the last value of each)."""
    log_tokens: int = 0

    def settings(self) -> RunSettings:
        """Resolve the run's FIPO settings; a bad value raises ``ValueError`` naming its flag."""
        config = resolve_config(self.preset, self.explicit, lambda field: f'--{FLAG_NAMES[field]}', HOST)
        return RunSettings(config=config, capture_completions=self.log_tokens)


def _option_name(token: str, options: set[str]) -> tuple[Optional[str], Optional[str]]:
    """``(option, inline value)`` of an argv token, as argparse resolves it against ``options``.

    Dashes read as underscores; an unambiguous prefix names its option (argparse's ``allow_abbrev``).
    Not an option, or ambiguous: ``(None, None)`` (ms-swift's parser then reports it its own way).
    """
    if not token.startswith('--') or token == '--':
        return None, None
    name, equals, value = token[2:].partition('=')
    name = name.replace('-', '_')
    if name not in options:
        matches = [option for option in options if option.startswith(name)]
        if len(matches) != 1:
            return None, None
        name = matches[0]
    return name, (value if equals else None)


def _looks_like_a_value(token: str) -> bool:
    # argparse takes a following token as the value unless it looks like an option (negative numbers
    # are values: no ms-swift option looks like one).
    if not token.startswith('-'):
        return True
    try:
        float(token)
        return True
    except ValueError:
        return False


def _parse_boolean(flag: str, text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE_WORDS or word in _FALSE_WORDS:
        return word in _TRUE_WORDS
    raise ValueError(f'{HOST}: --{flag} must be true or false (also yes/no, 1/0); got {text!r}.')


def _parse_number(flag: str, text: str) -> Optional[float]:
    if text.strip().lower() == 'none':
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f'{HOST}: --{flag} must be a number or None; got {text!r}.') from None


def split_argv(argv: Sequence[str], swift_fields: set[str]) -> CommandLine:
    """Take every FIPO flag out of ``argv`` and hand ms-swift the values in force for its own fields.

    ``swift_fields`` are the argument names of ms-swift's argument class (used to resolve prefixes as
    its parser would, and to know which FIPO flags it has).
    """
    fipo_flags = {PRESET_FLAG, LOG_TOKENS_FLAG, *_FIELD_OF_FLAG}
    # HfArgumentParser also offers --no_<field> for booleans that default to True.
    negated = {f'no_{FLAG_NAMES[field]}': field for field in _BOOLEAN_FIELDS if getattr(FIPOConfig(), field)}
    options = swift_fields | fipo_flags | set(negated)
    kept: list[str] = []
    preset, log_tokens, explicit = 'swift', 0, {}
    index = 0
    while index < len(argv):
        name, inline = _option_name(argv[index], options)
        if name not in fipo_flags and name not in negated:
            kept.append(argv[index])
            index += 1
            continue
        if name in negated:
            explicit[negated[name]] = False
            index += 1
            continue
        field = _FIELD_OF_FLAG.get(name)
        following = argv[index + 1] if index + 1 < len(argv) else None
        if inline is not None:
            text, index = inline, index + 1
        elif following is not None and _looks_like_a_value(following):
            text, index = following, index + 2
        elif field in _BOOLEAN_FIELDS:  # a bare boolean flag means true, as in HfArgumentParser
            text, index = 'true', index + 1
        else:
            raise ValueError(f'{HOST}: --{name} needs a value.')
        if name == LOG_TOKENS_FLAG:
            digits = text.strip()
            if not (digits.isascii() and digits.isdigit()):  # '³'.isdigit() is True, int('³') raises
                raise ValueError(f'{HOST}: --{LOG_TOKENS_FLAG} must be an integer >= 0; got {text!r}.')
            log_tokens = int(text)
        elif name == PRESET_FLAG:
            if text not in PRESETS:
                raise ValueError(f'{HOST}: --{PRESET_FLAG} must be one of {", ".join(PRESETS)}; got {text!r}.')
            preset = text
        elif field in _BOOLEAN_FIELDS:
            explicit[field] = _parse_boolean(name, text)
        else:
            explicit[field] = _parse_number(name, text)

    in_force = PRESETS[preset] if preset != 'swift' else None
    for field, flag in FLAG_NAMES.items():
        if flag not in swift_fields or (field not in explicit and in_force is None):
            continue
        value = explicit[field] if field in explicit else getattr(in_force, field)
        text = _format_for_swift(field, value)
        if text is not None:
            kept.extend([f'--{flag}', text])
    return CommandLine(argv=kept, preset=preset, explicit=explicit, log_tokens=log_tokens)


def _format_for_swift(field: str, value: Any) -> Optional[str]:
    """The value as ms-swift's parser reads it; None where it cannot say it (its parser has no None for
    numbers: ``--delta``'s default is None, and clip range 0 means no clip as None does)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return '0' if field == 'clip_range' else None
    return repr(float(value))


def config_from_arguments(args: Any) -> FIPOConfig:
    """The FIPOConfig of a trainer built without the command-line hook: its own FIPO fields, ms-swift's
    defaults for the rest."""
    explicit = {field: getattr(args, flag) for field, flag in FLAG_NAMES.items() if hasattr(args, flag)}
    return resolve_config('swift', explicit, lambda field: f'--{FLAG_NAMES[field]}', HOST)


def _argv_value(argv: Sequence[str], option: str, options: set[str]) -> Optional[str]:
    """The last value argv gives ``option`` (prefixes and ``=`` read as argparse does), or None."""
    value = None
    for index, token in enumerate(argv):
        name, inline = _option_name(token, options)
        if name == option:
            value = inline if inline is not None else (argv[index + 1] if index + 1 < len(argv) else 'true')
    return value


def precheck_argv(argv: Sequence[str], swift_fields: set[str] = frozenset()) -> None:
    """Refuse what argv alone shows to be impossible, before ms-swift's own argument checks run."""
    options = set(swift_fields) | {'loss_type', 'use_liger_kernel'}
    loss_type = (_argv_value(argv, 'loss_type', options) or '').strip().lower()
    liger = (_argv_value(argv, 'use_liger_kernel', options) or 'false').strip().lower()
    if loss_type == 'fipo' and liger in _TRUE_WORDS:
        raise ValueError(liger_refusal(HOST, '--use_liger_kernel true'))


def validate_run(args: Any, config: FIPOConfig) -> None:
    """Refuse ``--loss_type fipo`` settings that cannot work; warn (once, rank 0) about no-ops."""
    if getattr(args, 'use_liger_kernel', False):
        raise ValueError(liger_refusal(HOST, '--use_liger_kernel true'))
    teacher = [flag for flag in ('teacher_model', 'teacher_model_server') if getattr(args, flag, None)]
    if teacher:
        raise ValueError(f'{HOST}: --loss_type fipo cannot use a teacher (--{teacher[0]} is set): FIPO needs '
                         'a per-sequence advantage, and OPD-RL replaces it with a per-token teacher signal.')
    epsilon = getattr(args, 'epsilon', None)
    epsilon_high = getattr(args, 'epsilon_high', None)
    epsilon_high = epsilon_high if epsilon_high is not None else epsilon
    if epsilon_high is not None:
        for field in ('delta', 'filter_threshold'):
            value = getattr(config, field)
            if value is not None and value <= 1 + epsilon_high:
                raise ValueError(f'{HOST}: --{FLAG_NAMES[field]} must be > 1 + epsilon_high = '
                                 f'{1 + epsilon_high:g} (the PPO clip already bounds ratios up to there); '
                                 f'got {value:g}.')
    reason = on_policy_reason(getattr(args, 'num_iterations', 1), getattr(args, 'steps_per_generation', None),
                              getattr(args, 'gradient_accumulation_steps', None))
    if reason is not None:
        warn(reason)
    level = getattr(args, 'importance_sampling_level', 'token')
    if level in ('sequence', 'sequence_token'):  # both hand the loss one ratio per response (coef_1)
        warn(f'--importance_sampling_level {level}: the filter and the safety rule test one ratio per '
             'response, so they act on whole responses; Future-KL still uses per-token log-ratios.')


def unsupported_message(trainer_name: str) -> str:
    installed = installed_version('ms-swift') or '(unknown)'
    return (f'{HOST}: --loss_type fipo needs {SUPPORTED_RANGE}: this {trainer_name} has neither the '
            f'_compute_fipo_influence hook (ms-swift >= 4.2.2) nor a DAPO loss the plugin can reweight '
            f'(HF trainer, ms-swift >= 3.11); installed: ms-swift {installed}. '
            f"Upgrade with: pip install 'ms-swift>=4.2.2'")


def check_trainer_has_hook(megatron: bool, swift_root: Optional[Path] = None) -> None:
    """Refuse fipo at argument-parse time when the GRPO trainer this run will use has no FIPO hook.

    The trainer's source file is read, not imported: importing ``swift.megatron`` has side effects.
    """
    from swift_fipo.integrations.ms_swift_layout import rollout_reuse_broken, source_is_servable, trainer_source
    source = trainer_source(megatron, swift_root)
    if 'def _compute_fipo_influence' not in source and (megatron or not source_is_servable(source)):
        raise RuntimeError(unsupported_message('MegatronGRPOTrainer' if megatron else 'GRPOTrainer'))
    broken = None if megatron else rollout_reuse_broken(swift_root)
    if broken:
        raise RuntimeError(f"{HOST}: --loss_type fipo cannot act with ms-swift {installed_version('ms-swift')} and "
                           f"trl {installed_version('trl')}: {broken}. Use ms-swift >= 4.2 (ms-swift 4.1.x also "
                           f"trains with pip install 'trl==0.25.1' 'transformers==4.57.6', tested here).")


def _argument_names(args_class: type) -> set[str]:
    return {field.name for field in dataclasses.fields(args_class)} if dataclasses.is_dataclass(args_class) else set()


def with_fipo_flags(parse_args: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``SwiftPipeline._parse_args`` as the module docstring describes."""

    @functools.wraps(parse_args)
    def parse_args_with_fipo(self: Any, args: Any = None) -> Any:
        args_class = getattr(self, 'args_class', None)
        if args_class is None or isinstance(args, args_class) or not isinstance(args, (list, tuple, type(None))):
            return parse_args(self, args)
        ray_argv = os.environ.get(_RAY_ARGV_ENV)
        # ms-swift reads argv from this variable, when set, in place of the list it is given.
        argv = json.loads(ray_argv) if ray_argv else list(sys.argv[1:] if args is None else args)
        swift_fields = _argument_names(args_class)
        precheck_argv(argv, swift_fields)
        command_line = split_argv(argv, swift_fields)
        if ray_argv:
            os.environ[_RAY_ARGV_ENV] = json.dumps(command_line.argv)
        try:
            parsed = parse_args(self, command_line.argv)
        finally:
            if ray_argv:
                os.environ[_RAY_ARGV_ENV] = ray_argv
        if getattr(parsed, 'loss_type', None) == 'fipo':
            check_trainer_has_hook(megatron='megatron' in type(parsed).__module__)
            settings = command_line.settings()
            validate_run(parsed, settings.config)
            for arguments in (parsed, getattr(parsed, 'training_args', None)):
                if arguments is not None:
                    attach_settings(arguments, settings)
            settle_gloo_workers_at_exit()  # CPU runs: see the function
        elif command_line.explicit or command_line.preset != 'swift' or command_line.log_tokens:
            warn(f'--fipo_* flags are ignored: --loss_type is {getattr(parsed, "loss_type", None)!r}, not fipo.')
        return parsed

    return parse_args_with_fipo
