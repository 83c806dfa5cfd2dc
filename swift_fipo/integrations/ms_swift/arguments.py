"""ms-swift command line: the plugin's ``--fipo_*`` flags, presets, and validation before any model loads.

ms-swift parses argv into its argument dataclass with argparse (through ``HfArgumentParser``) and
rejects leftovers (``remaining_argv``). The plugin wraps ``SwiftPipeline._parse_args`` (used by both
``swift rlhf`` and ``megatron rlhf``, in every worker process) and, before ms-swift parses:

* takes every FIPO flag out of argv, read exactly as argparse reads it over ms-swift's options and the
  plugin's together (``ParserOptions``): unique prefixes (``--fipo_safety``; an ambiguous one is
  refused naming its candidates), ``--flag=value``, ``--flag-with-dashes``, repeated flags (the last
  wins), bare booleans, and ``true/yes/1``-style boolean words;
* resolves the run's ``FIPOConfig`` once: the ``--fipo_preset``, then every flag given explicitly on
  top, and refuses bad values naming the flag and its allowed range;
* gives ms-swift back the values in force for the flags its argument class has (``--delta``, and the
  native ``--fipo_*`` on ms-swift >= 4.2.2), so its own code and logs see them; with another
  ``--loss_type`` only what was typed (a preset's values never reach a DAPO baseline);

and after it parses, validates a ``--loss_type fipo`` run against ms-swift's other arguments (a GRPO
``--rlhf_type`` among them) and attaches the resolved ``RunSettings`` to the arguments the trainer is
built from. ``SwiftPipeline._compat_dsw_gradio``, which runs after parsing and before any model loads,
validates the explicit route's runs, which ``_parse_args`` never saw.

This module imports no torch: it runs while ms-swift is still parsing its arguments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from swift_fipo.config import PRESETS, FIPOConfig
from swift_fipo.integrations.messages import warn
from swift_fipo.integrations.ms_swift import layout
from swift_fipo.integrations.ms_swift.gloo_exit import settle_gloo_workers_at_exit
from swift_fipo.integrations.refusals import liger_refusal, on_policy_reason
from swift_fipo.integrations.settings import (
    RunSettings,
    attach_settings,
    check_ratio_thresholds,
    resolve_config,
    settings_of,
)
from swift_fipo.integrations.versions import installed_version

HOST = 'swift-fipo'
SUPPORTED_RANGE = 'ms-swift >= 3.11 (megatron rlhf: >= 4.2.2)'
PRESET_FLAG = 'fipo_preset'
LOG_TOKENS_FLAG = 'fipo_log_tokens'
FLAG_NAMES = layout.FLAG_NAMES
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


# argparse reads a '-'-led token as a value (not an option) only when it is a negative number like these.
_NEGATIVE_NUMBER = re.compile(r'^-\d+$|^-\d*\.\d+$')
_BOOLEAN_HINTS = (bool, Optional[bool])  # noqa: UP045 - the value ms-swift's hints hold, not an annotation
_BOOLEAN_HINT_TEXTS = ('bool', 'Optional[bool]', 'typing.Optional[bool]', 'bool | None', 'Union[bool, None]')


@dataclasses.dataclass(frozen=True)
class Flag:
    """An option token as argparse reads it: the argument it sets (None: no such option), and the value
    after ``=`` (None: none written)."""

    argument: str | None
    inline: str | None = None


@dataclasses.dataclass(frozen=True)
class ParserOptions:
    """The option strings of an argparse parser (``'--fipo-decay-rate'`` -> ``'fipo_decay_rate'``), and
    argparse's own reading of an argv token against them: exact strings, ``--flag=value``, and unique
    prefixes, where a prefix matching two option strings is ambiguous even if they set the same argument
    (Python 3.11's argparse, ``allow_abbrev``). The plugin reads argv through the union of ms-swift's
    options and its own, so that it and ms-swift's parser always agree on what a token names.

    Negations (``--no_<field>``) map to ``'no_<field>'``, so that they can be told apart."""

    strings: Mapping[str, str]

    @classmethod
    def for_fields(cls, names: Iterable[str], true_booleans: Iterable[str] = (),
                   aliases: Mapping[str, Sequence[str]] = types.MappingProxyType({})) -> ParserOptions:
        """What HfArgumentParser registers for dataclass fields: ``--name``, ``--name-with-dashes`` where
        the name has an underscore, the field's metadata aliases; for a boolean field defaulting to True
        also ``--no_name`` and ``--no-name-with-dashes``."""
        strings: dict[str, str] = {}
        for name in names:
            for text in (f'--{name}', f"--{name.replace('_', '-')}", *aliases.get(name, ())):
                strings[text] = name
        for name in true_booleans:
            for text in (f'--no_{name}', f"--no-{name.replace('_', '-')}"):
                strings[text] = f'no_{name}'
        return cls(strings)

    @classmethod
    def for_class(cls, args_class: type) -> ParserOptions:
        """The options HfArgumentParser gives an argument dataclass, ``-h/--help`` included."""
        if not dataclasses.is_dataclass(args_class):
            return cls({})
        try:
            hints = typing.get_type_hints(args_class)
        except Exception:  # an annotation that does not resolve here: read the raw one
            hints = {}
        fields = [field for field in dataclasses.fields(args_class) if field.init]  # as HfArgumentParser skips
        true_booleans = [field.name for field in fields if field.default is True
                         and (hints.get(field.name, field.type) in _BOOLEAN_HINTS
                              or str(field.type) in _BOOLEAN_HINT_TEXTS)]
        aliases = {}
        for field in fields:
            given = field.metadata.get('aliases', ())
            aliases[field.name] = [given] if isinstance(given, str) else list(given)
        found = cls.for_fields([field.name for field in fields], true_booleans, aliases)
        return cls({'-h': 'help', '--help': 'help', **found.strings})

    def __or__(self, other: ParserOptions) -> ParserOptions:
        return ParserOptions({**self.strings, **other.strings})

    def read(self, token: str) -> Flag | None:
        """None where argparse reads ``token`` as a value; else the option it names. An ambiguous prefix
        raises ``ValueError`` naming every candidate (argparse itself would stop there)."""
        if not token.startswith('-'):
            return None
        if token in self.strings:
            return Flag(self.strings[token])
        if len(token) == 1:
            return None
        if '=' in token:
            written, inline = token.split('=', 1)
            if written in self.strings:
                return Flag(self.strings[written], inline)
        if token.startswith('--'):
            prefix, equals, inline = token.partition('=')
            matches = sorted(text for text in self.strings if text.startswith(prefix))
            if len(matches) > 1:
                raise ValueError(f'{HOST}: {prefix} is ambiguous: it could be {", ".join(matches)}. Write more of '
                                 'the flag.')
            if matches:
                return Flag(self.strings[matches[0]], inline if equals else None)
        if _NEGATIVE_NUMBER.match(token) or ' ' in token:
            return None
        return Flag(None)


def plugin_options() -> ParserOptions:
    """The options the plugin adds to ms-swift's command line."""
    flags = [PRESET_FLAG, LOG_TOKENS_FLAG, *FLAG_NAMES.values()]
    true_booleans = [FLAG_NAMES[field] for field in _BOOLEAN_FIELDS if getattr(FIPOConfig(), field)]
    return ParserOptions.for_fields(flags, true_booleans)


def _parse_boolean(flag: str, text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE_WORDS or word in _FALSE_WORDS:
        return word in _TRUE_WORDS
    raise ValueError(f'{HOST}: --{flag} must be true or false (also yes/no, 1/0); got {text!r}.')


def _parse_number(flag: str, text: str) -> float | None:
    if text.strip().lower() == 'none':
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f'{HOST}: --{flag} must be a number or None; got {text!r}.') from None


def run_settings(trainer: Any) -> RunSettings:
    """The FIPO settings of a trainer: resolved once from the command line by the argument hook and
    attached to its args; built from the args' own FIPO fields when the trainer was made without it."""
    settings = settings_of(trainer.args)
    if settings is None:
        settings = RunSettings(config=config_from_arguments(trainer.args))
        attach_settings(trainer.args, settings)
    return settings


def _values_of(argv: Sequence[str], argument: str, options: ParserOptions) -> list[str] | None:
    """The values argv gives ``argument`` where it last appears ([] for a bare flag), or None if it does
    not appear; tokens read as argparse reads them."""
    found = None
    for index, token in enumerate(argv):
        if token == '--':  # argparse: what follows is positional
            break
        flag = options.read(token)
        if flag is None or flag.argument != argument:
            continue
        if flag.inline is not None:
            found = [flag.inline]
            continue
        found = []
        for following in argv[index + 1:]:
            if options.read(following) is not None:
                break
            found.append(following)
    return found


def asks_for_fipo(argv: Sequence[str], options: ParserOptions) -> bool:
    """Whether argv's ``--loss_type`` (ms-swift: one value, or several for DPO) includes ``fipo``."""
    return 'fipo' in (_values_of(argv, 'loss_type', options) or [])


def split_argv(argv: Sequence[str], swift_fields: set[str], swift_options: ParserOptions | None = None
               ) -> CommandLine:
    """Take every FIPO flag out of ``argv`` and hand ms-swift the values in force for its own fields.

    ``swift_fields`` are the argument names of ms-swift's argument class (to know which FIPO flags it
    has); ``swift_options`` its parser's option strings (default: those of ``swift_fields``). Tokens are
    read over the union of ms-swift's options and the plugin's, as argparse would read them. A preset
    reaches ms-swift's own fields only in a ``--loss_type fipo`` run; otherwise only what was typed.
    """
    options = (swift_options or ParserOptions.for_fields(swift_fields)) | plugin_options()
    fipo_flags = {PRESET_FLAG, LOG_TOKENS_FLAG, *_FIELD_OF_FLAG}
    negated = {f'no_{FLAG_NAMES[field]}': field for field in _BOOLEAN_FIELDS if getattr(FIPOConfig(), field)}
    kept: list[str] = []
    preset, log_tokens, explicit = 'swift', 0, {}
    index = 0
    while index < len(argv):
        if argv[index] == '--':  # argparse: what follows is positional, so no flag of ours
            kept.extend(argv[index:])
            break
        flag = options.read(argv[index])
        name = flag.argument if flag is not None else None
        if name not in fipo_flags and name not in negated:
            kept.append(argv[index])
            index += 1
            continue
        if name in negated:
            if flag.inline is not None:
                raise ValueError(f'{HOST}: --{name} takes no value; got {argv[index]!r}.')
            explicit[negated[name]] = False
            index += 1
            continue
        field = _FIELD_OF_FLAG.get(name)
        following = argv[index + 1] if index + 1 < len(argv) else None
        if flag.inline is not None:
            text, index = flag.inline, index + 1
        elif following is not None and options.read(following) is None:
            text, index = following, index + 2
        elif field in _BOOLEAN_FIELDS:  # a bare boolean flag means true, as in HfArgumentParser
            text, index = 'true', index + 1
        elif following is not None and following.startswith('-') and _is_number(following):
            raise ValueError(f'{HOST}: --{name} needs a value: argparse reads {following!r} as an option, not '
                             f'a number; write --{name}={following}.')
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

    in_force = PRESETS[preset] if preset != 'swift' and asks_for_fipo(argv, options) else None
    for field, flag_name in FLAG_NAMES.items():
        if flag_name not in swift_fields or (field not in explicit and in_force is None):
            continue
        value = explicit[field] if field in explicit else getattr(in_force, field)
        text = _format_for_swift(field, value)
        if text is not None:
            kept.extend([f'--{flag_name}', text])
    return CommandLine(argv=kept, preset=preset, explicit=explicit, log_tokens=log_tokens)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _format_for_swift(field: str, value: Any) -> str | None:
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


def precheck_argv(argv: Sequence[str], swift_fields: set[str] = frozenset(),
                  swift_options: ParserOptions | None = None) -> None:
    """Refuse what argv alone shows to be impossible, before ms-swift's own argument checks run."""
    options = (swift_options or ParserOptions.for_fields(set(swift_fields) | {'loss_type', 'use_liger_kernel'})
               ) | plugin_options()
    liger = _values_of(argv, 'use_liger_kernel', options)
    liger_on = liger is not None and (liger[0] if liger else 'true').strip().lower() in _TRUE_WORDS
    if liger_on and asks_for_fipo(argv, options):
        raise ValueError(liger_refusal(HOST, '--use_liger_kernel true'))


def validate_run(args: Any, config: FIPOConfig) -> None:
    """Refuse ``--loss_type fipo`` settings that cannot work; warn (once, rank 0) about no-ops."""
    if getattr(args, 'use_liger_kernel', False):
        raise ValueError(liger_refusal(HOST, '--use_liger_kernel true'))
    teacher = [flag for flag in ('teacher_model', 'teacher_model_server') if getattr(args, flag, None)]
    if teacher:
        raise ValueError(f'{HOST}: --loss_type fipo cannot use a teacher (--{teacher[0]} is set): FIPO needs '
                         'a per-sequence advantage, and OPD-RL replaces it with a per-token teacher signal.')
    epsilon_high = getattr(args, 'epsilon_high', None)
    epsilon_high = epsilon_high if epsilon_high is not None else getattr(args, 'epsilon', None)
    check_ratio_thresholds(config, epsilon_high, lambda field: f'--{FLAG_NAMES[field]}', HOST, 'epsilon_high')
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
            f'{layout.FIPO_HOOK} hook (ms-swift >= 4.2.2) nor a DAPO loss the plugin can reweight '
            f'(HF trainer, ms-swift >= 3.11); installed: ms-swift {installed}. '
            f"Upgrade with: pip install 'ms-swift>=4.2.2'")


