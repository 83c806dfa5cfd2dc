"""FIPO influence weights: participation filter, Future-KL, clipping and the safety rule.

``compute_fipo_influence`` is the single implementation every integration calls (ms-swift's HF and
Megatron trainers, TRL, custom loops). It is a pure function of tensors and a ``FIPOConfig``.
"""

from __future__ import annotations

import fractions
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from swift_fipo.config import FIPOConfig
from swift_fipo.ops.future_kl import discounted_future_sum
from swift_fipo.ops.precision import autocast_off

# Stand-in for +-inf log-ratios: large enough that exp() of any sum involving it saturates, small
# enough that sums of up to ~1e8 of them stay finite in float32.
_LOG_RATIO_LIMIT = 1e30
_FLOAT32_MAX = torch.finfo(torch.float32).max
# Weight interval the safety rule clamps flagged tokens into (ms-swift and the authors agree).
SAFETY_WEIGHT_BOUNDS = (0.8, 1.0)


@dataclass(frozen=True)
class FIPOStats:
    """Per-token FIPO tensors (all ``[B, T]``, detached) and their summaries over completion tokens."""

    future_kl: torch.Tensor
    """float32 Future-KL; 0 at non-completion positions."""
    raw_weight: torch.Tensor
    """exp(future_kl) before clipping and the safety rule, capped at the largest finite float32."""
    weight: torch.Tensor
    """The final influence weight (the same tensor ``compute_fipo_influence`` returns)."""
    safety_mask: torch.Tensor
    """bool; False where the safety rule fired (negative advantage and ratio > safety_threshold)."""
    participation_mask: torch.Tensor
    """bool; True where a token's log-ratio entered Future-KL (completion token, not filtered)."""
    completion_mask: torch.Tensor
    """bool; the completion tokens every summary averages over."""
    ratio: torch.Tensor
    """float32 importance ratio the filter and safety rule tested, ``[B, T]`` or ``[B, 1]``."""
    negative_advantage: torch.Tensor
    """bool; advantage < 0, ``[B, 1]`` or ``[B, T]``."""
    dropped: torch.Tensor
    """bool ``[B]``; responses the sequence drop zeroed (all False when it is off)."""
    weight_bounds: tuple[float, float] | None
    """The clip interval that was applied, or None."""

    @functools.cached_property
    def summary(self) -> dict[str, torch.Tensor]:
        """Scalar (0-dim float32) summaries over completion tokens; NaN where there are none. Means are
        finite even over weights at float32's largest; ``neg_adv_ratio_p99`` is inf when the ratios are.

        How each combines across ranks and accumulation chunks: ``integrations.metrics.METRICS``.
        0-dim tensors on the batch's device, so that a host reads them all in one transfer
        (``torch.stack(...).tolist()``, one sync). Off the CPU computing them does not sync (the p99 sorts
        instead of selecting, see ``_quantile``); on the CPU, where a sync costs nothing, the p99 selects
        the negative-advantage tokens by their mask. An empty batch (B = 0 or T = 0) gives NaN everywhere.
        """
        self._check()
        mask = self.completion_mask
        count = mask.sum().to(torch.float32)

        def mean(values: torch.Tensor) -> torch.Tensor:
            return torch.where(mask, values.to(torch.float32), 0.0).sum() / count

        def large_mean(values: torch.Tensor) -> torch.Tensor:
            # Values up to float32's largest (a raw weight after an inf log-ratio) overflow a float32
            # sum; dividing first keeps their mean finite. Only then: sum-then-divide is exact for
            # the common case (on-policy weights of exactly 1 average to exactly 1).
            total = mean(values)
            scaled = torch.where(mask, values.to(torch.float32) / count.clamp(min=1), 0.0).sum()
            return torch.where(total.isinf(), scaled.clamp(-_FLOAT32_MAX, _FLOAT32_MAX), total)

        def extreme(values: torch.Tensor, largest: bool) -> torch.Tensor:
            if values.numel() == 0:  # max()/min() of an empty tensor raise
                return torch.tensor(math.nan, device=values.device)
            fill = -torch.inf if largest else torch.inf
            masked = torch.where(mask, values, fill)
            found = masked.max() if largest else masked.min()
            return torch.where(count > 0, found, torch.nan)

        stats = {
            'future_kl_mean': large_mean(self.future_kl),
            'raw_weight_mean': large_mean(self.raw_weight),
            'influence_weight_mean': large_mean(self.weight),
            'influence_weight_min': extreme(self.weight, largest=False),
            'influence_weight_max': extreme(self.weight, largest=True),
            'safety_keep_ratio': mean(self.safety_mask),
            'safety_fired_ratio': mean(~self.safety_mask),
            'filtered_ratio': mean(~self.participation_mask),
            'dropped_response_ratio': self.dropped.to(torch.float32).mean(),
            'neg_adv_ratio_p99': self._quantile(self.ratio.expand_as(mask), mask & self.negative_advantage, 0.99),
        }
        if self.weight_bounds is not None:
            low, high = self.weight_bounds
            stats['clipped_high_ratio'] = mean(self.raw_weight > high)
            stats['clipped_low_ratio'] = mean(self.raw_weight < low)
        return stats

    @staticmethod
    def _quantile(values: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
        """Nearest-rank quantile of ``values[mask]``, NaN when the mask is empty.

        On the CPU a sync costs nothing and selecting first is several times faster. Elsewhere
        ``values[mask]`` would wait for the device (its size depends on the data) and has no meta
        kernel, so every value is sorted with the unselected ones as NaN, which sorts last and ties
        with a selected NaN exactly as ``kthvalue`` ranks it, and the rank is read with ``gather``.
        """
        if values.device.type == 'cpu':
            return _masked_quantile(values, mask, q)
        return FIPOStats._sorted_quantile(values, mask, q)

    @staticmethod
    def _sorted_quantile(values: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
        """``_quantile`` with no data-dependent shape: no device sync, and a meta kernel for each step."""
        flat = values.reshape(-1)
        if flat.numel() == 0:
            return torch.tensor(math.nan, device=values.device)
        ordered = torch.where(mask.reshape(-1), flat, math.nan).sort().values
        # ceil(q * count) in integers (float32 would round 0.99 * 100 up to 100): q as a fraction.
        numerator, denominator = fractions.Fraction(q).limit_denominator(1_000_000).as_integer_ratio()
        count = mask.sum()
        rank = ((count * numerator + denominator - 1) // denominator).clamp(min=1)
        return ordered.gather(0, (rank - 1).reshape(1)).reshape(())

    def _check(self) -> None:
        """Refuse fields ``summary`` cannot interpret (stats built by hand), naming the field."""
        mask = self.completion_mask
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
            raise ValueError(f'FIPOStats.completion_mask must be a [B, T] bool tensor; got {_describe(mask)}.')
        batch, length = mask.shape
        shapes = {'future_kl': ((batch, length), ), 'raw_weight': ((batch, length), ),
                  'weight': ((batch, length), ), 'safety_mask': ((batch, length), ),
                  'participation_mask': ((batch, length), ), 'ratio': ((batch, length), (batch, 1)),
                  'negative_advantage': ((batch, length), (batch, 1)), 'dropped': ((batch, ), )}
        for name, allowed in shapes.items():
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) not in allowed:
                raise ValueError(f'FIPOStats.{name} must be a tensor of shape '
                                 f'{" or ".join(str(shape) for shape in allowed)}; got {_describe(value)}.')
            wants_bool = name in ('safety_mask', 'participation_mask', 'negative_advantage', 'dropped')
            if (value.dtype == torch.bool) != wants_bool or value.is_complex():
                raise ValueError(f'FIPOStats.{name} must be a {"bool" if wants_bool else "real floating"} '
                                 f'tensor; got {value.dtype}.')


@torch.no_grad()
def compute_fipo_influence(log_ratio: torch.Tensor,
                           completion_mask: torch.Tensor,
                           advantages: torch.Tensor,
                           config: FIPOConfig | None = None,
                           ratio: torch.Tensor | None = None) -> tuple[torch.Tensor, FIPOStats]:
    """Per-token FIPO influence weights.

    Args:
        log_ratio: ``[B, T]`` log pi_new - log pi_old per token, any float dtype; may require grad
            (it is read, never differentiated).
        completion_mask: ``[B, T]`` bool or 0/1; True on the completion tokens.
        advantages: ``[B]``, ``[B, 1]`` or ``[B, T]``; only its sign is used (safety rule).
        config: hyper-parameters; ``FIPOConfig()`` (ms-swift's defaults) when omitted.
        ratio: the importance ratio that the participation filter and the safety rule test,
            ``[B, T]`` or ``[B, 1]`` (sequence-level importance sampling); default ``exp(log_ratio)``.

    Returns:
        ``(weight, stats)``: ``weight`` is ``[B, T]`` float32 and detached; multiply the per-token
        policy loss by it (equivalently, the advantage, since the weight is positive). Always finite,
        whatever the values of the inputs (NaN, inf, huge).

    Raises:
        TypeError: an argument is not a tensor (``config`` not a ``FIPOConfig``), or has a dtype it
            cannot be read as (integer, bool or complex log-ratio or ratio; complex mask or
            advantages; bool advantages). Nothing is cast silently.
        ValueError: a shape that does not fit ``[B, T]``, or tensors on different devices.

    No returned tensor shares memory with another one or with an input: ``weight`` is not
    ``stats.weight`` (equal values, separate storage), so editing either in place, or editing an
    input afterwards, cannot change the other or ``stats.summary``.
    """
    weight, stats = fipo_influence(log_ratio, completion_mask, advantages, config, ratio)
    return weight.clone(), stats


def fipo_influence(log_ratio: torch.Tensor,
                   completion_mask: torch.Tensor,
                   advantages: torch.Tensor,
                   config: FIPOConfig | None = None,
                   ratio: torch.Tensor | None = None) -> tuple[torch.Tensor, FIPOStats]:
    """``compute_fipo_influence`` whose returned weight IS ``stats.weight`` (saves a copy): for
    callers in this package that only read it, e.g. to build a new tensor from it."""
    device = log_ratio.device if isinstance(log_ratio, torch.Tensor) else None
    # What must run in float32 is the Future-KL sum (its matmuls are the only ops autocast lowers here), and
    # discounted_future_sum guards itself. Everything after it (exp, clamp, lerp, where, comparisons, the
    # summaries) is autocast-safe: autocast leaves those ops in their inputs' dtype, float32. This outer
    # guard keeps any matmul added later in float32 too; tests/test_ops_precision.py pins both halves.
    with autocast_off(device):
        return _fipo_influence(log_ratio, completion_mask, advantages, config, ratio)


def _fipo_influence(log_ratio: torch.Tensor,
                    completion_mask: torch.Tensor,
                    advantages: torch.Tensor,
                    config: FIPOConfig | None,
                    ratio: torch.Tensor | None) -> tuple[torch.Tensor, FIPOStats]:
    config = _check_config(config)
    _check_tensor(log_ratio, 'log_ratio', 'a [B, T] floating-point', floating=True)
    if log_ratio.dim() != 2:
        raise ValueError(f'log_ratio must be [B, T]; got shape {tuple(log_ratio.shape)}.')
    batch, length = log_ratio.shape
    device = log_ratio.device
    _check_tensor(completion_mask, 'completion_mask', 'a [B, T] bool or 0/1', device=device)
    if completion_mask.shape != log_ratio.shape:
        raise ValueError(f'completion_mask must match log_ratio {tuple(log_ratio.shape)}; '
                         f'got {tuple(completion_mask.shape)}.')
    _check_tensor(advantages, 'advantages', 'a [B], [B, 1] or [B, T] real', device=device, boolean=False)
    advantages = _as_rows(advantages.detach(), 'advantages', batch, length)
    if ratio is not None:
        _check_tensor(ratio, 'ratio', 'a [B, T] or [B, 1] floating-point', floating=True, device=device)

    log_ratio = log_ratio.detach().to(torch.float32)
    # A copy even when it is already bool: stats.completion_mask must not be the caller's tensor.
    mask = completion_mask.detach().to(torch.bool, copy=True)
    # Masks enter the arithmetic as float 0/1 (and bools are made from floats through uint8): on CPU,
    # kernels that read or write bool tensors run several times slower than float ones.
    mask_f = mask.view(torch.uint8).to(torch.float32)
    clamp = config.log_ratio_clamp
    if ratio is None:
        ratio = torch.exp(log_ratio)
    else:  # a copy unless the clamp below makes one: stats.ratio must not be the caller's tensor
        ratio = _as_rows(ratio.detach(), 'ratio', batch, length).to(torch.float32, copy=clamp is None)
    if clamp is not None:
        ratio = ratio.clamp(math.exp(-clamp), math.exp(clamp))

    participation, keep = None, mask_f
    threshold = config.participation_threshold
    if threshold is not None:
        keep = torch.addcmul(mask_f, mask_f, _indicator(torch.gt, ratio, threshold), value=-1.0)  # mask * not-high
        participation = _as_bool(keep)
    # Huge finite log-ratios are clamped too (two of 3e38 would sum to inf), and NaN is replaced,
    # before the mask multiplies, so that excluded positions contribute exactly 0.
    limit = clamp if clamp is not None else _LOG_RATIO_LIMIT
    delta = log_ratio.clamp(-limit, limit).nan_to_num_(0.0).mul_(keep)

    # |Future-KL| <= 1e30 / (1 - gamma) <= 2.5e37 (decay_rate <= 2**24) is finite, so multiplying by
    # the mask cannot produce NaN.
    future_kl = discounted_future_sum(delta, config.gamma)
    future_kl = future_kl.mul_(mask_f) if future_kl.is_contiguous() else future_kl * mask_f
    raw_weight = torch.exp(future_kl).clamp_(max=_FLOAT32_MAX)

    bounds = config.weight_bounds
    if bounds is not None:
        weight = raw_weight.clamp(*bounds)
    elif config.unclipped_weight_cap is not None:
        weight = raw_weight.clamp(max=config.unclipped_weight_cap)
    else:
        weight = raw_weight

    negative = _indicator(torch.lt, advantages, 0.0)
    negative_advantage = _as_bool(negative)
    if config.safety_threshold is None:
        safety_mask = torch.ones_like(mask)
    else:
        flagged = (negative * _indicator(torch.gt, ratio, config.safety_threshold)).expand(batch, length)
        # A lerp with a 0/1 weight is an exact select (torch evaluates end - (end - start) * (1 - w)
        # for w >= 0.5), and on CPU cheaper than torch.where on a bool condition.
        target = _safety_target(weight, bounds)
        weight = torch.lerp(weight, target, flagged) if weight is raw_weight else weight.lerp_(target, flagged)
        safety_mask = ~_as_bool(flagged)
    if weight is raw_weight:  # nothing bounded it: stats.weight and stats.raw_weight must not alias
        weight = raw_weight.clone()

    dropped = torch.zeros(batch, dtype=torch.bool, device=weight.device)
    if config.sequence_drop:
        # The authors drop a response when the dual clip binds on more than one of its negative-
        # advantage tokens, i.e. ratio > c where the weighted advantage is still non-zero.
        threshold = config.dual_clip_threshold
        assert threshold is not None  # FIPOConfig refuses sequence_drop without delta or filter_threshold
        bound = negative_advantage & (ratio > threshold) & mask & (weight > 0)
        dropped = bound.sum(dim=1) > 1
        weight = torch.where(dropped[:, None], 0.0, weight)

    stats = FIPOStats(future_kl=future_kl, raw_weight=raw_weight, weight=weight, safety_mask=safety_mask,
                      participation_mask=mask.clone() if participation is None else participation,
                      completion_mask=mask, ratio=ratio,
                      negative_advantage=negative_advantage, dropped=dropped, weight_bounds=bounds)
    return weight, stats


def _masked_quantile(values: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
    """Nearest-rank quantile of ``values[mask]``; NaN when the mask is empty. Syncs with the device."""
    selected = values[mask]
    if selected.numel() == 0:
        return torch.tensor(math.nan, device=values.device)
    # kthvalue, unlike torch.quantile, has no input-size limit (long responses, big batches).
    rank = max(1, math.ceil(q * selected.numel()))
    return selected.kthvalue(rank).values


def _indicator(compare: Callable[..., torch.Tensor], values: torch.Tensor, threshold: float) -> torch.Tensor:
    """``compare(values, threshold)`` as float32 1.0/0.0, written straight into a float tensor."""
    return compare(values, threshold, out=torch.empty(values.shape, dtype=torch.float32, device=values.device))


def _as_bool(indicator: torch.Tensor) -> torch.Tensor:
    """A float 0/1 tensor as bool, through uint8 (a direct float -> bool cast is slow on CPU)."""
    return indicator.to(torch.uint8).view(torch.bool)


def _safety_target(weight: torch.Tensor, bounds: tuple[float, float] | None) -> torch.Tensor:
    """What a flagged token's weight becomes: ``weight.clamp(*SAFETY_WEIGHT_BOUNDS)``.

    Clamping into [a, b] and then into [c, d] is clamping into [clamp(a, c, d), clamp(b, c, d)].
    When that interval is a single point (the defaults: [1, 1.2] then [0.8, 1] gives 1), the target
    is that point as a 0-dim tensor and no pass over the weights is needed.
    """
    low, high = SAFETY_WEIGHT_BOUNDS
    if bounds is not None:
        point_low, point_high = (min(max(bound, low), high) for bound in bounds)
        if point_low == point_high:
            return _scalar(point_low, weight.dtype, weight.device)
    return weight.clamp(low, high)


@functools.lru_cache(maxsize=16)
def _scalar(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype, device=device)  # cached: creating a tensor costs ~5 us


def _check_config(config: Any) -> FIPOConfig:
    if config is None:
        return FIPOConfig()
    if not isinstance(config, FIPOConfig):
        raise TypeError(f'config must be a FIPOConfig (or None for the defaults); got {type(config).__name__}. '
                        'Build one with FIPOConfig(**values) or FIPOConfig.from_preset(name).')
    return config


def _check_tensor(value: Any, name: str, expected: str, *, floating: bool = False, boolean: bool = True,
                  device: torch.device | None = None) -> None:
    """Metadata checks only (type, dtype, device): no pass over the values."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f'{name} must be {expected} torch.Tensor; got {type(value).__name__}.')
    dtype = value.dtype
    if (floating and not dtype.is_floating_point) or dtype.is_complex or (not boolean and dtype == torch.bool):
        raise TypeError(f'{name} must be {expected} tensor; got dtype {dtype} (cast it yourself if that is meant).')
    if device is not None and value.device != device:
        raise ValueError(f'{name} must be on the device of log_ratio ({device}); got {value.device}.')


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f'{value.dtype} tensor of shape {tuple(value.shape)}'
    return type(value).__name__


def _as_rows(values: torch.Tensor, name: str, batch: int, length: int) -> torch.Tensor:
    """View ``[B]``, ``[B, 1]`` or ``[B, T]`` as something that broadcasts against ``[B, T]``."""
    if values.dim() == 1 and values.shape[0] == batch:
        return values.unsqueeze(1)
    if values.dim() == 2 and values.shape[0] == batch and values.shape[1] in (1, length):
        return values
    raise ValueError(f'{name} must be [B], [B, 1] or [B, T] with B={batch}, T={length}; '
                     f'got shape {tuple(values.shape)}.')
