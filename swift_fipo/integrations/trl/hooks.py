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
    """Whether ``FIPOGRPOTrainer`` can train with the installed TRL: a verdict, as every host gives one."""
    diagnosis = Diagnosis()
    what = f'swift_fipo.FIPOGRPOTrainer ({layout.NAME})'
    module, error = import_observed(layout.GRPO_MODULE, diagnosis)
    if module is None:
        diagnosis.say(f'{layout.GRPO_MODULE}: cannot import it: {error}')
        diagnosis.judge(what, False)
        return diagnosis
    from swift_fipo.integrations.trl.trainer import (
        SUPPORTED_RANGE,
        UnsupportedTRLError,
        check_trl_support,
        init_deleted_by_ms_swift,
        lost_init_refusal,
    )
    trainer_class = getattr(module, layout.TRAINER_CLASS)
    try:
        check_trl_support(trainer_class)
    except UnsupportedTRLError as refusal:
        diagnosis.say(f'{layout.GRPO_MODULE}.GRPOTrainer: FIPOGRPOTrainer refused: {refusal}')
        diagnosis.judge(what, False)
        return diagnosis
    served = f'{layout.GRPO_MODULE}.GRPOTrainer: served by swift_fipo.FIPOGRPOTrainer ({SUPPORTED_RANGE}; nothing is ' \
             'patched on import)'
    lost_init = lost_init_refusal(trainer_class)
    if lost_init is None:
        diagnosis.say(served)
    elif init_deleted_by_ms_swift(trainer_class) is not None:
        # Doctor itself imported ms-swift's GRPO trainer to look at it: a TRL program that does not is served.
        diagnosis.say(f"{served}, in a process that does not import ms-swift's GRPO trainer (this one did, for "
                      "ms-swift's check; a program that does is refused with a clear message)")
    else:  # deleted by something else in this very process
        diagnosis.say(f'{layout.GRPO_MODULE}.GRPOTrainer: not in this process: {lost_init}')
        diagnosis.judge(what, False)
        return diagnosis
    diagnosis.judge(what, True)
    return diagnosis
