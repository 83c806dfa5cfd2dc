"""Where things are in verl: module paths, the registry's loss name and the Hydra option names FIPO uses.

Imported at every interpreter start (the table of hosts reads ``WATCHED`` from here): no imports.
"""

NAME = 'verl'
DISTRIBUTION = 'verl'

CONFIG_MODULE = 'verl.workers.config.actor'
CORE_ALGOS_MODULE = 'verl.trainer.ppo.core_algos'
# Host module -> the function that patches it right after verl first imports it: the policy_loss.fipo
# option in its config schema, and the loss in its registry.
WATCHED = {
    CONFIG_MODULE: 'swift_fipo.integrations.verl.hooks:patch_config_module',
    CORE_ALGOS_MODULE: 'swift_fipo.integrations.verl.hooks:patch_core_algos',
}

LOSS_MODE = 'fipo'
OPTION_PREFIX = 'actor_rollout_ref.actor.policy_loss.fipo'
DUAL_CLIP_OPTION = 'actor_rollout_ref.actor.clip_ratio_c'
# ActorConfig's default clip_ratio_c (verl >= 0.6.1): the dual clip of an actor config that does not set it.
DUAL_CLIP_DEFAULT = 3.0
# verl's epsilon_high: vanilla clips the ratio at 1 + clip_ratio_high (clip_ratio when that is None).
CLIP_HIGH_OPTION = 'actor_rollout_ref.actor.clip_ratio_high'

# The config classes patch_config_module extends, and the method that validates the actor's settings.
POLICY_LOSS_CONFIG_CLASS = 'PolicyLossConfig'
ACTOR_CONFIG_CLASS = 'ActorConfig'
ACTOR_VALIDATE_METHOD = 'validate'
# core_algos: the policy-loss registry, its decorator and look-up, and the loss FIPO reweights the advantages of.
REGISTRY = 'POLICY_LOSS_REGISTRY'
REGISTER_FUNCTION = 'register_policy_loss'
GET_LOSS_FUNCTION = 'get_policy_loss_fn'
STOCK_LOSS_MODE = 'vanilla'
