"""FIPO hyper-parameters as one validated, immutable dataclass.

This module imports nothing heavy: ms-swift's argument parsing and the activation hook may load it
before torch is needed.
"""

from __future__ import annotations

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
        metadata={'help': 'Half-life of the Future-KL window, in tokens: a log-ratio k tokens ahead counts '
                          'with weight gamma**k, gamma = 2**(-1/decay_rate). Must be finite and > 0.'})
    clip_range: Optional[float] = field(
        default=0.2,
        metadata={'help': 'Influence weights are clipped to [1, 1+clip_range] (high-only) or '
                          '[1-clip_range, 1+clip_range]. 0 or None disables clipping (the weight is then '
                          'exp(Future-KL), capped only at the largest finite float32). Must be >= 0, '
                          'and < 1 when the clip is symmetric.'})
    clip_high_only: bool = field(
        default=True,
        metadata={'help': 'Clip only from above ([1, 1+clip_range]), so FIPO can amplify but never '
                          'attenuate a token. False uses the symmetric clip.'})
    safety_threshold: Optional[float] = field(
        default=4.0,
        metadata={'help': 'Tokens with a negative advantage whose importance ratio exceeds this value get '
                          'their weight clamped into [0.8, 1.0], so a runaway negative sample is never '
                          'amplified. None disables the rule. Must be > 0.'})
    delta: Optional[float] = field(
        default=None,
        metadata={'help': "ms-swift's dual-clip --delta. When set, tokens whose importance ratio exceeds it "
                          'do not contribute to Future-KL (the participation filter). Must be > 1.'})

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
        if self.delta is not None:
            _require(_is_number(self.delta) and self.delta > 1, 'delta', self.delta, 'None, or a number > 1')

    @property
    def gamma(self) -> float:
        """Per-token decay of the Future-KL sum, 2**(-1/decay_rate), in float64."""
        return 2.0**(-1.0 / self.decay_rate)

    @property
    def weight_bounds(self) -> Optional[tuple[float, float]]:
        """(low, high) clip of the influence weight, or None when clipping is disabled."""
        if not self.clip_range:
            return None
        low = 1.0 if self.clip_high_only else 1.0 - self.clip_range
        return low, 1.0 + self.clip_range

    @classmethod
    def help(cls) -> dict[str, str]:
        """Help text of every field, keyed by field name."""
        return {f.name: f.metadata['help'] for f in fields(cls)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f'FIPOConfig.{name} must be {allowed}; got {value!r}.')
