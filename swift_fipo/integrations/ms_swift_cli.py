"""ms-swift command line: the plugin's own ``--fipo_*`` flags, presets, and validation before any model
loads.

ms-swift parses argv into its argument dataclass and rejects leftovers (``remaining_argv``). We wrap
``SwiftPipeline._parse_args`` (used by both ``swift rlhf`` and ``megatron rlhf``, in every worker
process) so that, before ms-swift parses:

* flags ms-swift's argument class does not know (``--fipo_preset``, the safeguards, and the native
  ``--fipo_*`` flags on an ms-swift without them) are taken out of argv and kept for the trainer hook;
* a preset's values for flags ms-swift does know are appended to argv unless given explicitly, so
  ms-swift's own arguments (and its logs) show the values in force;

and after it parses, a ``--loss_type fipo`` run is validated with errors naming the flag.

This module imports no torch: it runs while ms-swift is still parsing its arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional, Sequence

from swift_fipo.config import PRESETS, FIPOConfig

PIPELINE_MODULE = 'swift.pipelines.base'
SUPPORTED_RANGE = 'ms-swift >= 4.2.2'
# Trainer source files (relative to the swift package) whose loss calls the FIPO hook.
_TRAINER_FILES = {False: ('rlhf_trainers', 'grpo_trainer.py'), True: ('megatron', 'trainers', 'grpo_trainer.py')}
PRESET_FLAG = 'fipo_preset'
LOG_TOKENS_FLAG = 'fipo_log_tokens'
# FIPOConfig field -> ms-swift flag (without the dashes). Native ms-swift flags keep their names.
FLAG_NAMES = {
    'decay_rate': 'fipo_decay_rate',
    'clip_range': 'fipo_clip_range',
    'clip_high_only': 'fipo_clip_high_only',
    'safety_threshold': 'fipo_safety_threshold',
    'delta': 'delta',
    'filter_threshold': 'fipo_filter_threshold',
    'log_ratio_clamp': 'fipo_log_ratio_clamp',
    'sequence_drop': 'fipo_sequence_drop',
    'unclipped_weight_cap': 'fipo_weight_cap',
}
_FIELD_OF_FLAG = {flag: field for field, flag in FLAG_NAMES.items()}
_PATCH_MARK = '__swift_fipo_patch__'
_WARNED: set[str] = set()


@dataclasses.dataclass
class CommandLineSettings:
    """What the command line said about FIPO, beyond ms-swift's own parsed arguments."""

    preset: str = 'swift'
    plugin_values: dict[str, Any] = dataclasses.field(default_factory=dict)
    """FIPOConfig fields given by flags that ms-swift's argument class does not have."""
    explicit: set[str] = dataclasses.field(default_factory=set)
    """FIPOConfig fields the user set explicitly (with any flag)."""
    log_tokens: int = 0
    """``--fipo_log_tokens N``: completions per logging step whose per-token FIPO values are written out."""


# Set by the wrapped parser in this process; read by the trainer hook. None: no command line seen.
settings: Optional[CommandLineSettings] = None


def _parse_value(flag: str, text: str) -> Any:
    field = _FIELD_OF_FLAG[flag]
    if field in ('clip_high_only', 'sequence_drop'):
        lowered = text.strip().lower()
        if lowered not in ('true', 'false', '1', '0'):
            raise ValueError(f'swift-fipo: --{flag} must be true or false; got {text!r}.')
        return lowered in ('true', '1')
    if text.strip().lower() == 'none':
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f'swift-fipo: --{flag} must be a number or None; got {text!r}.') from None


def _split_flag(token: str) -> tuple[Optional[str], Optional[str]]:
    if not token.startswith('--'):
        return None, None
    name, _, value = token[2:].partition('=')
    return name.replace('-', '_'), (value if '=' in token else None)


