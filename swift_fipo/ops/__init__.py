"""Pure tensor maths of FIPO; knows nothing of any trainer."""

from swift_fipo.ops.future_kl import discounted_future_sum
from swift_fipo.ops.influence import FIPOStats, compute_fipo_influence

__all__ = ['FIPOStats', 'compute_fipo_influence', 'discounted_future_sum']
