"""FIPO for any PPO/GRPO-style loop, in the two forms a host's loss can take it.

FIPO's objective is the clipped PPO/DAPO surrogate with every advantage A_t replaced by A_t * f_t.
The weight f_t is positive and detached, so a host can either reweight the advantages before its own
loss reads them (``reweight_advantages``) or multiply the per-token loss it already computed
(``apply_fipo``). Pure torch; it knows nothing of trainers.
"""

from __future__ import annotations

from typing import Literal

import torch

from swift_fipo.config import FIPOConfig
from swift_fipo.ops.influence import FIPOStats, compute_fipo_influence, fipo_influence

Reduction = Literal['none', 'token_mean', 'sum']
_REDUCTIONS = ('none', 'token_mean', 'sum')


def reweight_advantages(advantages: torch.Tensor,
                        log_ratio: torch.Tensor,
                        completion_mask: torch.Tensor,
                        config: FIPOConfig | None = None,
                        *,
                        ratio: torch.Tensor | None = None) -> tuple[torch.Tensor, FIPOStats]:
    """Advantages multiplied by FIPO's influence weights, for a loss that reads advantages.

    Since f_t > 0, ``A_t * f_t`` keeps every sign the clipped surrogate branches on (the dual clip of
    negative advantages included), so the host's own loss with these advantages is FIPO's loss.

    Args:
        advantages: ``[B]``, ``[B, 1]`` or ``[B, T]``.
        log_ratio, completion_mask, config, ratio: as for ``compute_fipo_influence``.

    Returns:
        ``(weighted, stats)``: ``weighted`` is ``[B, T]`` in the advantages' dtype when that is floating,
        else float32 (integer advantages times a weight of 1.2 are not integers), a new tensor
        (``advantages`` is not modified); ``stats`` as from ``compute_fipo_influence``.
    """
    weight, stats = compute_fipo_influence(log_ratio, completion_mask, advantages, config, ratio=ratio)
    rows = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    dtype = rows.dtype if rows.dtype.is_floating_point else torch.float32
    return rows.to(dtype) * weight.to(dtype), stats


def apply_fipo(per_token_loss: torch.Tensor,
               log_ratio: torch.Tensor,
               completion_mask: torch.Tensor,
               advantages: torch.Tensor,
               config: FIPOConfig | None = None,
               *,
               ratio: torch.Tensor | None = None,
               reduction: Reduction = 'none') -> tuple[torch.Tensor, FIPOStats]:
    """Multiply a per-token policy loss by FIPO's influence weights.

    FIPO's objective is the clipped PPO/DAPO surrogate with every advantage A_t replaced by
    A_t * f_t. The weight f_t is positive and detached, so that is exactly ``per_token_loss * f_t``:
    gradients flow through ``per_token_loss`` only.

    Args:
        per_token_loss: the loss before any reduction, ``[B, T]`` (or ``[B, 1]`` for a
            sequence-level loss); typically ``-min(r * A, clip(r) * A)``.
        log_ratio: ``[B, T]`` log pi_new - log pi_old of the sampled tokens (may require grad; it
            is only read).
        completion_mask: ``[B, T]`` bool or 0/1, True on completion tokens.
        advantages: ``[B]``, ``[B, 1]`` or ``[B, T]``; only its sign is read (the safety rule).
        config: FIPO hyper-parameters; ``FIPOConfig()`` when omitted.
        ratio: importance ratio for the participation filter and the safety rule; default
            ``exp(log_ratio)``. Pass ``[B, 1]`` when the loop uses sequence-level importance sampling.
        reduction: ``'none'`` returns the weighted ``[B, T]`` loss (positions outside the mask are
            left as they are, for the caller to mask); ``'token_mean'`` returns the DAPO loss, the
            sum over completion tokens divided by their count; ``'sum'`` the sum over completion
            tokens (divide by your own global token count, as DAPO does across micro-batches).

    Returns:
        ``(loss, stats)``. ``loss`` has the promoted dtype of ``per_token_loss`` and float32 (half
        precision losses come back in float32). ``stats.summary`` holds the scalar metrics; log them
        as ``fipo/<key>``. ``loss`` is a new tensor: editing it in place changes nothing in ``stats``.

    Raises:
        TypeError / ValueError: as ``compute_fipo_influence``, and for a ``per_token_loss`` that is not
        a floating-point ``[B, T]`` or ``[B, 1]`` tensor on the device of ``log_ratio``.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f'reduction must be one of {_REDUCTIONS}; got {reduction!r}.')
    if not isinstance(per_token_loss, torch.Tensor) or not per_token_loss.dtype.is_floating_point:
        got = per_token_loss.dtype if isinstance(per_token_loss, torch.Tensor) else type(per_token_loss).__name__
        raise TypeError(f'per_token_loss must be a floating-point torch.Tensor; got {got}.')
    if not isinstance(log_ratio, torch.Tensor):
        raise TypeError(f'log_ratio must be a [B, T] floating-point torch.Tensor; got {type(log_ratio).__name__}.')
    if log_ratio.dim() != 2:
        raise ValueError(f'log_ratio must be [B, T]; got shape {tuple(log_ratio.shape)}.')
    batch, length = log_ratio.shape
    # Exactly [B, T] or [B, 1]: a 0-dim, [T] or [1, T] loss would broadcast into a [B, T] result
    # silently, every row then carrying the same loss.
    if per_token_loss.dim() != 2 or per_token_loss.shape[0] != batch or per_token_loss.shape[1] not in (1, length):
        raise ValueError(f'per_token_loss must be [B, T] or [B, 1] with B={batch}, T={length} (the shape of '
                         f'log_ratio); got {_shape(per_token_loss)}.')
    if per_token_loss.device != log_ratio.device:
        raise ValueError(f'per_token_loss must be on the device of log_ratio ({log_ratio.device}); '
                         f'got {per_token_loss.device}.')

    weight, stats = fipo_influence(log_ratio, completion_mask, advantages, config, ratio=ratio)
    weighted = per_token_loss * weight
    if reduction == 'none':
        return weighted, stats

    # torch.where, not a multiply: a NaN/inf loss at a padded position must not leak into the sum.
    total = torch.where(stats.completion_mask, weighted, 0.0).sum()
    if reduction == 'sum':
        return total, stats
    return total / stats.completion_mask.sum().clamp(min=1), stats


def _shape(value: object) -> str:
    return f'shape {tuple(value.shape)}' if isinstance(value, torch.Tensor) else type(value).__name__
