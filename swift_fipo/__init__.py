"""swift-fipo: FIPO (Future-KL Influenced Policy Optimization) for ms-swift, TRL and custom loops.

Public names load lazily: ``import swift_fipo`` stays cheap (no torch), which matters because the
activation hook imports this package at every interpreter start.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False

__version__ = '0.1.0'

_EXPORTS = {
    'FIPOConfig': 'swift_fipo.config',
    'FIPOGRPOTrainer': 'swift_fipo.integrations.trl',
    'PRESETS': 'swift_fipo.config',
    'apply_fipo': 'swift_fipo.ops.loss',
    'FIPOStats': 'swift_fipo.ops.influence',
    'compute_fipo_influence': 'swift_fipo.ops.influence',
    'discounted_future_sum': 'swift_fipo.ops.future_kl',
    'install': 'swift_fipo.integrations.hosts',
    'reweight_advantages': 'swift_fipo.ops.loss',
    'uninstall': 'swift_fipo.integrations.hosts',
}

__all__ = sorted(_EXPORTS) + ['__version__']

if TYPE_CHECKING:  # typing itself is not imported at runtime: this package loads at interpreter start
    from typing import Any

    # `name as name`: re-exported for type checkers (the names load lazily at run time, through __getattr__).
    from swift_fipo.config import PRESETS as PRESETS
    from swift_fipo.config import FIPOConfig as FIPOConfig
    from swift_fipo.integrations.hosts import install as install
    from swift_fipo.integrations.hosts import uninstall as uninstall
    from swift_fipo.integrations.trl import FIPOGRPOTrainer as FIPOGRPOTrainer
    from swift_fipo.ops.future_kl import discounted_future_sum as discounted_future_sum
    from swift_fipo.ops.influence import FIPOStats as FIPOStats
    from swift_fipo.ops.influence import compute_fipo_influence as compute_fipo_influence
    from swift_fipo.ops.loss import apply_fipo as apply_fipo
    from swift_fipo.ops.loss import reweight_advantages as reweight_advantages

def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