def check_trainer_has_hook(megatron: bool, swift_root: Path | None = None) -> None:
    """Refuse fipo at argument-parse time when the GRPO trainer this run will use has no FIPO hook.

    The trainer's source file is read, not imported: importing ``swift.megatron`` has side effects.
    """
    source = layout.trainer_source(megatron, swift_root)
    if f'def {layout.FIPO_HOOK}(' not in source and (megatron or not layout.source_is_servable(source)):
        raise RuntimeError(unsupported_message(layout.MEGATRON_TRAINER_CLASS if megatron else layout.HF_TRAINER_CLASS))
    broken = None if megatron else layout.rollout_reuse_broken(swift_root)
    if broken:
        raise RuntimeError(f"{HOST}: --loss_type fipo cannot act with ms-swift {installed_version('ms-swift')} and "
                           f"trl {installed_version('trl')}: {broken}. Use ms-swift >= 4.2 (ms-swift 4.1.x also "
                           f"trains with pip install 'trl==0.25.1' 'transformers==4.57.6', tested here).")


def _argument_names(args_class: type) -> set[str]:
    return {field.name for field in dataclasses.fields(args_class)} if dataclasses.is_dataclass(args_class) else set()


def _parsed_asks_for_fipo(args: Any) -> bool:
    loss_type = getattr(args, 'loss_type', None)  # a list where ms-swift takes several (DPO)
    return 'fipo' in (loss_type if isinstance(loss_type, (list, tuple)) else [loss_type])


