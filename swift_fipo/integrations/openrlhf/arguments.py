"""OpenRLHF's command line with FIPO: the ``fipo`` choice of ``--actor.policy_loss_type`` and the
``--actor.fipo.*`` options, added to OpenRLHF's own argparse parser, resolved (preset, then explicit
values) and checked when argv is parsed: before Ray starts, before any model loads.

OpenRLHF builds its parser inline in ``train_ppo_ray``'s ``__main__`` block, so there is no class to patch:
``ArgumentParser.parse_known_args`` is wrapped, and acts only on a parser that has OpenRLHF's
``--actor.policy_loss_type`` option (found by capability, not by program name). A bad value ends the program
through ``parser.error``: argparse's usage line and one message naming the option and its range, exit
status 2, no traceback.

The resolved settings are written back onto the parsed namespace as plain values (``actor.fipo.<field>``,
which ``hierarchize`` turns into ``args.actor.fipo.<field>``) and attached as ``RunSettings``; OpenRLHF
pickles the arguments to every Ray actor, where ``config_of_arguments`` reads them.

Torch-free: this runs while the driver parses argv.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from swift_fipo.config import PRESETS, FIPOConfig
from swift_fipo.integrations.messages import warn
from swift_fipo.integrations.openrlhf import layout
from swift_fipo.integrations.refusals import on_policy_reason
from swift_fipo.integrations.settings import (
    RunSettings,
    attach_settings,
    check_ratio_thresholds,
    resolve_config,
    settings_of,
)

HOST = 'openrlhf'
DEFAULT_PRESET = 'swift'
_FIELDS = tuple(field.name for field in dataclasses.fields(FIPOConfig))
# FIPO's delta is OpenRLHF's dual clip under this host; every other field is an --actor.fipo.<field> option.
OPTION_FIELDS = tuple(field for field in _FIELDS if field != 'delta')
_MISSING = object()


def option_name(field: str) -> str:
    """The OpenRLHF option of a FIPOConfig field, as error messages name it."""
    return layout.DUAL_CLIP_OPTION if field == 'delta' else f'{layout.OPTION_PREFIX}{field}'


# ---------------------------------------------------------------------------------------------------
# Values as argparse reads them


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number; got {text!r}') from None


def _optional_number(text: str) -> float | None:
    # 'none' sets the field to None explicitly (e.g. no weight clip), overriding the preset.
    return None if text.strip().lower() in ('none', 'null') else _number(text)


def _boolean(text: str) -> bool:
    word = text.strip().lower()
    if word in ('true', 'yes', '1', 'on'):
        return True
    if word in ('false', 'no', '0', 'off'):
        return False
    raise argparse.ArgumentTypeError(f'expected true or false; got {text!r}')


def _preset(text: str) -> str:
    if text not in PRESETS:
        raise argparse.ArgumentTypeError(f'expected one of {", ".join(PRESETS)}; got {text!r}')
    return text


def _reader(field: str) -> Callable[[str], Any]:
    default = getattr(FIPOConfig(), field)
    if isinstance(default, bool):
        return _boolean
    return _number if field == 'decay_rate' else _optional_number


# ---------------------------------------------------------------------------------------------------
# Reading a namespace: flat (dotted dests, as parsed) or hierarchized (args.actor.fipo...)


def lookup(arguments: Any, name: str, default: Any = None) -> Any:
    """``arguments``' value of the dotted dest ``name``, flat or hierarchized; ``default`` if absent."""
    value = getattr(arguments, name, _MISSING)
    if value is not _MISSING:
        return value
    node = arguments
    for part in name.split('.'):
        node = getattr(node, part, _MISSING)
        if node is _MISSING:
            return default
    return node


def given_options(arguments: Any) -> dict[str, Any]:
    """The FIPO options present on ``arguments`` (``preset`` and ``delta`` included), keyed by field."""
    given = {}
    for field in ('preset', 'delta', *OPTION_FIELDS):
        value = lookup(arguments, layout.dest(f'{layout.OPTION_PREFIX}{field}'), _MISSING)
        if value is not _MISSING:
            given[field] = value
    return given


