"""ms-swift integration: one adapter serving both GRPO trainers (HF-style and Megatron).

Both ``swift.rlhf_trainers.grpo_trainer.GRPOTrainer`` and
``swift.megatron.trainers.grpo_trainer.MegatronGRPOTrainer`` (ms-swift >= 4.2.2) call
``self._compute_fipo_influence(log_ratio, coef_1, advantages, completion_mask)`` from their loss and
read ``future_kl`` / ``influence_weight`` / ``safety_mask`` from the returned dict to log
``fipo/*``. We replace that method with a thin adapter over ``compute_fipo_influence``; the rest of
the loss, and every other loss type, stays ms-swift's own code.

Every patch is declared in ``patches_for(module)`` below (which class, which attribute, which
wrapper), applied by ``install()`` or by the activation hook when ms-swift imports the module, and
reverted exactly by ``uninstall()``. Hook points are found by capability (does the class define
``_compute_fipo_influence``? does it have ``_setup_teacher``?), never by version strings.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from swift_fipo.integrations.interception import interception_of
from swift_fipo.integrations.metrics import METRIC_REDUCTIONS, combine_metric
from swift_fipo.integrations.ms_swift import layout, legacy
from swift_fipo.integrations.ms_swift.arguments import (
    SUPPORTED_RANGE,
    run_settings,
    unsupported_message,
    with_fipo_flags,
    with_run_validation,
)
from swift_fipo.integrations.patches import Patch, PatchSet, is_patch, original_of
from swift_fipo.integrations.ranks import combine_over_ranks
from swift_fipo.ops.influence import FIPOStats, compute_fipo_influence

_PIPELINE_MODULES = (layout.PIPELINE_MODULE, layout.MODULES_3X[layout.PIPELINE_MODULE])
# Summaries ms-swift already logs itself from the adapter's tensors.
_NATIVE_METRICS = ('future_kl_mean', 'influence_weight_mean', 'safety_keep_ratio')


def fipo_influence_adapter(trainer: Any, log_ratio: torch.Tensor, coef_1: torch.Tensor, advantages: torch.Tensor,
                           completion_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """Drop-in ``_compute_fipo_influence`` for ms-swift's GRPO trainers."""
    weight, stats = compute_fipo_influence(log_ratio, completion_mask, advantages, run_settings(trainer).config,
                                           ratio=coef_1)
    interception_of(trainer).last_stats = stats  # for the metrics wrapper of the same loss call
    # The keys ms-swift's own metric code reads.
    return weight, {'future_kl': stats.future_kl, 'influence_weight': stats.weight, 'safety_mask': stats.safety_mask}


def _adapter(native: Callable[..., Any]) -> Callable[..., Any]:
    """A fresh adapter function per class (a patch remembers what it replaced on its replacement)."""

    @functools.wraps(native)
    def compute_fipo_influence_with_swift_fipo(self: Any, *args: Any, **kwargs: Any) -> Any:
        return fipo_influence_adapter(self, *args, **kwargs)

    return compute_fipo_influence_with_swift_fipo


def _call_collecting_stats(self: Any, loss_call: Callable[..., Any], args: tuple, kwargs: dict
                           ) -> tuple[Any, FIPOStats | None]:
    """Run one loss call; return its result and the stats the adapter left during it (None if FIPO
    did not run, e.g. another loss type)."""
    state = interception_of(self)
    state.last_stats = None
    result = loss_call(self, *args, **kwargs)
    stats, state.last_stats = state.last_stats, None
    return result, stats


