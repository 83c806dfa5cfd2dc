"""The TRL host's interface: nothing of TRL is patched (users pick ``FIPOGRPOTrainer``), so ``install`` and
``uninstall`` have nothing to do; ``diagnose`` says whether the installed TRL can serve that trainer."""

from __future__ import annotations

from swift_fipo.integrations.diagnosis import Diagnosis, import_observed
from swift_fipo.integrations.trl import layout


def install() -> dict:
    """Nothing to patch: FIPO runs where ``FIPOGRPOTrainer`` is used."""
    return {}


def uninstall() -> None:
    """Nothing was patched."""


def diagnose() -> Diagnosis:
    diagnosis = Diagnosis()
    module, error = import_observed(layout.GRPO_MODULE, diagnosis)
    if module is None:
        diagnosis.say(f'{layout.GRPO_MODULE}: cannot import it: {error}')
        return diagnosis
    from swift_fipo.integrations.trl.trainer import (SUPPORTED_RANGE, UnsupportedTRLError, check_trl_support,
                                                     lost_init_refusal)
    try:
        check_trl_support(module.GRPOTrainer)
    except UnsupportedTRLError as refusal:
        diagnosis.say(f'{layout.GRPO_MODULE}.GRPOTrainer: FIPOGRPOTrainer refused: {refusal}')
        return diagnosis
    lost_init = lost_init_refusal(module.GRPOTrainer)  # e.g. doctor imported ms-swift's GRPO trainer first
    if lost_init is not None:
        diagnosis.say(f'{layout.GRPO_MODULE}.GRPOTrainer: not in this process: {lost_init}')
    else:
        diagnosis.say(f'{layout.GRPO_MODULE}.GRPOTrainer: served by swift_fipo.FIPOGRPOTrainer ({SUPPORTED_RANGE}; '
                      'nothing is patched on import)')
    return diagnosis
