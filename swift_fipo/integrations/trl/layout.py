"""Where things are in TRL: the methods FIPOGRPOTrainer hooks, and the batch keys it reads.

Imported at every interpreter start (the table of hosts reads ``WATCHED`` from here): no imports.
"""

NAME = 'trl'
DISTRIBUTION = 'trl'
# TRL is served through a trainer class users pick (FIPOGRPOTrainer): nothing of TRL is patched on import.
WATCHED: dict = {}

GRPO_MODULE = 'trl.trainer.grpo_trainer'
TRAINER_CLASS = 'GRPOTrainer'
LOGPS_METHOD = '_get_per_token_logps_and_entropies'
LOSS_METHOD = '_compute_loss'

# TRL's names of the settings swift-fipo reads from its GRPOConfig, as messages name them.
DELTA_OPTION = 'GRPOConfig.delta'  # TRL's dual clip (ms-swift's --delta)
EPSILON_OPTION = 'GRPOConfig.epsilon'
EPSILON_HIGH_OPTION = 'GRPOConfig.epsilon_high'  # None: TRL's upper clip is epsilon
LOSS_TYPE_OPTION = 'GRPOConfig.loss_type'

# Source markers of GRPOTrainer._compute_loss (check_trl_support): it reads the advantages after computing the
# log-probs, and takes per-token [B, T] advantages (TRL >= 0.26 branches on their dimension).
LOSS_READS_ADVANTAGES = 'inputs["advantages"]'
PER_TOKEN_ADVANTAGES_MARKER = 'advantages.dim()'
# How a class Unsloth generated in place of GRPOTrainer is recognised: its package, its class names, and
# the marks its wrapped methods carry (``train._unsloth_resume_guard``).
UNSLOTH_PACKAGE = 'unsloth'
UNSLOTH_CLASS_PREFIXES = ('Unsloth', '_Unsloth')
UNSLOTH_MARK_PREFIX = '_unsloth_'
# ms-swift's GRPO trainer modules (``swift.<...>.grpo_trainer``) delete GRPOTrainer.__init__ on import.
INIT_DELETER_PACKAGE = 'swift'
INIT_DELETER_MODULE_SUFFIX = 'grpo_trainer'
