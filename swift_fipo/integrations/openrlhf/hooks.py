"""OpenRLHF's hooks: every patch declared in ``patches_for``, applied by the interpreter-start activation
(``patch_module``, in the driver and in every Ray actor) or by ``install()``, reverted by ``uninstall()``.

- ``openrlhf.models.loss``: ``PolicyLoss.__init__`` takes ``policy_loss_type='fipo'`` (runs the ppo branch)
  and ``fipo_config``; ``PolicyLoss.forward`` reweights the advantages when FIPO is on.
- ``openrlhf.trainer.ray.ppo_actor``: ``ActorPPOTrainer.__init__`` hands its loss the run's FIPO settings;
  ``training_step`` adds the ``fipo_*`` metrics.
- ``argparse``: ``ArgumentParser.parse_known_args`` serves ``--actor.fipo.*`` on OpenRLHF's parser
  (``arguments.py``); applied when the actor module is imported (the command line imports it before it
  parses), and by ``install()``.

Hook points are checked by capability (signatures and source markers, ``layout``); a module that lacks one
is left alone and doctor says why.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from swift_fipo.integrations import diagnosis as doctor
from swift_fipo.integrations.openrlhf import arguments, layout
from swift_fipo.integrations.patches import Patch, PatchSet, original_of
from swift_fipo.integrations.sources import missing_markers, source_of
from swift_fipo.integrations.versions import installed_version

ARGPARSE = 'argparse'
_VERDICT = f'openrlhf `{layout.LOSS_TYPE_OPTION} {layout.LOSS_TYPE}`'


# ---------------------------------------------------------------------------------------------------
# Capabilities


def _lacks(function: Any, parameters: tuple[str, ...], markers: tuple[str, ...], what: str) -> str | None:
    """Why ``function`` (unpatched) is not the OpenRLHF code FIPO was written against, or None."""
    function = original_of(function)
    try:
        known = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return f'{what} has no readable signature'
    missing = [name for name in parameters if name not in known]
    if missing:
        return f'{what} lacks the parameter(s) {", ".join(missing)}'
    absent = missing_markers(source_of(function) or '', markers)
    if absent:
        return f'{what} no longer contains {absent[0]!r}'
    return None


def loss_serves(module: ModuleType) -> str | None:
    """Why this ``openrlhf.models.loss`` cannot take FIPO, or None if it can."""
    loss = getattr(module, layout.POLICY_LOSS_CLASS, None)
    if not isinstance(loss, type):
        return f'{module.__name__} has no {layout.POLICY_LOSS_CLASS}'
    return (_lacks(loss.__init__, layout.POLICY_LOSS_PARAMETERS, (), f'{layout.POLICY_LOSS_CLASS}.__init__')
            or _lacks(loss.forward, layout.FORWARD_PARAMETERS, layout.FORWARD_MARKERS,
                      f'{layout.POLICY_LOSS_CLASS}.forward'))


def trainer_serves(module: ModuleType) -> str | None:
    """Why this ``openrlhf.trainer.ray.ppo_actor`` cannot take FIPO, or None if it can."""
    trainer = getattr(module, layout.TRAINER_CLASS, None)
    if not isinstance(trainer, type):
        return f'{module.__name__} has no {layout.TRAINER_CLASS}'
    step = getattr(trainer, layout.TRAINING_STEP_METHOD, None)
    if step is None:
        return f'{layout.TRAINER_CLASS} has no {layout.TRAINING_STEP_METHOD}'
    return (_lacks(trainer.__init__, (), layout.TRAINER_INIT_MARKERS, f'{layout.TRAINER_CLASS}.__init__')
            or _lacks(step, (), layout.TRAINING_STEP_MARKERS, f'{layout.TRAINER_CLASS}.{layout.TRAINING_STEP_METHOD}'))


def _serves(module: ModuleType) -> str | None:
    if module.__name__ == layout.LOSS_MODULE:
        return loss_serves(module)
    if module.__name__ == layout.ACTOR_MODULE:
        return trainer_serves(module)
    return None


# ---------------------------------------------------------------------------------------------------
# The replacements


def _accept_fipo(original: Callable[..., Any]) -> Callable[..., Any]:
    """PolicyLoss.__init__ that also takes ``policy_loss_type='fipo'`` (the ppo branch, FIPO on) and
    ``fipo_config``."""
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, fipo_config: Any = None, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        if bound.arguments.get('policy_loss_type') != layout.LOSS_TYPE:
            if fipo_config is not None:
                raise ValueError(f'fipo_config is for policy_loss_type={layout.LOSS_TYPE!r}; got '
                                 f'{bound.arguments.get("policy_loss_type", layout.STOCK_LOSS_TYPE)!r}.')
            original(self, *args, **kwargs)
            return
        bound.arguments['policy_loss_type'] = layout.STOCK_LOSS_TYPE
        original(*bound.args, **bound.kwargs)
        from swift_fipo.integrations.openrlhf.loss import FIPO_ATTRIBUTE, with_dual_clip
        setattr(self, FIPO_ATTRIBUTE, with_dual_clip(fipo_config, bound.arguments.get('dual_clip')))

    return __init__


def _reweighting_forward(original: Callable[..., Any]) -> Callable[..., Any]:
    """PolicyLoss.forward: as is, or with the advantages reweighted where FIPO is on."""

    @functools.wraps(original)
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        from swift_fipo.integrations.openrlhf.loss import FIPO_ATTRIBUTE, fipo_forward
        config = getattr(self, FIPO_ATTRIBUTE, None)
        if config is None:
            return original(self, *args, **kwargs)
        return fipo_forward(self, original, config, *args, **kwargs)

    return forward


def _fipo_loss_of(trainer: Any) -> Any:
    """The trainer's loss if it computes FIPO, else None."""
    from swift_fipo.integrations.openrlhf.loss import FIPO_ATTRIBUTE
    loss = getattr(trainer, layout.TRAINER_LOSS_ATTRIBUTE, None)
    return loss if getattr(loss, FIPO_ATTRIBUTE, None) is not None else None


