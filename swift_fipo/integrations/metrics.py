"""The one table of FIPO's metrics (every ``FIPOStats.summary`` key): how each combines across
gradient-accumulation chunks and ranks, and what it reads where FIPO had no tokens to act on. Every host
reads it; ``combine_metric`` and ``record_metric`` apply it.

Importing this module imports no torch; ``combine_metric`` loads it when called.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

__all__ = ['METRICS', 'METRIC_REDUCTIONS', 'Metric', 'Reduction', 'combine_metric', 'record_metric']

Reduction = Literal['mean', 'min', 'max']


@dataclasses.dataclass(frozen=True)
class Metric:
    """One summary key's rules."""

    reduction: Reduction
    """How values of several chunks or ranks combine (a minimum or maximum cannot be averaged)."""
    idle: float
    """Its value where there were no tokens, so FIPO did nothing: no log-ratio, so Future-KL 0, every ratio
    and weight 1, nothing clipped, filtered, fired or dropped. (Computed over no tokens it is NaN; a host
    that averages blindly or needs a value from every rank reports this instead.)"""


METRICS: dict[str, Metric] = {
    'future_kl_mean': Metric('mean', 0.0),
    'raw_weight_mean': Metric('mean', 1.0),
    'influence_weight_mean': Metric('mean', 1.0),
    'influence_weight_min': Metric('min', 1.0),
    'influence_weight_max': Metric('max', 1.0),
    'safety_keep_ratio': Metric('mean', 1.0),
    'safety_fired_ratio': Metric('mean', 0.0),
    'filtered_ratio': Metric('mean', 0.0),
    'dropped_response_ratio': Metric('mean', 0.0),
    'neg_adv_ratio_p99': Metric('max', 1.0),
    'clipped_high_ratio': Metric('mean', 0.0),
    'clipped_low_ratio': Metric('mean', 0.0),
}
# The reduction column of METRICS, for code that needs only that.
METRIC_REDUCTIONS: dict[str, Reduction] = {key: metric.reduction for key, metric in METRICS.items()}


def combine_metric(key: str, values: torch.Tensor) -> float:
    """Combine one summary's values from several ranks or chunks as ``METRICS`` says.

    NaN entries (a rank or chunk without such tokens) are ignored; NaN if all are.
    """
    import torch
    finite = values[~torch.isnan(values)]
    if finite.numel() == 0:
        return math.nan
    how = METRICS[key].reduction
    return float(finite.min() if how == 'min' else finite.max() if how == 'max' else finite.mean())


def record_metric(values: list[float], key: str, value: float) -> None:
    """Add one loss call's ``value`` of summary ``key`` to ``values``, a host's list for one logging step
    that the host averages when it logs (TRL's and ms-swift's ``_metrics[mode][name]``).

    A mean key appends, so the host's average is the mean over loss calls. A min or max key keeps a
    single entry, the extreme so far (``combine_metric``: NaN ignored), so the host's average of that one
    entry is the minimum or maximum over every gradient-accumulation chunk, as ``METRICS`` says;
    appended, it would become a mean of per-chunk extremes.
    """
    how = METRICS[key].reduction
    if how == 'mean' or not values:
        values.append(value)
        return
    finite = [number for number in (*values, value) if not math.isnan(number)]
    values[:] = [(min if how == 'min' else max)(finite) if finite else math.nan]
