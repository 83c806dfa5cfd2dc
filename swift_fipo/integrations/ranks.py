"""Which rank this process is, and FIPO's metrics combined over every rank in one collective.

Importing this module imports no torch; ``combine_over_ranks`` loads it when called.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from swift_fipo.integrations.metrics import combine_metric

if TYPE_CHECKING:
    import torch

__all__ = ['combine_over_ranks', 'on_rank_zero']


def on_rank_zero() -> bool:
    """True in the process of rank 0 (or without a launcher)."""
    # RANK: torchrun's, and what ms-swift, TRL (accelerate), verl and OpenRLHF workers get from their launcher.
    return os.environ.get('RANK', '0').strip() in ('', '0')


def combine_over_ranks(summary: Mapping[str, torch.Tensor], gather: Callable[[torch.Tensor], torch.Tensor],
                       device: torch.device | None = None) -> dict[str, float]:
    """Combine this rank's ``FIPOStats.summary`` values with every other rank's, each key as
    ``metrics.METRICS`` says, in one collective: ``gather`` (e.g. an accelerate ``Accelerator.gather``)
    takes this rank's ``[1, n]`` row and returns the ``[world, n]`` rows; ``device``, where the row must be."""
    import torch
    keys = list(summary)
    row = torch.stack([summary[key] for key in keys]).reshape(1, -1)
    gathered = gather(row if device is None else row.to(device)).reshape(-1, len(keys)).float().cpu()
    return {key: combine_metric(key, gathered[:, column]) for column, key in enumerate(keys)}