def _configuring_init(original: Callable[..., Any]) -> Callable[..., Any]:
    """ActorPPOTrainer.__init__ that gives a fipo loss the run's resolved settings (from its arguments)."""

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        run_arguments = getattr(self, 'args', None)
        if arguments.lookup(run_arguments, layout.dest(layout.LOSS_TYPE_OPTION)) != layout.LOSS_TYPE:
            return
        loss = _fipo_loss_of(self)
        if loss is None:  # the loss module was not hooked: stop here, not at the first step
            raise RuntimeError(f"swift-fipo: {layout.LOSS_TYPE_OPTION} {layout.LOSS_TYPE}, but OpenRLHF's "
                               f'{layout.POLICY_LOSS_CLASS} in this process is not hooked '
                               f'({doctor.why_not_hooked()}). Run `swift-fipo doctor`.')
        from swift_fipo.integrations.openrlhf.loss import FIPO_ATTRIBUTE
        setattr(loss, FIPO_ATTRIBUTE, arguments.config_of_arguments(run_arguments))

    return __init__


def _reporting_training_step(original: Callable[..., Any]) -> Callable[..., Any]:
    """ActorPPOTrainer.training_step that adds the step's FIPO metrics to the status it returns."""

    @functools.wraps(original)
    def training_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        loss = _fipo_loss_of(self)
        if loss is None:
            return original(self, *args, **kwargs)
        from swift_fipo.integrations.openrlhf.loss import STATS_ATTRIBUTE, metrics_of
        object.__setattr__(loss, STATS_ATTRIBUTE, None)
        status = original(self, *args, **kwargs)
        stats = getattr(loss, STATS_ATTRIBUTE, None)
        if stats is not None and isinstance(status, dict) and {'metrics', 'weights'} <= status.keys():
            metrics, weights = metrics_of(stats)
            status['metrics'].update(metrics)
            status['weights'].update(weights)
        return status

    return training_step


# ---------------------------------------------------------------------------------------------------
# Declaring, applying and reverting


