"""FIPO influence weights: participation filter, Future-KL, clipping and the safety rule.

``compute_fipo_influence`` is the single implementation every integration calls (ms-swift's HF and
Megatron trainers, TRL, custom loops). It is a pure function of tensors and a ``FIPOConfig``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch

from swift_fipo.config import FIPOConfig
from swift_fipo.ops.future_kl import discounted_future_sum

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
    weight_bounds: Optional[tuple[float, float]]
    """The clip interval that was applied, or None."""

    @functools.cached_property
    def summary(self) -> dict[str, torch.Tensor]:
        """Scalar (0-dim float32) summaries over completion tokens; NaN where there are none.

        How each combines across ranks and accumulation chunks: ``integrations.contract.METRIC_REDUCTIONS``.
        Tensors rather than floats so that no device sync happens until a caller asks for one.
        """
        mask = self.completion_mask
        count = mask.sum().to(torch.float32)

        def mean(values: torch.Tensor) -> torch.Tensor:
            return torch.where(mask, values.to(torch.float32), 0.0).sum() / count

        def extreme(values: torch.Tensor, largest: bool) -> torch.Tensor:
            fill = -torch.inf if largest else torch.inf
            masked = torch.where(mask, values, fill)
            found = masked.max() if largest else masked.min()
            return torch.where(count > 0, found, torch.nan)

        stats = {
            'future_kl_mean': mean(self.future_kl),
            'raw_weight_mean': mean(self.raw_weight),
            'influence_weight_mean': mean(self.weight),
            'influence_weight_min': extreme(self.weight, largest=False),
            'influence_weight_max': extreme(self.weight, largest=True),
            'safety_keep_ratio': mean(self.safety_mask),
            'safety_fired_ratio': mean(~self.safety_mask),
            'filtered_ratio': mean(~self.participation_mask),
            'dropped_response_ratio': self.dropped.to(torch.float32).mean(),
            'neg_adv_ratio_p99': _masked_quantile(self.ratio.expand_as(mask), mask & self.negative_advantage, 0.99),
        }
        if self.weight_bounds is not None:
            low, high = self.weight_bounds
            stats['clipped_high_ratio'] = mean(self.raw_weight > high)
            stats['clipped_low_ratio'] = mean(self.raw_weight < low)
        return stats


@torch.no_grad()
def compute_fipo_influence(log_ratio: torch.Tensor,
                           completion_mask: torch.Tensor,
                           advantages: torch.Tensor,
                           config: Optional[FIPOConfig] = None,
                           ratio: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, FIPOStats]:
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
        policy loss by it (equivalently, the advantage, since the weight is positive). Always finite.
    """
    config = config if config is not None else FIPOConfig()
    if log_ratio.dim() != 2:
        raise ValueError(f'log_ratio must be [B, T]; got shape {tuple(log_ratio.shape)}.')
    batch, length = log_ratio.shape
    if completion_mask.shape != log_ratio.shape:
        raise ValueError(f'completion_mask must match log_ratio {tuple(log_ratio.shape)}; '
                         f'got {tuple(completion_mask.shape)}.')
    advantages = _as_rows(advantages.detach(), 'advantages', batch, length)

    log_ratio = log_ratio.detach().to(torch.float32)
    mask = completion_mask.detach().to(torch.bool)
    # Masks enter the arithmetic as float 0/1 (and bools are made from floats through uint8): on CPU,
    # kernels that read or write bool tensors run several times slower than float ones.
    mask_f = mask.view(torch.uint8).to(torch.float32)
    ratio = torch.exp(log_ratio) if ratio is None else _as_rows(ratio.detach(), 'ratio', batch, length).float()
    if config.log_ratio_clamp is not None:
        limit = config.log_ratio_clamp
        log_ratio = log_ratio.clamp(-limit, limit)
        ratio = ratio.clamp(math.exp(-limit), math.exp(limit))

    participation, keep = mask, mask_f
    threshold = config.participation_threshold
    if threshold is not None:
        keep = torch.addcmul(mask_f, mask_f, _indicator(torch.gt, ratio, threshold), value=-1.0)  # mask * not-high
        participation = _as_bool(keep)
    # NaN/inf are replaced before the mask multiplies, so that excluded positions contribute exactly 0.
    delta = torch.nan_to_num(log_ratio, nan=0.0, posinf=_LOG_RATIO_LIMIT, neginf=-_LOG_RATIO_LIMIT).mul_(keep)

    # |Future-KL| <= 1e30 * T is finite, so multiplying by the mask cannot produce NaN.
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

    dropped = torch.zeros(batch, dtype=torch.bool, device=weight.device)
    if config.sequence_drop:
        # The authors drop a response when the dual clip binds on more than one of its negative-
        # advantage tokens, i.e. ratio > c where the weighted advantage is still non-zero.
        bound = negative_advantage & (ratio > config.dual_clip_threshold) & mask & (weight > 0)
        dropped = bound.sum(dim=1) > 1
        weight = torch.where(dropped[:, None], 0.0, weight)

    stats = FIPOStats(future_kl=future_kl, raw_weight=raw_weight, weight=weight, safety_mask=safety_mask,
                      participation_mask=participation.expand(batch, length), completion_mask=mask, ratio=ratio,
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


def _indicator(compare, values: torch.Tensor, threshold: float) -> torch.Tensor:
    """``compare(values, threshold)`` as float32 1.0/0.0, written straight into a float tensor."""
    return compare(values, threshold, out=torch.empty(values.shape, dtype=torch.float32, device=values.device))


def _as_bool(indicator: torch.Tensor) -> torch.Tensor:
    """A float 0/1 tensor as bool, through uint8 (a direct float -> bool cast is slow on CPU)."""
    return indicator.to(torch.uint8).view(torch.bool)


def _safety_target(weight: torch.Tensor, bounds: Optional[tuple[float, float]]) -> torch.Tensor:
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


def _as_rows(values: torch.Tensor, name: str, batch: int, length: int) -> torch.Tensor:
    """View ``[B]``, ``[B, 1]`` or ``[B, T]`` as something that broadcasts against ``[B, T]``."""
    if values.dim() == 1 and values.shape[0] == batch:
        return values.unsqueeze(1)
    if values.dim() == 2 and values.shape[0] == batch and values.shape[1] in (1, length):
        return values
    raise ValueError(f'{name} must be [B], [B, 1] or [B, T] with B={batch}, T={length}; '
                     f'got shape {tuple(values.shape)}.')