def check_rlhf_type(args: Any) -> None:
    """fipo is a GRPO loss; any other ``--rlhf_type`` (ms-swift's default is dpo) would load the model
    and then fail on an unknown loss type."""
    rlhf_type = getattr(args, 'rlhf_type', 'grpo')
    if rlhf_type != 'grpo':
        raise ValueError(f'{HOST}: --loss_type fipo is a GRPO loss: it needs --rlhf_type grpo; got --rlhf_type '
                         f"{rlhf_type} (ms-swift's default is dpo).")


@contextlib.contextmanager
def refusals_in_one_line() -> Iterator[None]:
    """Let a refusal raised inside (a ``ValueError`` or ``RuntimeError`` of the plugin's checks) end the program
    as one line, ``ValueError: swift-fipo: --flag must be ...``, if nothing catches it.

    ms-swift's entry point (``swift/cli/rlhf.py``, run by ``swift rlhf`` and torchrun) has no error handler, so
    Python would print a 20-line traceback through ms-swift's pipeline for a bad flag; verl (Hydra) and OpenRLHF
    (argparse) print one line. The exception itself is raised unchanged (a caller can still catch it), and only
    that very exception object is shortened at exit (``sys.excepthook`` compares identity): any other error,
    ms-swift's own included, keeps its traceback.
    """
    try:
        yield
    except (ValueError, RuntimeError) as error:
        previous, refusal = sys.excepthook, error  # `error` is unbound once the except block ends

        def excepthook(kind: type, value: BaseException, traceback: Any) -> None:
            if value is refusal:
                print(f'{kind.__name__}: {value}', file=sys.stderr, flush=True)
            else:
                previous(kind, value, traceback)

        sys.excepthook = excepthook
        raise


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
        swift_options = ParserOptions.for_class(args_class)
        with refusals_in_one_line():
            precheck_argv(argv, swift_fields, swift_options)
            command_line = split_argv(argv, swift_fields, swift_options)
        if ray_argv:
            os.environ[_RAY_ARGV_ENV] = json.dumps(command_line.argv)
        try:
            parsed = parse_args(self, command_line.argv)
        finally:
            if ray_argv:
                os.environ[_RAY_ARGV_ENV] = ray_argv
        if _parsed_asks_for_fipo(parsed):
            with refusals_in_one_line():
                check_rlhf_type(parsed)
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


def with_run_validation(compat_dsw_gradio: Callable[[Any], None]) -> staticmethod:
    """Wrap ``SwiftPipeline._compat_dsw_gradio`` (static), which every ms-swift line calls right after
    parsing and before any model loads. On the explicit route (``--external_plugins``, ``install()``)
    ms-swift imports the plugin inside its argument class, after ``_parse_args`` ran unpatched; this is
    where that route's settings are refused. A run the ``_parse_args`` hook validated is not checked twice.
    """

    @functools.wraps(compat_dsw_gradio)
    def validate_then_compat(args: Any) -> None:
        if _parsed_asks_for_fipo(args) and settings_of(args) is None:
            with refusals_in_one_line():
                check_rlhf_type(args)
                check_trainer_has_hook(megatron='megatron' in type(args).__module__)
                validate_run(args, config_from_arguments(args))
        return compat_dsw_gradio(args)

    return staticmethod(validate_then_compat)
