"""Importing this module registers FIPO in verl (the explicit route, beside the automatic activation).

    VERL_USE_EXTERNAL_MODULES=swift_fipo.verl_plugin python -m verl.trainer.main_ppo ...

verl imports the modules named there when ``verl`` itself is imported, in the driver and in every Ray
worker that inherits the environment. ``actor_rollout_ref.model.external_lib=swift_fipo.verl_plugin``
works too, but verl imports it only in the workers: the loss is registered, yet the driver's config
check then rejects ``policy_loss.fipo`` options unless the activation is on.
"""

from swift_fipo.integrations.verl import install

install()
