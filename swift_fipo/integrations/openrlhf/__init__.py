"""FIPO in OpenRLHF (0.11.x): ``--actor.policy_loss_type fipo``.

How it hooks in:

- ``openrlhf.models.loss.PolicyLoss`` learns the type ``fipo``: its own ``ppo`` branch, called with the
  advantages multiplied by FIPO's influence weights. ``PolicyLoss.forward`` reads the advantage only
  linearly (both surrogates and the dual clip ``dual_clip * A``, tested by sign), and the weight is positive
  and detached, so this is exactly FIPO; OpenRLHF's aggregation, IS correction and metrics apply unchanged.
- ``openrlhf.trainer.ray.ppo_actor.ActorPPOTrainer`` hands the loss the resolved FIPO settings from its
  arguments, and adds the ``fipo_*`` metrics to what ``training_step`` returns (OpenRLHF reduces them as
  token-weighted means over micro-batches and ranks, like its own).
- OpenRLHF's command line (``openrlhf.cli.train_ppo_ray``, run as ``__main__``) gets the ``fipo`` choice and the
  ``--actor.fipo.*`` options in its own parser; they are resolved (preset, then explicit values) and checked
  when argv is parsed, before Ray starts or a model loads. The settings travel on the arguments object,
  which OpenRLHF pickles to every Ray actor.

Ray actors are fresh interpreters: the ``.pth`` activation watches the two modules in each of them
(``layout.WATCHED``). ``install()`` is the explicit route. This package imports nothing heavy.
"""

from __future__ import annotations

from swift_fipo._lazy import lazy_exports

__getattr__ = lazy_exports(globals(), {
    f'{__name__}.hooks': ('install', 'uninstall', 'diagnose', 'patch_module'),
    f'{__name__}.loss': ('FIPOPolicyLoss',),
})
