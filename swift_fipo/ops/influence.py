"""FIPO influence weights: participation filter, Future-KL, clipping and the safety rule.

``compute_fipo_influence`` is the single implementation every integration calls (ms-swift's HF and
Megatron trainers, TRL, custom loops). It is a pure function of tensors and a ``FIPOConfig``.
"""

from __future__ import annotations

import functools
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
    weight_bounds: Optional[tuple[float, float]]
    """The clip interval that was applied, or None."""

    @functools.cached_property
    def summary(self) -> dict[str, torch.Tensor]:
        """Scalar (0-dim float32) summaries over completion tokens; NaN where there are none.

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
            'participation_ratio': mean(self.participation_mask),
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
    advantages = _as_rows(advantages, 'advantages', batch, length)

    log_ratio = log_ratio.detach().to(torch.float32)
    mask = completion_mask.detach().to(torch.bool)
    ratio = torch.exp(log_ratio) if ratio is None else _as_rows(ratio.detach(), 'ratio', batch, length).float()

    participation = mask
    if config.delta is not None:
        participation = participation & ~(ratio > config.delta)
    # torch.where rather than a multiply: NaN/inf at excluded positions must not leak.
    delta = torch.where(participation, log_ratio, 0.0)
    delta = torch.nan_to_num(delta, nan=0.0, posinf=_LOG_RATIO_LIMIT, neginf=-_LOG_RATIO_LIMIT)

    future_kl = torch.where(mask, discounted_future_sum(delta, config.gamma), 0.0)
    raw_weight = torch.exp(future_kl).clamp(max=_FLOAT32_MAX)

    bounds = config.weight_bounds
    weight = raw_weight if bounds is None else raw_weight.clamp(*bounds)

    if config.safety_threshold is None:
        safety_mask = torch.ones_like(mask)
    else:
        flagged = (advantages < 0) & (ratio > config.safety_threshold)
        safety_mask = ~flagged.expand(batch, length)
        weight = torch.where(safety_mask, weight, weight.clamp(*SAFETY_WEIGHT_BOUNDS))

    stats = FIPOStats(future_kl=future_kl, raw_weight=raw_weight, weight=weight, safety_mask=safety_mask,
                      participation_mask=participation.expand(batch, length), completion_mask=mask,
                      weight_bounds=bounds)
    return weight, stats


def _as_rows(values: torch.Tensor, name: str, batch: int, length: int) -> torch.Tensor:
    """View ``[B]``, ``[B, 1]`` or ``[B, T]`` as something that broadcasts against ``[B, T]``."""
    if values.dim() == 1 and values.shape[0] == batch:
        return values.unsqueeze(1)
    if values.dim() == 2 and values.shape[0] == batch and values.shape[1] in (1, length):
        return values
    raise ValueError(f'{name} must be [B], [B, 1] or [B, T] with B={batch}, T={length}; '
                     f'got shape {tuple(values.shape)}.')
