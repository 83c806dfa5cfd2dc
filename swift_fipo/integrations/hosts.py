"""The table of hosts: for each, the modules the interpreter-start activation watches and the plugin
function that patches each one right after the host first imports it.

Read by the activation at every interpreter start, so it holds only strings and imports nothing: the
patchers are named as ``'module:function'`` (importing them would import torch). Each host's own
integration reads its entry from here too, so the two lists cannot drift apart.
"""

from __future__ import annotations


class Host:
    """One host: its name, its pip distribution, and ``{watched module: 'plugin module:patcher'}``."""

    __slots__ = ('name', 'distribution', 'watched')

    def __init__(self, name: str, distribution: str, watched: dict) -> None:
        self.name = name
        self.distribution = distribution
        self.watched = watched

    def __repr__(self) -> str:
        return f'Host({self.name!r}, {self.distribution!r}, {self.watched!r})'


_MS_SWIFT_PATCHER = 'swift_fipo.integrations.ms_swift:patch_module'

MS_SWIFT = Host('ms-swift', 'ms-swift', {
    # argument parsing (both command lines), the HF-style and the Megatron GRPO trainers
    'swift.pipelines.base': _MS_SWIFT_PATCHER,
    'swift.rlhf_trainers.grpo_trainer': _MS_SWIFT_PATCHER,
    'swift.megatron.trainers.grpo_trainer': _MS_SWIFT_PATCHER,
    # ms-swift 3.x keeps the first two elsewhere.
    'swift.llm.base': _MS_SWIFT_PATCHER,
    'swift.trainers.rlhf_trainer.grpo_trainer': _MS_SWIFT_PATCHER,
})
VERL = Host('verl', 'verl', {
    # the policy_loss.fipo option in its config schema, and the loss in its registry
    'verl.workers.config.actor': 'swift_fipo.integrations.verl:patch_config_module',
    'verl.trainer.ppo.core_algos': 'swift_fipo.integrations.verl:patch_core_algos',
})
# TRL is served through a trainer class users pick (FIPOGRPOTrainer): nothing of TRL is patched on import.
TRL = Host('trl', 'trl', {})

HOSTS = (MS_SWIFT, VERL, TRL)


def watched_modules() -> dict:
    """``{module: 'plugin module:patcher'}`` over every host."""
    return {module: patcher for host in HOSTS for module, patcher in host.watched.items()}
