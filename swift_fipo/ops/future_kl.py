"""Future-KL: the discounted sum of a sequence's future log-ratios, in exact O(B*T) work.

    future_kl[b, t] = sum_{k >= t} gamma**(k - t) * delta[b, k]

ms-swift's native port multiplies every position by a decay row covering all later positions
(O(T^2) work, and T^2 floats kept alive by autograd). The same sum obeys the recurrence
F_t = delta_t + gamma * F_{t+1}, which we evaluate blockwise:

1. cut the sequence into blocks of ``block_size`` tokens and solve every block locally with one small
   matmul against a fixed ``[L, L]`` upper-triangular decay matrix;
2. the totals at the block heads form the same recurrence with decay ``gamma**L`` over T/L entries:
   solve it recursively;
3. add each block's carry-in, ``gamma**(L - i) * F(next block head)``, to its positions i.

Work is O(B*T*L) for a fixed L and memory O(B*T + L^2); every output is a dot product of at most L
terms plus one carry per level, so float32 rounding stays at a few ulp of sum(|terms|).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

DEFAULT_BLOCK_SIZE = 64


@functools.lru_cache(maxsize=64)
def _decay_matrix(size: int, gamma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """D[k, t] = gamma**(k - t) for k >= t, else 0; so (x @ D)[t] = sum_{k >= t} gamma**(k-t) x[k]."""
    index = torch.arange(size, dtype=torch.float64)
    distance = index.unsqueeze(1) - index.unsqueeze(0)
    matrix = torch.where(distance >= 0, torch.tensor(gamma, dtype=torch.float64).pow(distance.clamp(min=0)), 0.0)
    return matrix.to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _carry_decay(size: int, gamma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """gamma**(size - i) for i in 0..size-1: how much the next block's head counts at position i."""
    exponent = torch.arange(size, 0, -1, dtype=torch.float64)
    return torch.tensor(gamma, dtype=torch.float64).pow(exponent).to(dtype=dtype, device=device)


def discounted_future_sum(values: torch.Tensor, gamma: float, block_size: int = DEFAULT_BLOCK_SIZE) -> torch.Tensor:
    """Return ``out[..., t] = sum_{k >= t} gamma**(k - t) * values[..., k]`` over the last dimension.

    ``values`` must be finite (non-finite entries would turn the zero entries of the decay matrix
    into NaN); the result has the dtype of ``values``. Not differentiable by design: callers run it
    under ``torch.no_grad``.
    """
    if block_size < 2:  # blocks of 1 would never shorten the carry recursion
        raise ValueError(f'block_size must be >= 2; got {block_size}.')
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f'gamma must be in [0, 1]; got {gamma}.')
    length = values.shape[-1]
    if length <= block_size:
        return values @ _decay_matrix(length, gamma, values.dtype, values.device)

    lead = values.shape[:-1]
    padding = (-length) % block_size
    # Zeros appended after the end contribute nothing to any earlier position.
    blocks = F.pad(values, (0, padding)).reshape(*lead, -1, block_size)
    local = blocks @ _decay_matrix(block_size, gamma, values.dtype, values.device)

    heads = discounted_future_sum(local[..., 0], gamma**block_size, block_size)
    next_heads = F.pad(heads[..., 1:], (0, 1))
    carry = next_heads.unsqueeze(-1) * _carry_decay(block_size, gamma, values.dtype, values.device)
    return (local + carry).reshape(*lead, -1)[..., :length]
