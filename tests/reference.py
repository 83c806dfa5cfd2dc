"""Float64 brute-force FIPO, written from the algorithm's definition for tests only: a loop over
positions, no scan, no blocking, nothing shared with the library."""

from __future__ import annotations

import math

import torch


def brute_future_kl(delta: torch.Tensor, gamma: float) -> torch.Tensor:
    """sum_{k >= t} gamma**(k - t) * delta[:, k], one position at a time, in float64."""
    delta = delta.double()
    length = delta.shape[-1]
    # powers[j] = gamma**j, each computed directly (no running product that could drift).
    powers = torch.tensor(gamma, dtype=torch.float64).pow(torch.arange(length, dtype=torch.float64))
    out = torch.zeros_like(delta)
    for t in range(length):
        out[..., t] = (delta[..., t:] * powers[:length - t]).sum(-1)
    return out


def brute_fipo(log_ratio: torch.Tensor,
               mask: torch.Tensor,
               advantages: torch.Tensor,
               *,
               decay_rate: float = 32.0,
               clip_range: float | None = 0.2,
               clip_high_only: bool = True,
               safety_threshold: float | None = 4.0,
               delta: float | None = None,
               ratio: torch.Tensor | None = None,
               filter_threshold: float | None = None,
               log_ratio_clamp: float | None = None,
               unclipped_weight_cap: float | None = None,
               drop_threshold: float | None = None) -> dict[str, torch.Tensor]:
    """Every per-token FIPO quantity, float64/bool: weight, future_kl, raw_weight ([B, T], exp of
    future_kl), safety (False where the rule fired), participation (True where a log-ratio entered
    the Future-KL), dropped ([B]).

    A token stays out of the Future-KL when its ratio exceeds ``delta`` OR ``filter_threshold`` (each
    filter applies on its own). ``drop_threshold`` (the dual clip c) turns the sequence drop on: a row
    with more than one completion token of negative advantage, ratio > c and a non-zero weight gets
    weight 0 everywhere.
    """
    log_ratio = log_ratio.double()
    mask = mask.bool()
    batch, length = log_ratio.shape
    ratio = torch.exp(log_ratio) if ratio is None else ratio.double().expand(batch, length)
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
        ratio = ratio.clamp(math.exp(-log_ratio_clamp), math.exp(log_ratio_clamp))
    advantages = advantages.double()
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    advantages = advantages.expand(batch, length)
    contributes = mask.clone()
    for threshold in (delta, filter_threshold):
        if threshold is not None:
            contributes &= ~(ratio > threshold)
    step = torch.where(contributes, log_ratio, torch.zeros((), dtype=torch.float64))
    future_kl = torch.where(mask, brute_future_kl(step, 2.0**(-1.0 / decay_rate)), 0.0)
    raw_weight = torch.exp(future_kl)
    weight = raw_weight
    if clip_range:
        weight = weight.clamp(1.0 if clip_high_only else 1.0 - clip_range, 1.0 + clip_range)
    elif unclipped_weight_cap is not None:
        weight = weight.clamp(max=unclipped_weight_cap)
    safety = torch.ones_like(mask)
    if safety_threshold is not None:
        safety = ~((advantages < 0) & (ratio > safety_threshold))
        weight = torch.where(safety, weight, weight.clamp(0.8, 1.0))
    dropped = torch.zeros(batch, dtype=torch.bool)
    if drop_threshold is not None:
        for row in range(batch):
            bound = [t for t in range(length) if mask[row, t] and advantages[row, t] < 0
                     and ratio[row, t] > drop_threshold and weight[row, t] > 0]
            dropped[row] = len(bound) > 1
        weight = torch.where(dropped[:, None], 0.0, weight)
    return dict(weight=weight, future_kl=future_kl, raw_weight=raw_weight, safety=safety, participation=contributes,
                dropped=dropped)


def brute_fipo_weight(log_ratio: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, *,
                      sequence_drop: bool = False, **options) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weight, future_kl, safety_mask) of ``brute_fipo``; ``sequence_drop`` drops with c = delta, else the
    filter threshold (the dual clip of the authors' code)."""
    if sequence_drop:
        delta, filter_threshold = options.get('delta'), options.get('filter_threshold')
        options['drop_threshold'] = delta if delta is not None else filter_threshold
    result = brute_fipo(log_ratio, mask, advantages, **options)
    return result['weight'], result['future_kl'], result['safety']


def random_inputs(batch: int, length: int, seed: int, scale: float = 0.3, holes: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log_ratio, completion_mask, advantages): right-padded rows of random length, masked holes."""
    generator = torch.Generator().manual_seed(seed)
    log_ratio = torch.randn(batch, length, generator=generator) * scale
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    if holes:
        mask &= torch.rand(batch, length, generator=generator) > 0.15
    advantages = torch.randn(batch, generator=generator)
    return log_ratio, mask, advantages


def is_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5,
             scale: torch.Tensor | None = None) -> bool:
    """|actual - expected| <= tol * max(1, scale), elementwise, in float64.

    ``scale`` defaults to |expected|; for a sum, pass the same sum over |terms|: float32 rounding is
    relative to that, not to a result that cancellation made small.
    """
    actual, expected = actual.double(), expected.double()
    if actual.shape != expected.shape:
        return False
    if actual.numel() == 0:
        return True
    scale = expected.abs() if scale is None else scale.double()
    error = (actual - expected).abs()
    return not math.isnan(float(error.max())) and bool((error <= tol * scale.clamp(min=1.0)).all())


def authors_weight(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                   response_mask: torch.Tensor, *, decay_rate: float, clip_ratio: float, clip_high_only: bool,
                   safety_thresh: float, clip_ratio_c: float, clip_low: float = 0.2,
                   clip_high: float = 0.28) -> torch.Tensor:
    """Per-token weights of the authors' ``future_kl`` loss mode, re-derived in float64 from its
    description (clamp, filter, Future-KL, clip or cap, safety rule, then the sequence drop found
    by comparing the PPO loss with its dual-clip bound). Dropped responses get weight 0."""
    log_ratio = (log_prob.double() - old_log_prob.double()).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    mask = response_mask.bool()
    advantages = advantages.double()
    contributes = mask & ~(log_ratio > math.log(clip_ratio_c))
    future_kl = brute_future_kl(torch.where(contributes, log_ratio, 0.0), 2.0**(-1.0 / decay_rate))
    if clip_ratio != 0.0:
        low = 1.0 if clip_high_only else 1.0 - clip_ratio
        weight = torch.exp(future_kl).clamp(low, 1.0 + clip_ratio)
    else:
        weight = torch.exp(future_kl).clamp(max=10.0)
    flagged = (advantages < 0) & (ratio > safety_thresh)
    weight = torch.where(flagged, weight.clamp(0.8, 1.0), weight)
    weighted = advantages * weight
    loss_unclipped = -weighted * ratio
    loss_clipped = -weighted * ratio.clamp(1 - clip_low, 1 + clip_high)
    ppo_loss = torch.maximum(loss_unclipped, loss_clipped)
    dual_bound = -weighted * clip_ratio_c
    bound_hit = (advantages < 0) & (ppo_loss > dual_bound) & mask
    keep = (bound_hit.sum(dim=1) <= 1)[:, None]
    return torch.where(keep, weight, 0.0)
