"""FIPO hyper-parameters as one validated, immutable dataclass.

This module imports nothing heavy: ms-swift's argument parsing and the activation hook may load it
before torch is needed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional


@dataclass(frozen=True)
class FIPOConfig:
    """How FIPO turns per-token log-ratios into influence weights.

    Defaults equal ms-swift's native ``--fipo_*`` defaults, so a plugin run and a native run of the
    same command line compute the same weights.
    """

    decay_rate: float = field(
        default=32.0,
        metadata={'flag': 'fipo_decay_rate',
                  'help': 'Half-life of the Future-KL window, in tokens: a log-ratio k tokens ahead counts '
                          'with weight gamma**k, gamma = 2**(-1/decay_rate). Must be finite and > 0.'})
    clip_range: Optional[float] = field(
        default=0.2,
        metadata={'flag': 'fipo_clip_range',
                  'help': 'Influence weights are clipped to [1, 1+clip_range] (high-only) or '
                          '[1-clip_range, 1+clip_range]. 0 or None disables clipping (the weight is then '
                          'exp(Future-KL), capped only at the largest finite float32). Must be >= 0, '
                          'and < 1 when the clip is symmetric.'})
    clip_high_only: bool = field(
        default=True,
        metadata={'flag': 'fipo_clip_high_only',
                  'help': 'Clip only from above ([1, 1+clip_range]), so FIPO can amplify but never '
                          'attenuate a token. False uses the symmetric clip.'})
    safety_threshold: Optional[float] = field(
        default=4.0,
        metadata={'flag': 'fipo_safety_threshold',
                  'help': 'Tokens with a negative advantage whose importance ratio exceeds this value get '
                          'their weight clamped into [0.8, 1.0], so a runaway negative sample is never '
                          'amplified. None disables the rule. Must be > 0.'})
    delta: Optional[float] = field(
        default=None,
        metadata={'flag': 'delta',
                  'help': "ms-swift's dual-clip --delta. When set, tokens whose importance ratio exceeds it "
                          'do not contribute to Future-KL (the participation filter). Must be > 1.'})
    filter_threshold: Optional[float] = field(
        default=None,
        metadata={'flag': 'fipo_filter_threshold',
                  'help': "The authors' participation filter c, independent of delta: tokens whose importance "
                          'ratio exceeds it do not contribute to Future-KL, whatever their advantage sign. '
                          'None: filter only by delta (ms-swift). Must be > 1.'})
    log_ratio_clamp: Optional[float] = field(
        default=None,
        metadata={'flag': 'fipo_log_ratio_clamp',
                  'help': 'Clamp per-token log-ratios into [-x, x] before the ratio tests and Future-KL (the '
                          'authors use 20). None: no clamp (ms-swift). Must be > 0.'})
    sequence_drop: bool = field(
        default=False,
        metadata={'flag': 'fipo_sequence_drop',
                  'help': 'Give weight 0 to every token of a response that has more than one negative-'
                          'advantage completion token whose ratio exceeds the dual-clip threshold (delta, '
                          "else filter_threshold), as the authors' code drops such responses. Needs one of them."})
    unclipped_weight_cap: Optional[float] = field(
        default=None,
        metadata={'flag': 'fipo_weight_cap',
                  'help': 'Upper cap of the weight when clipping is disabled (the authors use 10). None: only '
                          'the largest finite float32 (ms-swift leaves it unbounded). Must be > 0.'})

    def __post_init__(self) -> None:
        _require(_is_number(self.decay_rate) and math.isfinite(self.decay_rate) and self.decay_rate > 0,
                 'decay_rate', self.decay_rate, 'a finite number > 0')
        if self.clip_range is not None:
            _require(_is_number(self.clip_range) and math.isfinite(self.clip_range) and self.clip_range >= 0,
                     'clip_range', self.clip_range, 'None, or a finite number >= 0 (0 disables clipping)')
            if not self.clip_high_only:
                _require(self.clip_range < 1, 'clip_range', self.clip_range,
                         '[0, 1) when clip_high_only is False (the lower bound 1-clip_range must stay > 0)')
        _require(isinstance(self.clip_high_only, bool), 'clip_high_only', self.clip_high_only, 'True or False')
        if self.safety_threshold is not None:
            _require(_is_number(self.safety_threshold) and self.safety_threshold > 0, 'safety_threshold',
                     self.safety_threshold, 'None, or a number > 0')
        for name in ('delta', 'filter_threshold'):
            value = getattr(self, name)
            if value is not None:
                _require(_is_number(value) and value > 1, name, value, 'None, or a number > 1')
        for name in ('log_ratio_clamp', 'unclipped_weight_cap'):
            value = getattr(self, name)
            if value is not None:
                _require(_is_number(value) and value > 0, name, value, 'None, or a number > 0')
        _require(isinstance(self.sequence_drop, bool), 'sequence_drop', self.sequence_drop, 'True or False')
        if self.sequence_drop:
            _require(self.dual_clip_threshold is not None, 'sequence_drop', self.sequence_drop,
                     'False unless delta or filter_threshold is set (it needs a dual-clip threshold)')

    @property
    def gamma(self) -> float:
        """Per-token decay of the Future-KL sum, 2**(-1/decay_rate), in float64."""
        return 2.0**(-1.0 / self.decay_rate)

    @property
    def participation_threshold(self) -> Optional[float]:
        """Ratio above which a token is kept out of Future-KL: the smaller of delta and filter_threshold."""
        thresholds = [value for value in (self.delta, self.filter_threshold) if value is not None]
        return min(thresholds) if thresholds else None

    @property
    def dual_clip_threshold(self) -> Optional[float]:
        """The c of the sequence drop: delta (ms-swift's dual clip) if set, else filter_threshold."""
        return self.delta if self.delta is not None else self.filter_threshold

    @property
    def weight_bounds(self) -> Optional[tuple[float, float]]:
        """(low, high) clip of the influence weight, or None when clipping is disabled."""
        if not self.clip_range:
            return None
        low = 1.0 if self.clip_high_only else 1.0 - self.clip_range
        return low, 1.0 + self.clip_range

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> 'FIPOConfig':
        """A named preset (see ``PRESETS``), with explicit values overriding it."""
        if name not in PRESETS:
            raise ValueError(f'FIPOConfig preset must be one of {", ".join(PRESETS)}; got {name!r}.')
        return dataclasses.replace(PRESETS[name], **overrides)

    @classmethod
    def flag_names(cls) -> dict[str, str]:
        """The command-line flag of every field (without dashes), keyed by field name.

        ms-swift's native flags keep their names (``--fipo_decay_rate``, ``--delta``); the fields ms-swift
        lacks get plugin flags in the same style. Other hosts derive their option names from the field names.
        """
        return {f.name: f.metadata['flag'] for f in fields(cls)}

    @classmethod
    def help(cls) -> dict[str, str]:
        """Help text of every field, keyed by field name."""
        return {f.name: f.metadata['help'] for f in fields(cls)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class FIPOConfigError(ValueError):
    """A FIPOConfig field got a value outside its allowed range.

    Hosts re-word it with their own option name (``--fipo_clip_range``, a Hydra path, ...) through
    ``field``, ``value`` and ``allowed``.
    """

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(self.describe(f'FIPOConfig.{field}'))

    def describe(self, option: str) -> str:
        return f'{option} must be {self.allowed}; got {self.value!r}.'


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise FIPOConfigError(name, value, allowed)


_PAPER = dict(decay_rate=32.0, clip_range=0.2, delta=10.0, filter_threshold=10.0, log_ratio_clamp=20.0,
              sequence_drop=True, unclipped_weight_cap=10.0)

PRESETS: dict[str, FIPOConfig] = {
    # ms-swift's native semantics and defaults.
    'swift': FIPOConfig(),
    # The authors' recipe for Qwen2.5-32B: high-only weight clip, safety threshold 10, dual clip c = 10
    # (in ms-swift terms delta = 10), filter c = 10 always on, log-ratio clamp 20, sequence drop.
    'paper-32b': FIPOConfig(**_PAPER, clip_high_only=True, safety_threshold=10.0),
    # The authors' 7B setting: as 32B, but the symmetric clip [0.8, 1.2] (smaller models prefer it)
    # and safety threshold 3.
    'paper-7b': FIPOConfig(**_PAPER, clip_high_only=False, safety_threshold=3.0),
}
