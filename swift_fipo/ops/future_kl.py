"""Future-KL: the discounted sum of a sequence's future log-ratios, in exact O(B*T) work.

    future_kl[b, t] = sum_{k >= t} gamma**(k - t) * delta[b, k]

ms-swift's native port multiplies every position by a decay row covering all later positions
(O(T^2) work, and T^2 floats kept alive by autograd). The same sum obeys the recurrence
F_t = delta_t + gamma * F_{t+1}, which we evaluate blockwise:

1. cut the sequence into blocks of ``block_size`` (L) tokens; the sum over a block's own tokens,
   seen from its first position, is one dot product with ``gamma**i`` (a matrix-vector product);
2. those block heads obey the same recurrence with decay ``gamma**L`` over T/L entries: solve it
   recursively (short sequences, T/L <= 256 included, are a single matmul against the decay matrix);
3. solve every block locally with one matmul against a fixed ``[L, L]`` upper-triangular decay
   matrix and add the carry-in ``gamma**(L - i) * F(next block head)`` to its position i.

Work is O(B*T*L) for a fixed L (plus one matmul of at most 256 x 256 per 256*L tokens) and memory
O(B*T + 256^2); every output is a dot product of at most 256 terms plus one carry per level, so
float32 rounding stays at a few ulp of sum(|terms|).

Speed notes (CPU, measured in ``benchmarks/``): computing the heads from the input rather than from
the matmul's first column avoids a strided gather; decay entries below the dtype's smallest normal
number are stored as 0, because subnormal operands make x86 matmuls many times slower (they are
< 1.2e-38 relative and cannot change a float32 result).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from swift_fipo.config import real_number
from swift_fipo.ops.precision import autocast_off

DEFAULT_BLOCK_SIZE = 32
# Sequences (or block-head sequences) up to this length take one matmul against a dense decay matrix:
# a [B, 256] x [256, 256] product costs less than the few small kernels of another level of blocks.
DENSE_LENGTH = 256


@functools.lru_cache(maxsize=64)
def _decay_matrix(size: int, gamma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """D[k, t] = gamma**(k - t) for k >= t, else 0; so (x @ D)[t] = sum_{k >= t} gamma**(k-t) x[k]."""
    index = torch.arange(size, dtype=torch.float64)
    distance = index.unsqueeze(1) - index.unsqueeze(0)
    matrix = torch.where(distance >= 0, torch.tensor(gamma, dtype=torch.float64).pow(distance.clamp(min=0)), 0.0)
    return _flush_subnormal(matrix, dtype).to(device=device)


@functools.lru_cache(maxsize=64)
def _head_decay(size: int, gamma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """gamma**i for i in 0..size-1 (D's first column, contiguous): a block's own sum seen from its head."""
    return _flush_subnormal(torch.tensor(gamma, dtype=torch.float64).pow(torch.arange(size, dtype=torch.float64)),
                            dtype).to(device=device)


@functools.lru_cache(maxsize=64)
def _carry_decay(size: int, gamma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """gamma**(size - i) for i in 0..size-1: how much the next block's head counts at position i."""
    exponent = torch.arange(size, 0, -1, dtype=torch.float64)
    return _flush_subnormal(torch.tensor(gamma, dtype=torch.float64).pow(exponent), dtype).to(device=device)


def _flush_subnormal(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast to ``dtype``, storing entries below its smallest normal number as exact zeros."""
    tiny = torch.finfo(dtype).tiny if dtype.is_floating_point else 0.0
    return torch.where(values.abs() < tiny, 0.0, values).to(dtype).contiguous()


def discounted_future_sum(values: torch.Tensor, gamma: float, block_size: int = DEFAULT_BLOCK_SIZE) -> torch.Tensor:
    """Return ``out[..., t] = sum_{k >= t} gamma**(k - t) * values[..., k]`` over the last dimension.

    ``values``: a floating-point tensor with at least one dimension (the last may be empty).
    Integer, bool and complex tensors are refused (a decay matrix in their dtype would round every
    gamma**k to 0 or 1). Values should be finite: a NaN or inf can turn outputs anywhere in its row
    into NaN (the zero entries of the decay matrix multiply it); checking would cost a pass.
    ``block_size``: tokens per block of the blockwise scan, an int in [2, 256] (it changes speed, not
    the result, beyond rounding). The result has the dtype of ``values``, also under ``torch.autocast``.
    Not differentiable by design: callers run it under ``torch.no_grad``.
    """
    if not isinstance(values, torch.Tensor):
        raise TypeError(f'values must be a floating-point torch.Tensor; got {type(values).__name__}.')
    if not values.dtype.is_floating_point:
        raise TypeError(f'values must be a floating-point tensor; got dtype {values.dtype} (cast it yourself).')
    if values.dim() == 0:
        raise ValueError('values must have at least one dimension (the sequence); got a 0-dim tensor.')
    if isinstance(block_size, bool) or not isinstance(block_size, int) or not 2 <= block_size <= DENSE_LENGTH:
        # Blocks of 1 would never shorten the carry recursion; blocks above DENSE_LENGTH would cache and
        # multiply a [block_size, block_size] decay matrix whatever the length (8192: built from a 512 MiB
        # float64 matrix), breaking the O(B*T + 256^2) memory promise.
        raise ValueError(f'block_size must be an int in [2, {DENSE_LENGTH}]; got {block_size!r}.')
    number = real_number(gamma)
    if number is None or not 0.0 <= number <= 1.0:
        raise ValueError(f'gamma must be a number in [0, 1]; got {gamma!r}.')
    with autocast_off(values.device):  # else autocast would run the matmuls in bf16/fp16
        return _future_sum(values, number, block_size)


def _future_sum(values: torch.Tensor, gamma: float, block_size: int) -> torch.Tensor:
    length = values.shape[-1]
    dense = DENSE_LENGTH  # >= block_size, which discounted_future_sum bounds
    if length <= dense:
        # D's leading [length, length] corner is the decay matrix of that length: one cached matrix.
        return values @ _decay_matrix(dense, gamma, values.dtype, values.device)[:length, :length]

    lead = values.shape[:-1]
    padding = (-length) % block_size
    # Zeros appended after the end contribute nothing to any earlier position.
    count = (length + padding) // block_size  # explicit, not -1: an empty batch (B = 0) must reshape too
    blocks = (F.pad(values, (0, padding)) if padding else values).reshape(*lead, count, block_size)
    args = (block_size, gamma, values.dtype, values.device)
    # Future sum at every block head: its own block (a dot product) plus the decayed next head.
    heads = _future_sum(blocks @ _head_decay(*args), gamma**block_size, block_size)
    local = blocks @ _decay_matrix(*args)
    # Carry-in from the next block's head; the last block has none.
    local[..., :-1, :].addcmul_(heads[..., 1:].unsqueeze(-1), _carry_decay(*args))
    out = local.reshape(*lead, count * block_size)
    return out[..., :length] if padding else out
