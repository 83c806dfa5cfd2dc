"""FIPO hyper-parameters as one validated, immutable dataclass.

This module imports nothing heavy: ms-swift's argument parsing and the activation hook may load it
before torch is needed.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

# float32 facts the bounds below derive from (this module imports neither numpy nor torch).
FLOAT32_MAX = 3.4028234663852886e38
"""The largest finite float32, (2 - 2**-23) * 2**127."""
FLOAT32_TINY = 2.0**-126
"""The smallest normal float32."""
MIN_DECAY_RATE = 1.0 / 126
"""Below it gamma = 2**(-1/decay_rate) < 2**-126: the window shrinks to the current token in float32."""
MAX_DECAY_RATE = 2.0**24
"""Above it gamma rounds towards 1 in float32 (the spacing of float32 just below 1 is 2**-24): no decay."""
MAX_LOG_RATIO_CLAMP = 88.0
"""exp(x) must stay finite in float32: ln(FLOAT32_MAX) = 88.72; 88 is the round number below it."""

_DECAY_RATE_ALLOWED = (f'a number in [1/126, 2**24] = [{MIN_DECAY_RATE:.4g}, {MAX_DECAY_RATE:.0f}] (gamma = '
                       '2**(-1/decay_rate) must be a float32 number in [2**-126, 1): smaller values underflow '
                       'it, larger ones round it to 1 and nothing decays)')
_CLIP_RANGE_ALLOWED = (f'None, or a number in [0, {FLOAT32_MAX!r}] (0 disables clipping; '
                       '1+clip_range must be a finite float32)')
_SAFETY_ALLOWED = (f'None, or a number in (0, {FLOAT32_MAX!r}] (the float32 importance ratio is compared '
                   'with it)')
_RATIO_THRESHOLD_ALLOWED = (f'None, or a number in (1, {FLOAT32_MAX!r}] (a bound on the float32 importance '
                            'ratio)')
_CLAMP_ALLOWED = (f'None, or a number in (0, {MAX_LOG_RATIO_CLAMP:g}] (exp(+-log_ratio_clamp) must stay finite '
                  'in float32, whose largest exponent is ln(3.4e38) = 88.7)')
_CAP_ALLOWED = (f'None, or a number in [2**-126, {FLOAT32_MAX!r}] (a normal float32 number: smaller caps '
                'round to 0, larger ones overflow)')


@dataclass(frozen=True)
class FIPOConfig:
    """How FIPO turns per-token log-ratios into influence weights.

    Defaults equal ms-swift's native ``--fipo_*`` defaults, so a plugin run and a native run of the
    same command line compute the same weights.
    """

    decay_rate: float = field(
        default=32.0,
        metadata={'help': 'Half-life of the Future-KL window, in tokens: a log-ratio k tokens ahead counts '
                          'with weight gamma**k, gamma = 2**(-1/decay_rate). Must be in [1/126, 2**24] '
                          '(gamma a float32 number in [2**-126, 1)).'})
    clip_range: float | None = field(
        default=0.2,
        metadata={'help': 'Influence weights are clipped to [1, 1+clip_range] (high-only) or '
                          '[1-clip_range, 1+clip_range]. 0 or None disables clipping (the weight is then '
                          'exp(Future-KL), capped only at the largest finite float32). Must be in [0, 3.4e38], '
                          'and < 1 when the clip is symmetric.'})
    clip_high_only: bool = field(
        default=True,
        metadata={'help': 'Clip only from above ([1, 1+clip_range]), so FIPO can amplify but never '
                          'attenuate a token. False uses the symmetric clip.'})
    safety_threshold: float | None = field(
        default=4.0,
        metadata={'help': 'Tokens with a negative advantage whose importance ratio exceeds this value get '
                          'their weight clamped into [0.8, 1.0], so a runaway negative sample is never '
                          'amplified. None disables the rule. Must be in (0, 3.4e38].'})
    delta: float | None = field(
        default=None,
        metadata={'help': "ms-swift's dual-clip --delta. When set, tokens whose importance ratio exceeds it "
                          'do not contribute to Future-KL (the participation filter). Must be in (1, 3.4e38].'})
    filter_threshold: float | None = field(
        default=None,
        metadata={'help': "The authors' participation filter c, independent of delta: tokens whose importance "
                          'ratio exceeds it do not contribute to Future-KL, whatever their advantage sign. '
                          'None: filter only by delta (ms-swift). Must be in (1, 3.4e38].'})
    log_ratio_clamp: float | None = field(
        default=None,
        metadata={'help': 'Clamp per-token log-ratios into [-x, x] before the ratio tests and Future-KL (the '
                          'authors use 20). None: no clamp (ms-swift). Must be in (0, 88] (exp(x) finite in float32).'})
    sequence_drop: bool = field(
        default=False,
        metadata={'help': 'Give weight 0 to every token of a response that has more than one negative-'
                          'advantage completion token whose ratio exceeds the dual-clip threshold (delta, '
                          "else filter_threshold), as the authors' code drops such responses. Needs one of them."})
    unclipped_weight_cap: float | None = field(
        default=None,
        metadata={'help': 'Upper cap of the weight when clipping is disabled (the authors use 10). None: only '
                          'the largest finite float32 (ms-swift leaves it unbounded). Must be in [2**-126, 3.4e38].'})

    def __post_init__(self) -> None:
        # Every bound is what the float32 maths of ``compute_fipo_influence`` needs to stay finite and
        # meaningful (see the constants above); numbers are stored as Python floats, whatever scalar
        # type they arrived as.
        _number_field(self, 'decay_rate', _DECAY_RATE_ALLOWED, lambda x: MIN_DECAY_RATE <= x <= MAX_DECAY_RATE)
        clip_high_only = _bool_field(self, 'clip_high_only')
        if clip_high_only:
            _number_field(self, 'clip_range', _CLIP_RANGE_ALLOWED, lambda x: 0 <= x <= FLOAT32_MAX, optional=True)
        else:
            _number_field(self, 'clip_range', '[0, 1) when clip_high_only is False (the lower bound 1-clip_range '
                          'must stay > 0), or None', lambda x: 0 <= x < 1, optional=True)
        _number_field(self, 'safety_threshold', _SAFETY_ALLOWED, lambda x: 0 < x <= FLOAT32_MAX, optional=True)
        for name in ('delta', 'filter_threshold'):
            _number_field(self, name, _RATIO_THRESHOLD_ALLOWED, lambda x: 1 < x <= FLOAT32_MAX, optional=True)
        _number_field(self, 'log_ratio_clamp', _CLAMP_ALLOWED, lambda x: 0 < x <= MAX_LOG_RATIO_CLAMP, optional=True)
        _number_field(self, 'unclipped_weight_cap', _CAP_ALLOWED, lambda x: FLOAT32_TINY <= x <= FLOAT32_MAX,
                      optional=True)
        if _bool_field(self, 'sequence_drop'):
            # The other fields are named by the host's option names (FIPOConfigError.describe): under verl and
            # OpenRLHF, delta is the host's own dual clip.
            _require(self.dual_clip_threshold is not None, 'sequence_drop', self.sequence_drop,
                     'False unless {delta} or {filter_threshold} is set (it needs a dual-clip threshold)',
                     related=('delta', 'filter_threshold'))

    @property
    def gamma(self) -> float:
        """Per-token decay of the Future-KL sum, 2**(-1/decay_rate), in float64."""
        return float(2.0**(-1.0 / self.decay_rate))

    @property
    def participation_threshold(self) -> float | None:
        """Ratio above which a token is kept out of Future-KL: the smaller of delta and filter_threshold."""
        thresholds = [value for value in (self.delta, self.filter_threshold) if value is not None]
        return min(thresholds) if thresholds else None

    @property
    def dual_clip_threshold(self) -> float | None:
        """The c of the sequence drop: delta (ms-swift's dual clip) if set, else filter_threshold."""
        return self.delta if self.delta is not None else self.filter_threshold

    @property
    def weight_bounds(self) -> tuple[float, float] | None:
        """(low, high) clip of the influence weight, or None when clipping is disabled."""
        if not self.clip_range:
            return None
        low = 1.0 if self.clip_high_only else 1.0 - self.clip_range
        return low, 1.0 + self.clip_range

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> FIPOConfig:
        """A named preset (see ``PRESETS``), with explicit values overriding it."""
        if name not in PRESETS:
            raise ValueError(f'FIPOConfig preset must be one of {", ".join(PRESETS)}; got {name!r}.')
        return dataclasses.replace(PRESETS[name], **overrides)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Help text of every field, keyed by field name."""
        return {f.name: f.metadata['help'] for f in fields(cls)}


def real_number(value: Any) -> float | None:
    """``value`` as a Python float if it is a real number, else None.

    Python ints and floats, ``numbers.Real`` (numpy's scalars included) and 0-dim array or tensor
    scalars (anything with ``shape == ()`` and ``.item()``) are numbers; bool, complex, strings and
    scalars whose ``.item()`` fails (a meta tensor has no value) are not. An int too large for a float becomes
    +-inf, so range checks refuse it like any infinity.
    Detected by duck typing: this module imports neither numpy nor torch.
    """
    if isinstance(value, bool):
        return None
    if not isinstance(value, numbers.Real):
        item = getattr(value, 'item', None)
        if not callable(item) or getattr(value, 'shape', None) != ():
            return None
        try:
            value = item()  # a 0-dim array or tensor: its Python scalar
        except (RuntimeError, TypeError, ValueError, NotImplementedError):
            return None  # no value to read (a meta tensor): the caller's refusal names the field
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return None
    try:
        return float(value)
    except OverflowError:  # an int beyond the float range
        return -math.inf if value < 0 else math.inf


def _as_bool(value: Any) -> bool | None:
    """``value`` as a Python bool if it is a bool, numpy bool or 0-dim bool tensor, else None (1 is not)."""
    if isinstance(value, bool):
        return value
    item = getattr(value, 'item', None)
    if callable(item) and getattr(value, 'shape', None) == ():
        try:
            value = item()
        except (RuntimeError, TypeError, ValueError, NotImplementedError):
            return None  # a meta tensor holds no value
        if isinstance(value, bool):
            return value
    return None


def _number_field(config: FIPOConfig, name: str, allowed: str, in_range: Callable[[float], bool],
                  optional: bool = False) -> None:
    """Check that field ``name`` holds a real number inside ``in_range`` (or None if ``optional``), and
    store it as a Python float. NaN fails every range."""
    value = getattr(config, name)
    if value is None and optional:
        return
    number = real_number(value)
    _require(number is not None and in_range(number), name, value, allowed)
    object.__setattr__(config, name, number)  # frozen dataclass: the one sanctioned write, at creation


def _bool_field(config: FIPOConfig, name: str) -> bool:
    value = getattr(config, name)
    flag = _as_bool(value)
    _require(flag is not None, name, value, 'True or False')
    object.__setattr__(config, name, flag)
    return bool(flag)


class FIPOConfigError(ValueError):
    """A FIPOConfig field got a value outside its allowed range.

    Hosts re-word it with their own option names (``--fipo_clip_range``, a Hydra path, ...) through
    ``describe``. ``allowed`` may name other fields (``related``) as ``{field}`` placeholders, which
    ``describe`` fills with the host's name of each.
    """

    def __init__(self, field: str, value: Any, allowed: str, related: tuple[str, ...] = ()) -> None:
        self.field, self.value, self.allowed, self.related = field, value, allowed, related
        super().__init__(self.describe(f'FIPOConfig.{field}'))

    def describe(self, option: str, option_name: Callable[[str], str] = str) -> str:
        """The message with ``option`` for the field and ``option_name(other)`` for each related field."""
        allowed = self.allowed.format(**{name: option_name(name) for name in self.related}) if self.related \
            else self.allowed
        return f'{option} must be {allowed}; got {_shown(self.value)}.'


def _require(ok: bool, name: str, value: Any, allowed: str, related: tuple[str, ...] = ()) -> None:
    if not ok:
        raise FIPOConfigError(name, value, allowed, related)


def _shown(value: Any) -> str:
    """``repr(value)`` for an error message, bounded: a hostile value must not flood it, and the repr
    of an int with more than 4300 digits raises."""
    try:
        text = repr(value)
    except ValueError:
        return f'an int of {value.bit_length()} bits' if isinstance(value, int) else f'a {type(value).__name__}'
    return text if len(text) <= 80 else f'{text[:60]}... ({len(text)} characters)'


_PAPER: dict[str, Any] = dict(decay_rate=32.0, clip_range=0.2, delta=10.0, filter_threshold=10.0,
                              log_ratio_clamp=20.0, sequence_drop=True, unclipped_weight_cap=10.0)

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