def _with_extra_metrics(compute_loss_and_metrics: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap the HF trainer's ``_compute_loss_and_metrics`` to log our diagnostics beside the native 3.

    ms-swift gathers ``metrics_data['fipo']`` across ranks, averages it over gradient-accumulation
    chunks (token-weighted) and logs every key as ``fipo/<key>``; we only add keys to that dict.
    """

    @functools.wraps(compute_loss_and_metrics)
    def compute_loss_and_metrics_with_fipo(self: Any, *args: Any, **kwargs: Any) -> Any:
        result, stats = _call_collecting_stats(self, compute_loss_and_metrics, args, kwargs)
        if stats is not None:  # --fipo_log_tokens; returns at once when it is 0
            from swift_fipo.integrations.ms_swift.token_capture import capture
            capture(self, stats, args, kwargs)
        if stats is None or not isinstance(result, tuple) or not isinstance(result[-1], dict):
            return result
        fipo_metrics = result[-1].get('fipo')
        if isinstance(fipo_metrics, dict):
            summary = {key: value for key, value in stats.summary.items() if key not in _NATIVE_METRICS}
            fipo_metrics.update(combine_over_ranks(summary, self.accelerator.gather_for_metrics))
        return result

    return compute_loss_and_metrics_with_fipo


def _with_extreme_aggregation(aggregate: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``_aggregate_and_update_metrics`` so min/max diagnostics combine as min/max over
    gradient-accumulation chunks; ms-swift averages every ``fipo`` key by token count otherwise."""

    @functools.wraps(aggregate)
    def aggregate_with_extremes(self: Any, all_metrics_data: Any, mode: str, *args: Any, **kwargs: Any) -> Any:
        extremes: dict[str, list[float]] = {}
        for chunk_metrics, _ in all_metrics_data or ():
            fipo_metrics = chunk_metrics.get('fipo') if isinstance(chunk_metrics, dict) else None
            for key in list(fipo_metrics or ()):
                if METRIC_REDUCTIONS.get(key, 'mean') != 'mean':
                    extremes.setdefault(key, []).append(fipo_metrics.pop(key))
        result = aggregate(self, all_metrics_data, mode, *args, **kwargs)
        for key, values in extremes.items():
            self._metrics[mode][f'fipo/{key}'].append(combine_metric(key, torch.tensor(values)))
        return result

    return aggregate_with_extremes


def _with_megatron_extra_metrics(loss_func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap Megatron's ``loss_func`` to log our diagnostics beside the native 3 keys.

    Values are reduced over the data-parallel group with the trainer's own ``_all_reduce_metric`` (so
    the plugin never imports megatron): means averaged, minima and maxima as min / max. A rank without
    completion tokens contributes 0 to means (as ms-swift's own keys do) and nothing to extremes.
    """

    @functools.wraps(loss_func)
    def loss_func_with_fipo(self: Any, *args: Any, **kwargs: Any) -> Any:
        result, stats = _call_collecting_stats(self, loss_func, args, kwargs)
        if stats is None or not isinstance(result, tuple) or not isinstance(result[-1], dict):
            return result
        loss, metrics = result[0], result[-1]
        groups: dict[str, dict[str, torch.Tensor]] = {'mean': {}, 'min': {}, 'max': {}}
        for key, value in stats.summary.items():
            if key in _NATIVE_METRICS:
                continue
            how = METRIC_REDUCTIONS[key]
            empty = {'mean': 0.0, 'min': torch.inf, 'max': -torch.inf}[how]
            groups[how][key] = torch.nan_to_num(value.to(loss.device, torch.float32), nan=empty)
        operations = torch.distributed.ReduceOp
        for how, operation in (('mean', operations.AVG), ('min', operations.MIN), ('max', operations.MAX)):
            if groups[how]:
                reduced = getattr(self, layout.MEGATRON_REDUCE_METHOD)(groups[how], reduction=operation)
                metrics.update({f'fipo/{key}': torch.where(value.isinf(), torch.nan, value)
                                for key, value in reduced.items()})
        return result

    return loss_func_with_fipo


def _explicit_teacher(trainer: Any) -> bool:
    # A method on the HF mixin, a plain attribute on the Megatron mixin.
    explicit = getattr(trainer, layout.TEACHER_EXPLICIT_ATTRIBUTE, False)
    return bool(explicit() if callable(explicit) else explicit)


def _without_implicit_teacher(setup_teacher: Callable[..., None]) -> Callable[..., None]:
    """Wrap ``_setup_teacher`` so a fipo run with no configured teacher is not treated as OPD-RL.

    From ms-swift 4.4 ``_setup_teacher`` sets ``_has_teacher`` whenever no teacher is configured
    ("dynamic self-distillation"), and the loss then rejects ``loss_type='fipo'``. FIPO cannot use a
    teacher signal anyway, so for fipo we clear the implicit flag; an explicit teacher is left alone
    and still rejected by ms-swift, as upstream intends.
    """

    @functools.wraps(setup_teacher)
    def setup_teacher_for_fipo(self: Any, *args: Any, **kwargs: Any) -> None:
        setup_teacher(self, *args, **kwargs)
        if getattr(self.args, 'loss_type', None) == 'fipo' and not _explicit_teacher(self):
            setattr(self, layout.SELF_DISTILLATION_ATTRIBUTE, False)
            setattr(self, layout.TEACHER_ATTRIBUTE, False)

    return setup_teacher_for_fipo


def _reject_fipo(init: Callable[..., None], trainer_name: str) -> Callable[..., None]:
    """Wrap ``__init__`` of a trainer that has no FIPO hook: fail at start-up if fipo is asked for."""

    @functools.wraps(init)
    def init_without_fipo(self: Any, *args: Any, **kwargs: Any) -> None:
        trainer_args = kwargs.get('args', args[0] if args and hasattr(args[0], 'loss_type') else None)
        if getattr(trainer_args, 'loss_type', None) == 'fipo':
            raise RuntimeError(unsupported_message(trainer_name))
        init(self, *args, **kwargs)

    return init_without_fipo


def trainer_patches(cls: type) -> list[Patch]:
    """The patches of one GRPO trainer class, by what it can do."""
    if legacy.class_is_servable(cls):  # ms-swift 3.11 - 4.2.1: the DAPO loss, reweighted advantages
        return legacy.trainer_patches(cls)
    if not hasattr(cls, layout.FIPO_HOOK):  # no hook: refuse fipo when the trainer is built
        refuse = functools.partial(_reject_fipo, trainer_name=cls.__name__)
        return [Patch(cls, '__init__', refuse, 'refuse fipo: this ms-swift has no FIPO hook')]
    patches = [Patch(cls, layout.FIPO_HOOK, _adapter, 'FIPO computed by swift-fipo')]
    if hasattr(cls, layout.HF_METRICS_METHOD):
        patches.append(Patch(cls, layout.HF_METRICS_METHOD, _with_extra_metrics, 'HF: extra fipo/* metrics'))
    elif hasattr(cls, layout.MEGATRON_LOSS_METHOD) and hasattr(cls, layout.MEGATRON_REDUCE_METHOD):
        patches.append(Patch(cls, layout.MEGATRON_LOSS_METHOD, _with_megatron_extra_metrics,
                             'Megatron: extra fipo/* metrics'))
    if hasattr(cls, layout.AGGREGATE_METHOD):
        patches.append(Patch(cls, layout.AGGREGATE_METHOD, _with_extreme_aggregation,
                             'min/max metrics combine as min/max over accumulation chunks'))
    if hasattr(cls, layout.TEACHER_METHOD):
        patches.append(Patch(cls, layout.TEACHER_METHOD, _without_implicit_teacher,
                             'fipo without a teacher is not OPD-RL'))
    return patches


def patch_trainer_class(cls: type) -> bool:
    """Apply one trainer class's patches; True if it has the FIPO hook (else fipo is refused at start-up)."""
    PatchSet(trainer_patches(cls)).apply()
    return hasattr(cls, layout.FIPO_HOOK) or legacy.is_patched(cls)


def patches_for(module: ModuleType) -> PatchSet:
    """Every patch the plugin makes to one ms-swift module: the one place they are declared."""
    if module.__name__ in _PIPELINE_MODULES:
        pipeline = getattr(module, layout.PIPELINE_CLASS, None)
        if pipeline is None or not hasattr(pipeline, layout.PARSE_METHOD):
            return PatchSet([])
        patches = [Patch(pipeline, layout.PARSE_METHOD, with_fipo_flags, '--fipo_* flags, presets, validation')]
        if hasattr(pipeline, layout.COMPAT_METHOD):
            patches.append(Patch(pipeline, layout.COMPAT_METHOD, with_run_validation,
                                 'validate fipo settings after parsing (the explicit route)'))
        return PatchSet(patches)
    return PatchSet([patch for cls in trainer_classes(module) for patch in trainer_patches(cls)])


def trainer_classes(module: ModuleType) -> list[type]:
    """The GRPO trainer classes a trainer module defines (those with a loss to hook)."""
    return [
        value for name, value in vars(module).items()
        if isinstance(value, type) and value.__module__ == module.__name__
        and name.endswith(layout.TRAINER_CLASS_SUFFIX)
    ]


def patch_module(module: ModuleType) -> dict[str, bool]:
    """Apply the patches of one imported ms-swift module; ``{class: has the FIPO hook}``.

    The activation hook calls this right after ms-swift imports a watched module.
    """
    if module.__name__ in _PIPELINE_MODULES:
        patches = patches_for(module)
        patches.apply()
        return {layout.PIPELINE_CLASS: bool(patches.patches)}
    classes = trainer_classes(module)
    if not classes:
        raise RuntimeError(f'swift-fipo: no GRPO trainer class found in {module.__name__}; '
                           f'supported: {SUPPORTED_RANGE}.')
    return {cls.__name__: patch_trainer_class(cls) for cls in classes}


def install(megatron: bool | None = None) -> dict[str, dict[str, bool]]:
    """Hook the plugin into ms-swift in this process; idempotent.

    The argument parsing and the HF-style trainer module are imported and patched. Megatron's module is
    patched if ms-swift already imported it, or when ``megatron=True`` (importing ``swift.megatron`` has
    side effects, so we never do it unasked). Returns ``{module: {class: has the FIPO hook}}``.
    """
    report = {name: patch_module(importlib.import_module(name))
              for name in map(layout.module_path, (layout.PIPELINE_MODULE, layout.HF_TRAINER_MODULE))}
    if megatron or (megatron is None and layout.MEGATRON_TRAINER_MODULE in sys.modules):
        report[layout.MEGATRON_TRAINER_MODULE] = patch_module(importlib.import_module(layout.MEGATRON_TRAINER_MODULE))
    return report


def uninstall() -> None:
    """Revert every patch the plugin made to the ms-swift modules imported in this process, exactly.

    The activation hook stays registered: modules ms-swift imports later are still patched (set
    ``SWIFT_FIPO_DISABLE=1`` before start-up to avoid that).
    """
    for name in layout.WATCHED:
        if name in sys.modules:
            patches_for(sys.modules[name]).revert()


def is_patched(cls: type) -> bool:
    """True if ``cls`` computes FIPO through this plugin."""
    return is_patch(vars(cls).get(layout.FIPO_HOOK)) or legacy.is_patched(cls)


def native_fipo_influence(cls: type) -> Callable[..., Any]:
    """ms-swift's own ``_compute_fipo_influence`` of ``cls``, whether or not the plugin patched it."""
    return original_of(vars(cls).get(layout.FIPO_HOOK, getattr(cls, layout.FIPO_HOOK)))
