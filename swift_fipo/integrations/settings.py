"""A run's FIPO settings, resolved once by a host and handed to its trainer, and the rules every host applies
to them before a model loads.

- ``resolve_config`` (a preset, then the explicit options) and ``config_error`` (a bad value re-worded with
  the host's own option name);
- ``RunSettings``, attached to the arguments object a trainer is built from (``attach_settings`` /
  ``settings_of``): no module-level state;
- ``check_ratio_thresholds``: the dual clip and the filter must lie beyond the PPO clip, on every host.

Imports no torch: hosts validate while their command line is still being parsed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from swift_fipo.config import PRESETS, FIPOConfig, FIPOConfigError

__all__ = ['RATIO_THRESHOLD_FIELDS', 'RunSettings', 'attach_settings', 'check_ratio_thresholds', 'config_error',
           'resolve_config', 'settings_of']


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Everything a host resolved about FIPO for one run, handed to its trainer."""

    config: FIPOConfig = dataclasses.field(default_factory=FIPOConfig)
    capture_completions: int = 0
    """Completions per logging step whose per-token FIPO values are written out (0: off)."""
    # No field name may contain '_token': ms-swift's args.json writer briefly sets such attributes of
    # every object it finds in the arguments to None (to hide API tokens), which a frozen class refuses.


_SETTINGS_ATTRIBUTE = '_swift_fipo_settings'


def attach_settings(arguments: Any, settings: RunSettings) -> None:
    """Hand ``settings`` to the trainer that will be built from ``arguments`` (its args object)."""
    object.__setattr__(arguments, _SETTINGS_ATTRIBUTE, settings)


def settings_of(arguments: Any) -> RunSettings | None:
    """The settings a host attached to a trainer's arguments, or None."""
    return getattr(arguments, _SETTINGS_ATTRIBUTE, None)


def resolve_config(preset: str, explicit: Mapping[str, Any], option_name: Callable[[str], str],
                   host: str, host_values: Mapping[str, Any] | None = None) -> FIPOConfig:
    """The FIPOConfig of ``preset`` with the ``explicit`` field values on top (explicit always wins).

    ``host_values``: fields the host takes from its own options (under verl and OpenRLHF, delta is the host's
    dual clip), set with the explicit values before the config is validated, so that a rule needing one (the
    sequence drop needs a dual clip) sees it. A bad value raises ``ValueError`` naming the host's option
    (``option_name(field)``, also for every other field the message mentions) and its range.
    """
    if preset not in PRESETS:
        raise ValueError(f'{host}: the FIPO preset must be one of {", ".join(PRESETS)}; got {preset!r}.')
    fields = [field.name for field in dataclasses.fields(FIPOConfig)]
    unknown = sorted(set(explicit) - set(fields))
    if unknown:
        known = [field for field in fields if field not in (host_values or {})]
        raise ValueError(f'{host}: unknown FIPO option(s) {", ".join(map(option_name, unknown))}; known: '
                         f'{", ".join(map(option_name, known))}.')
    try:
        return dataclasses.replace(PRESETS[preset], **{**explicit, **(host_values or {})})
    except FIPOConfigError as error:
        raise config_error(error, option_name(error.field), host, option_name) from None


def config_error(error: FIPOConfigError, option: str, host: str,
                 option_name: Callable[[str], str] | None = None) -> ValueError:
    """``error`` re-worded with the host's name for the option, e.g. ``--fipo_clip_range``, and
    ``option_name`` (if given) for the other fields the message names."""
    return ValueError(f'{host}: {error.describe(option, option_name or str)}')


# The FIPOConfig fields that bound the importance ratio from above (the dual clip and the filter c).
RATIO_THRESHOLD_FIELDS = ('delta', 'filter_threshold')


def check_ratio_thresholds(config: FIPOConfig, epsilon_high: float | None, option_name: Callable[[str], str],
                           host: str, epsilon_option: str) -> None:
    """Refuse a dual clip or filter threshold at or inside the PPO clip ``1 + epsilon_high``, on every host.

    The PPO clip already bounds the ratio up to 1 + epsilon_high: a dual clip at or below it changes nothing
    (ms-swift) or stops the gradient of negative-advantage tokens the PPO clip still trains (verl), and the
    participation filter there keeps such tokens out of Future-KL. ``option_name(field)`` is the host's name
    of a field (ms-swift: ``--delta``; verl: its ``clip_ratio_c``), ``epsilon_option`` its name of
    epsilon_high. ``epsilon_high`` None: nothing to check. A ``ValueError`` names the option and the bound.
    """
    if epsilon_high is None:
        return
    bound = 1 + epsilon_high
    for field in RATIO_THRESHOLD_FIELDS:
        value = getattr(config, field)
        if value is not None and value <= bound:
            raise ValueError(f'{host}: {option_name(field)} must be > 1 + {epsilon_option} = {bound:g} (the PPO clip '
                             f'already bounds ratios up to there); got {value:g}.')
