"""Where OpenRLHF keeps what the FIPO integration touches: module paths, class and method names, command-line
options and the source markers its capability checks read. Every OpenRLHF name the integration uses is
spelled here once, so a rename upstream is one edit.

Read at every interpreter start (the table of hosts names ``WATCHED``), so it imports nothing.
"""

from __future__ import annotations

NAME = 'openrlhf'
DISTRIBUTION = 'openrlhf'
INTEGRATION = 'swift_fipo.integrations.openrlhf.hooks'
_PATCHER = f'{INTEGRATION}:patch_module'

# --- modules -----------------------------------------------------------------------------------------
LOSS_MODULE = 'openrlhf.models.loss'
"""Defines ``PolicyLoss``; the loss learns the ``fipo`` type here."""
ACTOR_MODULE = 'openrlhf.trainer.ray.ppo_actor'
"""Defines ``ActorPPOTrainer`` (builds and calls the loss) in every actor process; the command line
imports it before it parses argv, so its import is also when the argument hook goes in."""
CLI_MODULE = 'openrlhf.cli.train_ppo_ray'
"""The PPO/GRPO entry point (its parser is built inline under ``if __name__ == '__main__'``). It runs as
``__main__`` (``-m`` or by path), so it cannot be watched under its own name: the argument hook goes in when it
imports ACTOR_MODULE."""
CONFIG_MODULE = 'openrlhf.utils.config'
"""``hierarchize``: turns the parsed flat namespace into ``args.actor.fipo...``."""

WATCHED = {
    LOSS_MODULE: _PATCHER,
    ACTOR_MODULE: _PATCHER,
}

# --- classes and methods -------------------------------------------------------------------------------
POLICY_LOSS_CLASS = 'PolicyLoss'
POLICY_LOSS_PARAMETERS = ('clip_eps_low', 'clip_eps_high', 'dual_clip', 'token_level_loss', 'policy_loss_type')
FORWARD_PARAMETERS = ('log_probs', 'old_log_probs', 'advantages', 'action_mask', 'rollout_log_probs')
TRAINER_CLASS = 'ActorPPOTrainer'
TRAINER_LOSS_ATTRIBUTE = 'actor_loss_fn'
TRAINING_STEP_METHOD = 'training_step'
HIERARCHIZE_FUNCTION = 'hierarchize'

# --- loss types ----------------------------------------------------------------------------------------
LOSS_TYPE = 'fipo'
STOCK_LOSS_TYPE = 'ppo'
"""The branch of ``PolicyLoss.forward`` a fipo loss runs, with the advantages reweighted."""
SEQUENCE_LOSS_TYPE = 'gspo'
"""Sequence-level ratio; FIPO (a per-token weight from token-level log-ratios) is not offered on it."""

# --- command-line options (OpenRLHF's dotted style; dest = option without the dashes) --------------------
LOSS_TYPE_OPTION = '--actor.policy_loss_type'
OPTION_PREFIX = '--actor.fipo.'
PRESET_OPTION = '--actor.fipo.preset'
DELTA_OPTION = '--actor.fipo.delta'
"""Not an option under OpenRLHF (FIPO's delta is the dual clip); declared hidden only to refuse it by name."""
DUAL_CLIP_OPTION = '--actor.dual_clip'
EPS_CLIP_OPTION = '--actor.eps_clip'
EPS_CLIP_LOW_HIGH_OPTION = '--actor.eps_clip_low_high'
MAX_EPOCHS_OPTION = '--train.max_epochs'
TRAIN_BATCH_OPTION = '--train.batch_size'
MICRO_BATCH_OPTION = '--train.micro_batch_size'
ROLLOUT_BATCH_OPTION = '--rollout.batch_size'
SAMPLES_PER_PROMPT_OPTION = '--rollout.n_samples_per_prompt'
PACKING_OPTION = '--ds.packing_samples'

# --- source markers (capability checks; read with inspect.getsource) ------------------------------------
FORWARD_MARKERS = ('ratio * advantages', 'self.dual_clip * advantages', 'self.policy_loss_type == "ppo"')
"""The advantage enters PolicyLoss.forward only linearly (the surrogates and the dual clip) and the ppo
branch is chosen by the type attribute: then ``A * w`` with a positive detached ``w`` is exactly FIPO."""
TRAINER_INIT_MARKERS = ('self.actor_loss_fn = PolicyLoss(', 'policy_loss_type=self.args.actor.policy_loss_type')
TRAINING_STEP_MARKERS = ('self.actor_loss_fn(', '"metrics"', '"weights"')


def dest(option: str) -> str:
    """The argparse ``dest`` of an OpenRLHF option: the option without its dashes (dots kept)."""
    return option[2:]
