"""Where things are in TRL: the methods FIPOGRPOTrainer hooks, and the batch keys it reads.

Imported at every interpreter start (the table of hosts reads ``WATCHED`` from here): no imports.
"""

NAME = 'trl'
DISTRIBUTION = 'trl'
# TRL is served through a trainer class users pick (FIPOGRPOTrainer): nothing of TRL is patched on import.
WATCHED: dict = {}

GRPO_MODULE = 'trl.trainer.grpo_trainer'
LOGPS_METHOD = '_get_per_token_logps_and_entropies'
LOSS_METHOD = '_compute_loss'