def patches_for(module: ModuleType) -> PatchSet:
    """Every patch swift-fipo makes to ``module`` (the loss module, the actor module or argparse)."""
    if module.__name__ == layout.LOSS_MODULE:
        loss = getattr(module, layout.POLICY_LOSS_CLASS)
        return PatchSet([
            Patch(loss, '__init__', _accept_fipo, f'policy_loss_type={layout.LOSS_TYPE}, fipo_config'),
            Patch(loss, 'forward', _reweighting_forward, 'A x w into the ppo branch'),
        ])
    if module.__name__ == layout.ACTOR_MODULE:
        trainer = getattr(module, layout.TRAINER_CLASS)
        return PatchSet([
            Patch(trainer, '__init__', _configuring_init, "the run's FIPO settings into the loss"),
            Patch(trainer, layout.TRAINING_STEP_METHOD, _reporting_training_step, 'fipo_* metrics'),
        ])
    if module.__name__ == ARGPARSE:
        return PatchSet([Patch(module.ArgumentParser, 'parse_known_args', arguments.parse_hook,
                               "--actor.fipo.* on OpenRLHF's parser")])
    raise ValueError(f'swift-fipo does not patch {module.__name__}')


def patch_module(module: ModuleType) -> dict[str, Any]:
    """Patch a watched OpenRLHF module right after it is imported; idempotent. A module that lacks a hook
    point is left alone (the report says why)."""
    reason = _serves(module)
    if reason is not None:
        return {module.__name__: f'not hooked: {reason}'}
    patches_for(module).apply()
    report: dict[str, Any] = {module.__name__: True}
    if module.__name__ == layout.ACTOR_MODULE:
        # Whatever the program: ``python -m openrlhf.cli.train_ppo_ray``, its file by path, or a copy of it under
        # another name all import the actor module before they parse argv. The parser hook acts only on a
        # parser with OpenRLHF's --actor.policy_loss_type choices; any other parser is parsed as is.
        patches_for(argparse).apply()
        report[ARGPARSE] = True
    return report


def install() -> dict[str, Any]:
    """Explicit route: import OpenRLHF's loss and actor modules and hook both, and OpenRLHF's parser
    (idempotent). Raises ``RuntimeError`` naming what cannot be hooked. The actor module imports vLLM at module
    level: where it cannot be imported, the loss is still hooked and the report says why the actor is not."""
    report: dict[str, Any] = {}
    for name in (layout.LOSS_MODULE, layout.ACTOR_MODULE):
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            if name == layout.LOSS_MODULE:
                raise
            report[name] = f'not imported ({type(error).__name__}: {error})'
            continue
        reason = _serves(module)
        if reason is not None:
            raise RuntimeError(f'swift-fipo cannot hook OpenRLHF {installed_version(layout.DISTRIBUTION)}: {reason}')
        report.update(patch_module(module))
    patches_for(argparse).apply()
    report[ARGPARSE] = True
    return report


def uninstall() -> None:
    """Revert every patch of ``install()`` / the activation in this process, exactly."""
    for name in (ARGPARSE, layout.ACTOR_MODULE, layout.LOSS_MODULE):
        module = sys.modules.get(name)
        if module is not None and _serves(module) is None:
            patches_for(module).revert()


def _hooked(module: ModuleType) -> bool:
    return all(patch.is_applied() for patch in patches_for(module).patches)


def diagnose() -> doctor.Diagnosis:
    """OpenRLHF's part of ``swift-fipo doctor``: its loss and actor modules imported as a run imports them,
    and whether ``--actor.policy_loss_type fipo`` is served (both hooked)."""
    diagnosis = doctor.Diagnosis()
    served = True
    for name in (layout.LOSS_MODULE, layout.ACTOR_MODULE):
        module, error = doctor.import_observed(name, diagnosis)
        if module is None:
            diagnosis.say(f'{name}: cannot import it: {error}')
            served = False
            continue
        reason = _serves(module)
        if reason is not None:
            diagnosis.say(f'{name}: not hooked: {reason}')
            served = False
        elif _hooked(module):
            what = (f'{layout.POLICY_LOSS_CLASS} takes {layout.LOSS_TYPE_OPTION} {layout.LOSS_TYPE}'
                    if name == layout.LOSS_MODULE else
                    f'{layout.TRAINER_CLASS} hands its loss the FIPO settings and logs the fipo_* metrics')
            diagnosis.say(f'{name}: {what}')
        else:
            diagnosis.say(f'{name}: not hooked: {doctor.why_not_hooked()}')
            served = False
    diagnosis.say(f'{layout.CLI_MODULE}: the {layout.OPTION_PREFIX}* options are added when it imports '
                  f'{layout.ACTOR_MODULE} (hooked above)' if served else
                  f'{layout.CLI_MODULE}: no {layout.OPTION_PREFIX}* options without the hooks above')
    diagnosis.judge(_VERDICT, served)
    return diagnosis