def split_argv(argv: Sequence[str], known_fields: set[str]) -> tuple[list[str], CommandLineSettings]:
    """Take the plugin's flags out of ``argv`` and expand ``--fipo_preset``.

    ``known_fields`` are the argument names of ms-swift's argument class: flags among them stay in
    argv for ms-swift; the others are consumed here.
    """
    kept: list[str] = []
    found = CommandLineSettings()
    given: dict[str, Any] = {}
    index = 0
    while index < len(argv):
        token = argv[index]
        name, inline = _split_flag(token)
        if name not in (PRESET_FLAG, LOG_TOKENS_FLAG) and name not in _FIELD_OF_FLAG:
            kept.append(token)
            index += 1
            continue
        if inline is None:
            if index + 1 >= len(argv):
                raise ValueError(f'swift-fipo: --{name} needs a value.')
            value_text, step = argv[index + 1], 2
        else:
            value_text, step = inline, 1
        if name == LOG_TOKENS_FLAG:
            if not value_text.isdigit():
                raise ValueError(f'swift-fipo: --{LOG_TOKENS_FLAG} must be an integer >= 0; got {value_text!r}.')
            found.log_tokens = int(value_text)
        elif name == PRESET_FLAG:
            if value_text not in PRESETS:
                raise ValueError(f'swift-fipo: --{PRESET_FLAG} must be one of {", ".join(PRESETS)}; '
                                 f'got {value_text!r}.')
            found.preset = value_text
        else:
            field = _FIELD_OF_FLAG[name]
            given[field] = _parse_value(name, value_text)
            found.explicit.add(field)
            if name in known_fields:
                kept.extend(argv[index:index + step])
        index += step

    preset = PRESETS[found.preset]
    for field, flag in FLAG_NAMES.items():
        if field in given:
            value = given[field]
        elif found.preset != 'swift':
            value = getattr(preset, field)
        else:
            continue
        if flag in known_fields:
            if field not in given:  # the preset speaks through ms-swift's own argument
                kept.extend([f'--{flag}', _format(value)])
        else:
            found.plugin_values[field] = value
    return kept, found


def _format(value: Any) -> str:
    return 'None' if value is None else str(value).lower() if isinstance(value, bool) else repr(float(value))


def resolve_config(args: Any, found: Optional[CommandLineSettings] = None) -> FIPOConfig:
    """The FIPOConfig of a run: ms-swift's parsed arguments plus the plugin's own flags.

    A bad value raises ``ValueError`` naming the command-line flag and its allowed range.
    """
    found = found if found is not None else (settings or CommandLineSettings())
    base = PRESETS[found.preset]
    values = {}
    for field, flag in FLAG_NAMES.items():
        if field in found.plugin_values:
            values[field] = found.plugin_values[field]
        else:
            values[field] = getattr(args, flag, getattr(base, field))
    try:
        return FIPOConfig(**values)
    except ValueError as error:
        message = str(error)
        for field, flag in FLAG_NAMES.items():
            message = message.replace(f'FIPOConfig.{field} ', f'--{flag} ')
        raise ValueError(f'swift-fipo: {message}') from None


_LIGER_MESSAGE = ('swift-fipo: --loss_type fipo does not work with --use_liger_kernel true: the Liger loss path '
                  'never calls FIPO (the run would silently be DAPO). Drop --use_liger_kernel.')


def precheck_argv(argv: Sequence[str]) -> None:
    """Refuse what argv alone shows to be impossible, before ms-swift's own argument checks run."""
    values = {}
    for index, token in enumerate(argv):
        name, inline = _split_flag(token)
        if name in ('loss_type', 'use_liger_kernel'):
            value = inline if inline is not None else (argv[index + 1] if index + 1 < len(argv) else '')
            values[name] = value.strip().lower()
    if values.get('loss_type') == 'fipo' and values.get('use_liger_kernel') in ('true', '1'):
        raise ValueError(_LIGER_MESSAGE)