def _epsilon_high(arguments: Any) -> tuple[float | None, str]:
    """The upper PPO clip width OpenRLHF's loss uses, and the option it came from."""
    low_high = lookup(arguments, layout.dest(layout.EPS_CLIP_LOW_HIGH_OPTION))
    if low_high is not None:
        return float(low_high[1]), f'{layout.EPS_CLIP_LOW_HIGH_OPTION}[1]'
    return lookup(arguments, layout.dest(layout.EPS_CLIP_OPTION)), layout.EPS_CLIP_OPTION


def fipo_config(arguments: Any) -> FIPOConfig:
    """The FIPOConfig of an OpenRLHF arguments object: the preset, the explicit ``--actor.fipo.*`` values on
    top, and ``--actor.dual_clip`` as FIPO's delta. Raises ``ValueError`` naming the option and its range,
    also for a dual clip or filter at or inside the PPO clip (``settings.check_ratio_thresholds``)."""
    explicit = given_options(arguments)
    preset = explicit.pop('preset', DEFAULT_PRESET)
    if 'delta' in explicit:
        raise ValueError(f'{HOST}: {layout.DELTA_OPTION} is not an option: under OpenRLHF, FIPO uses the dual clip '
                         f'{layout.DUAL_CLIP_OPTION} as its delta. Set {layout.DUAL_CLIP_OPTION} instead.')
    # The dual clip is resolved with the options, so that the sequence drop sees its c; every message names
    # OpenRLHF's options (option_name: delta is --actor.dual_clip).
    config = resolve_config(preset, explicit, option_name, HOST,
                            {'delta': lookup(arguments, layout.dest(layout.DUAL_CLIP_OPTION))})
    high, high_option = _epsilon_high(arguments)
    check_ratio_thresholds(config, high, option_name, HOST, high_option)
    return config


def config_of_arguments(arguments: Any) -> FIPOConfig:
    """The FIPOConfig a trainer built from ``arguments`` runs with: the settings the command line attached,
    else (arguments made in Python) resolved from their ``actor.fipo`` values."""
    settings = settings_of(arguments)
    return settings.config if settings is not None else fipo_config(arguments)


