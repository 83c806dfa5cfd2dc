"""The TRL host: ``FIPOGRPOTrainer``, a ``trl.GRPOTrainer`` that trains with FIPO.

- ``layout``: TRL's method names and the loss types FIPO serves there; no imports;
- ``trainer``: ``FIPOGRPOTrainer``, its capability checks and refusals;
- ``hooks``: the host interface (nothing is patched on import) and ``diagnose()`` for ``swift-fipo doctor``.

Names load lazily: this package is imported at interpreter start (through ``layout``), and the trainer
imports TRL.
"""

from swift_fipo._lazy import lazy_exports

__getattr__ = lazy_exports(globals(), {
    f'{__name__}.trainer': ('FIPOGRPOTrainer', 'UnsupportedTRLError', 'check_trl_support'),
    f'{__name__}.hooks': ('install', 'uninstall', 'diagnose'),
})
