"""ms-swift's part of ``swift-fipo doctor``: its argument parsing and GRPO trainer modules imported as a
training run imports them (so the activation, if running, patches them exactly as then), then inspected."""

from __future__ import annotations

from swift_fipo.integrations.diagnosis import Diagnosis, activation_running, import_observed, why_not_hooked
from swift_fipo.integrations.ms_swift import layout
from swift_fipo.integrations.versions import installed_version


def diagnose() -> Diagnosis:
    diagnosis = Diagnosis()
    served = _hf_hooks(diagnosis)
    diagnosis.say(_megatron_state())
    diagnosis.judge('`swift rlhf --loss_type fipo`', served)
    return diagnosis


def _hf_hooks(diagnosis: Diagnosis) -> bool:
    """Report the argument-parsing and HF GRPO trainer hooks; whether swift-fipo serves fipo (both hooked)."""
    pipeline_name, trainer_name = map(layout.module_path, (layout.PIPELINE_MODULE, layout.HF_TRAINER_MODULE))
    modules = {}
    for name in (pipeline_name, trainer_name):
        module, error = import_observed(name, diagnosis)
        if module is None:
            diagnosis.say(f'{name}: cannot import it: {error}')
            return False
        modules[name] = module
    from swift_fipo.integrations.ms_swift import hooks, legacy  # after ms-swift: they import torch
    from swift_fipo.integrations.patches import is_patch

    pipeline = getattr(modules[pipeline_name], layout.PIPELINE_CLASS, None)
    flags_hooked = pipeline is not None and is_patch(vars(pipeline).get(layout.PARSE_METHOD))
    diagnosis.say(f'{pipeline_name}.{layout.PIPELINE_CLASS}: ' + (
        'hooked (--fipo_* flags, presets, validation)' if flags_hooked else f'not hooked: {why_not_hooked()}'))
    served = flags_hooked
    classes = hooks.trainer_classes(modules[trainer_name])
    if not classes:
        diagnosis.say(f'{trainer_name}: no GRPO trainer class found')
        return False
    for cls in classes:
        where = f'{trainer_name}.{cls.__name__}: '
        legacy_line = layout.doctor_line(cls.__name__, hooks.is_patched(cls))
        if legacy_line:  # ms-swift 3.11 - 4.2.1: served without the native hook, or refused with this TRL
            served = served and layout.rollout_reuse_broken() is None
            diagnosis.say(where + legacy_line)
        elif not hasattr(cls, layout.FIPO_HOOK):
            served = False
            if legacy.class_is_servable(cls):  # servable without the native hook, but not hooked
                diagnosis.say(where + f'not hooked: {why_not_hooked()}')
            else:
                diagnosis.say(where + f'no {layout.FIPO_HOOK} hook: --loss_type fipo needs {hooks.SUPPORTED_RANGE}')
        elif hooks.is_patched(cls):
            diagnosis.say(where + 'hooked (FIPO computed by swift-fipo)')
        else:
            served = False
            diagnosis.say(where + f"not hooked: {why_not_hooked()}; ms-swift's own FIPO would run")
    return served


def _megatron_state() -> str:
    """Megatron's trainer is looked at, not imported: importing swift.megatron has side effects (and
    needs CUDA)."""
    name = f'{layout.MEGATRON_TRAINER_MODULE} (megatron rlhf): '
    if installed_version('megatron-core') is None:
        return name + 'unavailable: megatron-core is not installed (only `megatron rlhf` needs it)'
    from swift_fipo.integrations.ms_swift.arguments import check_trainer_has_hook
    try:
        check_trainer_has_hook(megatron=True)
    except Exception as error:  # its message names the supported range
        return name + str(error)
    if not activation_running():
        return name + f'not hooked: {why_not_hooked()}'
    return name + 'hooked when `megatron rlhf` imports it'