def on_policy_warning(arguments: Any) -> str | None:
    """Why FIPO would be a no-op with this OpenRLHF schedule, or None.

    Per rollout, OpenRLHF trains on ``rollout.batch_size * n_samples_per_prompt`` samples in optimizer steps of
    ``train.batch_size`` samples, ``train.max_epochs`` times over; the old log-probs are the actor's own at
    rollout time. One step and one epoch: every sample is trained on by the policy that scored it.
    """
    epochs = lookup(arguments, layout.dest(layout.MAX_EPOCHS_OPTION)) or 1
    samples = ((lookup(arguments, layout.dest(layout.ROLLOUT_BATCH_OPTION)) or 1)
               * (lookup(arguments, layout.dest(layout.SAMPLES_PER_PROMPT_OPTION)) or 1))
    train_batch = lookup(arguments, layout.dest(layout.TRAIN_BATCH_OPTION)) or samples
    updates = max(1, samples // train_batch)
    if on_policy_reason(epochs, updates, 1) is None:
        return None
    return (f'FIPO is a no-op here: {layout.MAX_EPOCHS_OPTION}={epochs} and one optimizer step per rollout '
            f'({layout.ROLLOUT_BATCH_OPTION} x {layout.SAMPLES_PER_PROMPT_OPTION} = {samples} samples, '
            f'{layout.TRAIN_BATCH_OPTION}={train_batch}): every sample is optimised by the policy that scored it, '
            'so Future-KL is 0, every weight is 1 and the loss is plain PPO. Use '
            f'{layout.MAX_EPOCHS_OPTION} > 1 or {layout.TRAIN_BATCH_OPTION} < the samples per rollout.')


# ---------------------------------------------------------------------------------------------------
# The parser


def _loss_type_action(parser: argparse.ArgumentParser) -> argparse.Action | None:
    for action in parser._actions:  # argparse keeps no public list of a parser's options
        if action.dest == layout.dest(layout.LOSS_TYPE_OPTION) and action.choices is not None:
            return action
    return None


def serves(parser: argparse.ArgumentParser) -> bool:
    """Whether ``parser`` is OpenRLHF's (it has ``--actor.policy_loss_type`` with choices)."""
    return _loss_type_action(parser) is not None


def extend_parser(parser: argparse.ArgumentParser) -> bool:
    """Add the ``fipo`` choice and the ``--actor.fipo.*`` options to OpenRLHF's parser; False for any other
    parser. Idempotent."""
    action = _loss_type_action(parser)
    if action is None:
        return False
    if layout.LOSS_TYPE not in action.choices:
        action.choices = [*action.choices, layout.LOSS_TYPE]
    if any(layout.PRESET_OPTION in known.option_strings for known in parser._actions):
        return True
    helps = FIPOConfig.help()
    group = parser.add_argument_group('FIPO (swift-fipo; with --actor.policy_loss_type fipo)')
    # SUPPRESS: an option not given stays off the namespace, so the preset can tell what was explicit.
    group.add_argument(layout.PRESET_OPTION, type=_preset, default=argparse.SUPPRESS, metavar='NAME',
                       help=f'FIPO preset: {", ".join(PRESETS)} (default {DEFAULT_PRESET}); explicit options win. '
                            f'A preset with a dual clip sets {layout.DUAL_CLIP_OPTION} unless it is given.')
    for field in OPTION_FIELDS:
        reader = _reader(field)
        group.add_argument(f'{layout.OPTION_PREFIX}{field}', type=reader, default=argparse.SUPPRESS,
                           metavar='BOOL' if reader is _boolean else 'X', help=helps[field])
    group.add_argument(layout.DELTA_OPTION, type=str, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return True


def settle(parser: argparse.ArgumentParser, namespace: argparse.Namespace) -> None:
    """Resolve and check FIPO on a parsed OpenRLHF namespace; a bad value ends the program via ``parser.error``.

    A fipo run gets the resolved values written back (``actor.fipo.<field>``; the preset's dual clip onto
    ``actor.dual_clip`` when that was not given) and ``RunSettings`` attached.
    """
    given = given_options(namespace)
    loss_type = lookup(namespace, layout.dest(layout.LOSS_TYPE_OPTION))
    if loss_type != layout.LOSS_TYPE:
        if given:
            warn(f'{", ".join(option_name(field) if field != "preset" else layout.PRESET_OPTION for field in given)} '
                 f'set, but {layout.LOSS_TYPE_OPTION} is {loss_type!r}: the FIPO options do nothing (FIPO is the '
                 f'{layout.LOSS_TYPE!r} loss type; it is token-level and does not combine with '
                 f'{layout.SEQUENCE_LOSS_TYPE!r}).')
        return
    dual_clip = layout.dest(layout.DUAL_CLIP_OPTION)
    preset_delta = PRESETS[given['preset']].delta if 'preset' in given and 'delta' not in given else None
    if lookup(namespace, dual_clip) is None and preset_delta is not None:
        setattr(namespace, dual_clip, preset_delta)  # the paper presets' dual clip c, on OpenRLHF's own option
    try:
        config = fipo_config(namespace)
    except ValueError as error:
        parser.error(str(error))
    for field in OPTION_FIELDS:
        setattr(namespace, layout.dest(f'{layout.OPTION_PREFIX}{field}'), getattr(config, field))
    setattr(namespace, layout.dest(layout.PRESET_OPTION), given.get('preset', DEFAULT_PRESET))
    attach_settings(namespace, RunSettings(config=config))
    reason = on_policy_warning(namespace)
    if reason is not None:
        warn(reason)


def parse_hook(original: Callable[..., Any]) -> Callable[..., Any]:
    """``ArgumentParser.parse_known_args`` that also serves FIPO on OpenRLHF's parser (any other parser: as is)."""

    @functools.wraps(original)
    def parse_known_args(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        if not extend_parser(self):
            return original(self, *args, **kwargs)
        namespace, extras = original(self, *args, **kwargs)
        unknown = [token for token in extras if token.startswith(layout.OPTION_PREFIX)]
        if unknown:  # named with the FIPO options there are, before anything else is said about the run
            self.error(f'{HOST}: unknown FIPO option {unknown[0].partition("=")[0]}; known: {layout.PRESET_OPTION}, '
                       f'{", ".join(option_name(field) for field in OPTION_FIELDS)} (and {layout.DUAL_CLIP_OPTION}).')
        settle(self, namespace)
        return namespace, extras

    return parse_known_args
