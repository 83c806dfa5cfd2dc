"""The verl host: ``actor_rollout_ref.actor.policy_loss.loss_mode=fipo``.

- ``layout``: verl's module paths and option names; no imports;
- ``hooks``: the ``fipo`` policy loss (verl's vanilla loss with A x w), the ``policy_loss.fipo`` option in
  verl's config schema, ``install()`` / ``uninstall()``, and ``diagnose()`` for ``swift-fipo doctor``.

Names load lazily: this package is imported at interpreter start (through ``layout``).
"""

from swift_fipo._lazy import lazy_exports

__getattr__ = lazy_exports(globals(), {
    f'{__name__}.hooks': ('install', 'uninstall', 'diagnose', 'compute_policy_loss_fipo'),
})