def validate_run(args: Any, config: FIPOConfig) -> None:
    """Refuse ``--loss_type fipo`` settings that cannot work; warn (once, rank 0) about no-ops."""
    if getattr(args, 'use_liger_kernel', False):
        raise ValueError(_LIGER_MESSAGE)
    teacher = [flag for flag in ('teacher_model', 'teacher_model_server') if getattr(args, flag, None)]
    if teacher:
        raise ValueError(f'swift-fipo: --loss_type fipo cannot use a teacher (--{teacher[0]} is set): FIPO needs '
                         'a per-sequence advantage, and OPD-RL replaces it with a per-token teacher signal.')
    epsilon = getattr(args, 'epsilon', None)
    epsilon_high = getattr(args, 'epsilon_high', None)
    epsilon_high = epsilon_high if epsilon_high is not None else epsilon
    if epsilon_high is not None:
        for field in ('delta', 'filter_threshold'):
            value = getattr(config, field)
            if value is not None and value <= 1 + epsilon_high:
                raise ValueError(f'swift-fipo: --{FLAG_NAMES[field]} must be > 1 + epsilon_high = '
                                 f'{1 + epsilon_high:g} (the PPO clip already bounds ratios up to there); '
                                 f'got {value:g}.')
    iterations = getattr(args, 'num_iterations', 1) or 1
    steps = getattr(args, 'steps_per_generation', None)
    accumulation = getattr(args, 'gradient_accumulation_steps', None)
    if iterations == 1 and (steps is None or accumulation is None or steps == accumulation):
        warn_once('FIPO is a no-op here: every rollout is trained on once and on-policy (num_iterations 1, '
                  'steps_per_generation == gradient_accumulation_steps), so log pi_new == log pi_old, '
                  'Future-KL is 0 and the loss equals DAPO. Use --num_iterations 2 or a larger '
                  '--steps_per_generation.')
    if getattr(args, 'importance_sampling_level', 'token') == 'sequence':
        warn_once('--importance_sampling_level sequence: the filter and the safety rule test one ratio per '
                  'response, so they act on whole responses; Future-KL still uses per-token log-ratios.')


def installed_version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def unsupported_message(trainer_name: str) -> str:
    installed = installed_version('ms-swift') or '(unknown)'
    return (f'swift-fipo: --loss_type fipo needs {SUPPORTED_RANGE}, whose {trainer_name} has the '
            f'_compute_fipo_influence hook; installed: ms-swift {installed}. '
            f"Upgrade with: pip install 'ms-swift>=4.2.2'")


def check_trainer_has_hook(megatron: bool, swift_root: Optional[Path] = None) -> None:
    """Refuse fipo at argument-parse time when the GRPO trainer this run will use has no FIPO hook.

    The trainer's source file is read, not imported: importing ``swift.megatron`` has side effects.
    """
    if swift_root is None:
        spec = importlib.util.find_spec('swift')
        swift_root = Path(spec.origin).parent if spec is not None and spec.origin else Path('/nonexistent')
    source_file = swift_root.joinpath(*_TRAINER_FILES[megatron])
    try:
        source = source_file.read_text()
    except OSError:
        source = ''
    if 'def _compute_fipo_influence' not in source:
        raise RuntimeError(unsupported_message('MegatronGRPOTrainer' if megatron else 'GRPOTrainer'))


def warn_once(message: str) -> None:
    if message in _WARNED or int(os.environ.get('RANK', '0')) != 0:
        return
    _WARNED.add(message)
    sys.stderr.write(f'[swift-fipo] WARNING: {message}\n')


def _argument_names(args_class: type) -> set[str]:
    return {field.name for field in dataclasses.fields(args_class)} if dataclasses.is_dataclass(args_class) else set()


def _with_fipo_flags(parse_args: Callable[..., Any]) -> Callable[..., Any]:

    @functools.wraps(parse_args)
    def parse_args_with_fipo(self: Any, args: Any = None) -> Any:
        global settings
        args_class = getattr(self, 'args_class', None)
        if args_class is None or isinstance(args, args_class) or not isinstance(args, (list, tuple, type(None))):
            return parse_args(self, args)
        argv = list(sys.argv[1:] if args is None else args)
        precheck_argv(argv)
        argv, found = split_argv(argv, _argument_names(args_class))
        parsed = parse_args(self, argv)
        if getattr(parsed, 'loss_type', None) == 'fipo':
            check_trainer_has_hook(megatron='megatron' in type(parsed).__module__)
            config = resolve_config(parsed, found)
            validate_run(parsed, config)
            settings = found
        elif found.explicit or found.preset != 'swift' or found.log_tokens:
            warn_once(f'--fipo_* flags are ignored: --loss_type is {getattr(parsed, "loss_type", None)!r}, not fipo.')
        return parsed

    setattr(parse_args_with_fipo, _PATCH_MARK, True)
    return parse_args_with_fipo


def patch_pipeline_module(module: ModuleType) -> bool:
    """Wrap ``SwiftPipeline._parse_args`` in ms-swift's pipeline base module; idempotent."""
    pipeline = getattr(module, 'SwiftPipeline', None)
    parse_args = getattr(pipeline, '_parse_args', None)
    if parse_args is None:
        return False
    if not getattr(parse_args, _PATCH_MARK, False):
        pipeline._parse_args = _with_fipo_flags(parse_args)
    return True
