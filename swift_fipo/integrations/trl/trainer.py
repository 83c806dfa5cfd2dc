"""TRL integration: ``FIPOGRPOTrainer``, a ``trl.GRPOTrainer`` that trains with FIPO.

Supported: TRL >= 0.26 (tested 0.26.2, 0.28.0, 0.29.1, 1.16.0); ms-swift >= 4.2.2 pins trl < 1.0 and
installs 0.29.1. Older TRL is refused with a clear error.

How it hooks in. TRL's ``GRPOTrainer._compute_loss`` first calls
``self._get_per_token_logps_and_entropies`` for the current policy, then reads
``inputs["advantages"]`` and builds the clipped loss from them; from TRL 0.26 it accepts per-token
``[B, T]`` advantages. FIPO's loss is the clipped loss with A_t replaced by A_t * f_t, where f_t > 0
is detached, so we override the log-prob method: as soon as the current log-probs exist we compute
f_t with ``compute_fipo_influence`` and put ``advantages * f_t`` into a private copy of the batch,
which TRL then reads. Normalisation, KL term, masks and TRL's own metrics all stay TRL's code.

The hook points are checked by capability (the methods exist, and ``_compute_loss`` reads the
advantages after the log-probs and accepts ``[B, T]`` ones), never by version string; every loss
call also verifies at run time that the advantages TRL used were the reweighted ones. The trainer's
``compute_loss`` (a subclass's, or that of a class standing in for ``trl.GRPOTrainer``, such as
Unsloth's) must reach ``_compute_loss``: read from its source at construction, and counted on every
training step.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
import textwrap
from typing import Any

import torch
from trl import GRPOTrainer

from swift_fipo.config import FIPOConfig, FIPOConfigError
from swift_fipo.integrations.interception import (
    OLD_LOGPS,
    InterceptedBatch,
    interception_of,
    log_ratio,
    record_summaries,
    sequence_ratio,
)
from swift_fipo.integrations.messages import warn
from swift_fipo.integrations.refusals import liger_refusal, on_policy_reason
from swift_fipo.integrations.settings import check_ratio_thresholds, config_error
from swift_fipo.integrations.sources import reads_in_order
from swift_fipo.integrations.trl import layout
from swift_fipo.integrations.versions import installed_version
from swift_fipo.ops.influence import FIPOStats
from swift_fipo.ops.loss import reweight_advantages

# Found by capability, not version: per-token advantages reached _compute_loss in TRL 0.26.
SUPPORTED_RANGE = 'trl >= 0.26'
TESTED_VERSIONS = ('0.26.2', '0.28.0', '0.29.1', '1.16.0')
# The clipped-surrogate losses on which "A_t -> A_t * f_t" is FIPO; they differ only in normalisation
# (TRL computes all five in one branch; 0.26 has no 'luspo').
SUPPORTED_LOSS_TYPES = ('dapo', 'grpo', 'bnpo', 'dr_grpo', 'luspo')
# TRL's other losses, and why FIPO (defined on the clipped surrogate) is not applied to them.
REFUSED_LOSS_TYPES = {
    'cispo': 'a REINFORCE loss with a clipped, detached importance weight, not the clipped surrogate',
    'sapo': "a soft sigmoid gate on the ratio replaces the surrogate's clip",
    'vespo': 'sequence-level Gamma weights of the log-ratios replace the clipped surrogate',
}
IMPORTANCE_SAMPLING_LEVELS = ('token', 'sequence')
HOST = 'swift-fipo: FIPOGRPOTrainer'  # how messages start

_LOGPS_METHOD, _LOSS_METHOD = layout.LOGPS_METHOD, layout.LOSS_METHOD


def trl_version() -> str:
    return installed_version('trl') or '(unknown)'


class UnsupportedTRLError(RuntimeError):
    """The installed TRL has no place where FIPO can be applied without copying its loss."""


def check_trl_support(trainer_cls: type = GRPOTrainer) -> None:
    """Raise ``UnsupportedTRLError`` unless ``trainer_cls`` has the hooks FIPOGRPOTrainer relies on.

    ``trainer_cls`` may be ``FIPOGRPOTrainer`` or a subclass: the loss hooks are then read from the TRL class
    it is built on, and its ``compute_loss`` (wherever it comes from) must call ``_compute_loss``.
    """
    unsloth = unsloth_trainer(trainer_cls)
    if unsloth is not None:
        raise UnsupportedTRLError(_unsloth_refusal(trainer_cls, unsloth))
    skipping = logps_override_skipping_hook(trainer_cls)
    if skipping is not None:
        raise UnsupportedTRLError(_logps_override_refusal(trainer_cls, skipping))
    host = _host_class(trainer_cls)
    missing = [name for name in (_LOGPS_METHOD, _LOSS_METHOD) if not callable(getattr(host, name, None))]
    if missing:
        raise UnsupportedTRLError(_unsupported(f'{host.__name__} has no {", ".join(missing)}'))
    try:
        source: str | None = inspect.getsource(getattr(host, _LOSS_METHOD))
    except (OSError, TypeError):
        # No source (e.g. a frozen install): the run-time check in every loss call still guards us.
        warn('cannot read the source of GRPOTrainer._compute_loss to verify the FIPO hook; relying on the '
             'per-step check.')
        source = None
    if source is not None:
        if not reads_in_order(source, f'self.{_LOGPS_METHOD}(', layout.LOSS_READS_ADVANTAGES):
            raise UnsupportedTRLError(
                _unsupported('its _compute_loss does not read inputs["advantages"] after computing the log-probs'))
        # Before 0.26 TRL always did advantages.unsqueeze(1): [B, T] advantages would broadcast to
        # [B, B, T] without any error, so this must be refused rather than discovered.
        if layout.PER_TOKEN_ADVANTAGES_MARKER not in source:
            raise UnsupportedTRLError(_unsupported('its _compute_loss does not accept per-token [B, T] advantages'))
    reaches, owner = compute_loss_reaches_hook(trainer_cls)
    if reaches is False:
        raise UnsupportedTRLError(_bypass_refusal(trainer_cls, owner))


def _host_class(trainer_cls: type) -> type:
    """The class FIPO hooks into: the first in the MRO that is not FIPOGRPOTrainer or a subclass of it."""
    fipo_cls = globals().get('FIPOGRPOTrainer')  # None while this module is being defined
    for klass in trainer_cls.__mro__:
        if fipo_cls is None or not issubclass(klass, fipo_cls):
            return klass
    return trainer_cls


def _self_calls(function: Any) -> frozenset[str] | None:
    """The methods ``function`` calls on its first argument (``name``) or through ``super()`` (``super().name``),
    read from its source; None when there is no source to read (dynamic code, a frozen install, a callable
    object)."""
    function = getattr(function, '__func__', function)  # staticmethod / classmethod objects in a class dict
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return None
    node = next((node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                      ast.Lambda))), None)
    if node is None or not node.args.args:
        return None
    me = node.args.args[0].arg
    names = set()
    # ast, not text: a call named in a comment or a docstring must not count.
    for call in ast.walk(node):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
            continue
        target = call.func.value
        if isinstance(target, ast.Name) and target.id == me:
            names.add(call.func.attr)
        elif isinstance(target, ast.Call) and isinstance(target.func, ast.Name) and target.func.id == 'super':
            names.add(f'super().{call.func.attr}')
    return frozenset(names)


def _logps_overrides(trainer_cls: type) -> list[type]:
    """The subclasses of FIPOGRPOTrainer in ``trainer_cls``'s MRO that define the log-prob method FIPO hooks."""
    fipo_cls = globals().get('FIPOGRPOTrainer')
    if fipo_cls is None:
        return []
    return [klass for klass in trainer_cls.__mro__
            if klass is not fipo_cls and issubclass(klass, fipo_cls) and _LOGPS_METHOD in vars(klass)]


def logps_override_skipping_hook(trainer_cls: type) -> type | None:
    """The subclass whose override of the log-prob method never calls ``super()`` (FIPO reweights the advantages
    in FIPOGRPOTrainer's, which then never runs); None otherwise, or where a source cannot be read (the check
    in every loss call then decides)."""
    for klass in _logps_overrides(trainer_cls):
        calls = _self_calls(vars(klass)[_LOGPS_METHOD])
        if calls is None:
            return None
        if f'super().{_LOGPS_METHOD}' not in calls:
            return klass
    return None


def _logps_override_refusal(trainer_cls: type, owner: type) -> str:
    return (f'{HOST}: {trainer_cls.__qualname__} would train without FIPO: its {_LOGPS_METHOD} '
            f"({owner.__module__}.{owner.__qualname__}.{_LOGPS_METHOD}) overrides FIPOGRPOTrainer's and never calls "
            f'super().{_LOGPS_METHOD}, where FIPO reweights the advantages as soon as the current log-probs exist. '
            f'Call super().{_LOGPS_METHOD}(...) in the override and change its result instead.')


def compute_loss_reaches_hook(trainer_cls: type) -> tuple[bool | None, type | None]:
    """Whether ``trainer_cls.compute_loss`` calls ``self._compute_loss`` (where FIPO acts), following
    ``super().compute_loss`` up the MRO; None when a source on the way cannot be read (the per-step count
    then decides). Also returns the class whose ``compute_loss`` decided."""
    for klass in trainer_cls.__mro__:
        if 'compute_loss' not in vars(klass):
            continue
        # The function object itself, whatever name it was defined under.
        calls = _self_calls(vars(klass)['compute_loss'])
        if calls is None:
            return None, klass
        if _LOSS_METHOD in calls:
            return True, klass
        if 'super().compute_loss' not in calls:
            return False, klass
    return False, None


def unsloth_trainer(trainer_cls: type) -> type | None:
    """The Unsloth-generated class ``trainer_cls`` is built on, if any.

    Importing unsloth replaces ``trl.GRPOTrainer`` with ``UnslothGRPOTrainer``, generated from TRL's source
    (unsloth/models/rl.py) with a compute_loss of its own that never calls ``_compute_loss``. Found by what
    its class carries: methods Unsloth wrapped are marked ``_unsloth_*`` (``train._unsloth_resume_guard``,
    ``__init__._unsloth_grpo_hidden_states_init_wrapped``), and it lives in a module of Unsloth's compiled
    cache under an ``Unsloth`` name.
    """
    for klass in trainer_cls.__mro__:
        for value in vars(klass).values():
            marks = getattr(value, '__dict__', None)
            if isinstance(marks, dict) and any(key.startswith(layout.UNSLOTH_MARK_PREFIX) and mark is True
                                               for key, mark in marks.items()):
                return klass
        if (klass.__module__.split('.')[0].startswith(layout.UNSLOTH_PACKAGE)
                or klass.__name__.startswith(layout.UNSLOTH_CLASS_PREFIXES)):
            return klass
    return None


def _unsloth_refusal(trainer_cls: type, unsloth: type) -> str:
    return (f'swift-fipo: FIPOGRPOTrainer does not serve Unsloth yet: {trainer_cls.__qualname__} is built on a '
            f'class Unsloth generated or patched ({unsloth.__module__}.{unsloth.__qualname__}). Importing unsloth '
            "replaces trl.GRPOTrainer with its UnslothGRPOTrainer, whose compute_loss computes Unsloth's own GRPO "
            'loss and never calls _compute_loss, where FIPO reweights the advantages: the run would train without '
            'FIPO. Use FIPOGRPOTrainer in a process that does not import unsloth, or swift_fipo.apply_fipo in a '
            'loop of your own.')


def _bypass_refusal(trainer_cls: type, owner: type | None) -> str:
    where = 'it has no compute_loss' if owner is None else \
        f'its compute_loss ({owner.__module__}.{owner.__qualname__}.compute_loss) never calls self._compute_loss'
    return (f'swift-fipo: {trainer_cls.__qualname__} would train without FIPO: {where}, where FIPO reweights the '
            'advantages. Let compute_loss return self._compute_loss(model, inputs) (or call super().compute_loss), '
            'or customise _compute_loss instead and call super()._compute_loss there.')


def lost_init_refusal(trainer_cls: type) -> str | None:
    """Why ``trainer_cls.__init__`` is not a GRPO trainer's own any more; None when it is.

    ms-swift's GRPO trainer module runs ``del trl.GRPOTrainer.__init__`` on import, and then
    ``GRPOTrainer.__init__`` is transformers' ``Trainer.__init__``. A class standing in for ``trl.GRPOTrainer``
    may well have no ``__init__`` of its own: inheriting TRL's is fine.
    """
    mro = trainer_cls.__mro__
    loss_classes = [index for index, klass in enumerate(mro) if _LOSS_METHOD in vars(klass)]
    init_at = next((index for index, klass in enumerate(mro) if '__init__' in vars(klass)), len(mro))
    if not loss_classes or init_at <= loss_classes[-1]:
        return None
    lost = mro[loss_classes[-1]]  # the deepest class with the GRPO loss: its __init__ is the one missing
    below = mro[init_at].__qualname__ if init_at < len(mro) else 'object'
    name = f'{lost.__module__}.{lost.__qualname__}'
    deleter = init_deleted_by_ms_swift(trainer_cls)
    if deleter is not None:
        return (f'swift-fipo: {name} has lost its __init__: ms-swift deletes it when {deleter} is imported. '
                "Use FIPOGRPOTrainer in a process that does not import ms-swift's GRPO trainer (for ms-swift, "
                'use swift rlhf --loss_type fipo instead).')
    return (f'swift-fipo: {name} has no __init__ of its own (it was deleted at run time), so '
            f"{trainer_cls.__qualname__}() would run {below}.__init__, which is not a GRPO trainer's.")


def init_deleted_by_ms_swift(trainer_cls: type) -> str | None:
    """The ms-swift GRPO trainer module, loaded in this process, that holds the TRL class whose ``__init__`` is
    missing from ``trainer_cls`` (ms-swift deletes it on import); None when ms-swift is not to blame."""
    loss_classes = [klass for klass in trainer_cls.__mro__ if _LOSS_METHOD in vars(klass)]
    if not loss_classes or '__init__' in vars(loss_classes[-1]):
        return None
    lost = loss_classes[-1]
    holders = [module_name for module_name, module in list(sys.modules.items())
               if module_name.split('.')[0] == layout.INIT_DELETER_PACKAGE
               and module_name.endswith(layout.INIT_DELETER_MODULE_SUFFIX)
               and any(value is lost for value in vars(module).values())]
    return holders[0] if holders else None


def _unsupported(reason: str) -> str:
    return (f'swift-fipo: FIPOGRPOTrainer cannot hook this TRL (installed: trl {trl_version()}): {reason}. '
            f"It supports {SUPPORTED_RANGE} (tested: {', '.join(TESTED_VERSIONS)}); "
            f"install one with: pip install 'trl>=0.26'")


def trl_loss_types(trainer_cls: type = GRPOTrainer) -> frozenset[str] | None:
    """The ``loss_type`` values ``trainer_cls._compute_loss`` handles, read from its source; None if unreadable.

    TRL's ``GRPOConfig`` accepts any string, so a name the installed TRL lacks would only fail at the first
    loss step, after the model loaded and generated.
    """
    source = _loss_source(trainer_cls)
    if source is None:
        return None
    names = set(re.findall(r'self\.loss_type\s*[!=]=\s*["\'](\w+)["\']', source))
    for group in re.findall(r'self\.loss_type\s+in\s+[\[(]([^\])]*)[\])]', source):
        names.update(re.findall(r'["\'](\w+)["\']', group))
    return frozenset(names) or None


def luspo_masks_padding(trainer_cls: type = GRPOTrainer) -> bool:
    """Whether TRL sums LUSPO's per-token loss over the loss mask only (TRL 1.16 does).

    TRL 0.29 takes ``(per_token_loss * lengths).mean()`` over every position, padding included: right for its
    own ``[B, 1]`` sequence loss, but FIPO's per-token weights make the loss ``[B, T]``, and padding would
    then count.
    """
    source = _loss_source(trainer_cls) or ''
    branch = re.search(r'self\.loss_type\s*==\s*["\']luspo["\']\s*:(.*?)\n\s*(?:elif|else)\b', source, re.S)
    return bool(branch) and re.search(r'\(\s*per_token_loss\s*\*\s*mask\s*\)', branch.group(1)) is not None


def served_loss_types(trainer_cls: type = GRPOTrainer) -> tuple[str, ...]:
    """The ``loss_type`` values FIPOGRPOTrainer trains with on the installed TRL: the clipped-surrogate losses
    TRL's ``_compute_loss`` computes (read from it), LUSPO only where TRL keeps padding out of it."""
    offered = trl_loss_types(trainer_cls)
    return tuple(loss_type for loss_type in SUPPORTED_LOSS_TYPES
                 if (offered is None or loss_type in offered)
                 and (loss_type != 'luspo' or luspo_masks_padding(trainer_cls)))


def _loss_type_refusal(loss_type: Any, served: tuple[str, ...], trainer_cls: type) -> str:
    """Why ``loss_type`` is refused; what FIPOGRPOTrainer does with the loss type, and what this TRL offers."""
    offered = trl_loss_types(trainer_cls)
    if loss_type in REFUSED_LOSS_TYPES:
        why = f'{REFUSED_LOSS_TYPES[loss_type]}; FIPO reweights the clipped PPO surrogate'
    elif loss_type == 'fipo':
        why = "not one of TRL's loss types: FIPOGRPOTrainer applies FIPO on top of the one chosen"
    elif loss_type == 'luspo' and offered is not None and 'luspo' in offered:
        why = ("FIPO needs a TRL that sums LUSPO's loss over completion tokens only, as TRL 1.16 does; this one "
               "averages it over padding positions too, where FIPO's per-token weights would count")
    elif offered is not None and loss_type not in offered:
        why = f'not a loss of the installed TRL, which has {", ".join(sorted(offered))}'
    else:
        why = 'not a clipped-surrogate loss FIPOGRPOTrainer can reweight'
    return (f'swift-fipo: FIPOGRPOTrainer always trains with FIPO; {layout.LOSS_TYPE_OPTION} only chooses how its '
            f'clipped loss is normalised, one of {", ".join(served)} on the installed trl {trl_version()} '
            f"('dapo' is the paper's and ms-swift's choice); got loss_type={loss_type!r} ({why}).")


def _loss_source(trainer_cls: type) -> str | None:
    try:
        return inspect.getsource(getattr(trainer_cls, _LOSS_METHOD))
    except (AttributeError, OSError, TypeError):
        return None


def validate_grpo_args(args: Any, trainer_cls: type = GRPOTrainer) -> None:
    """Refuse TRL settings under which FIPO would silently not be applied or not be FIPO; warn if it cannot act."""
    # The Liger path computes a fused loss in compute_liger_loss and never calls _compute_loss.
    if getattr(args, 'use_liger_kernel', False) or getattr(args, 'use_liger_loss', False):
        raise ValueError(liger_refusal(HOST, 'use_liger_kernel=True'))
    loss_type = getattr(args, 'loss_type', None)
    served = served_loss_types(trainer_cls)
    if loss_type not in served:
        raise ValueError(_loss_type_refusal(loss_type, served, trainer_cls))
    level = getattr(args, 'importance_sampling_level', 'token')
    if level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(f'swift-fipo: importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}; '
                         f'got {level!r}.')
    reason = on_policy_reason(getattr(args, 'num_iterations', 1), getattr(args, 'steps_per_generation', None),
                              getattr(args, 'gradient_accumulation_steps', 1))
    if reason is not None:
        warn(reason, stacklevel=3)


def _config_for(args: Any, fipo: FIPOConfig | None) -> FIPOConfig:
    trl_delta = getattr(args, 'delta', None)
    if fipo is None:
        # TRL's --delta is the same dual clip as ms-swift's, which FIPOConfig.delta mirrors.
        try:
            return FIPOConfig(delta=trl_delta)
        except ValueError as error:
            raise ValueError(f'swift-fipo: GRPOConfig.delta={trl_delta!r} cannot serve as FIPOConfig.delta '
                             f'({error}); pass fipo=FIPOConfig(delta=...) explicitly.') from None
    if not isinstance(fipo, FIPOConfig):
        raise TypeError(f'swift-fipo: fipo must be a swift_fipo.FIPOConfig; got {type(fipo).__name__}.')
    if fipo.delta != trl_delta:
        warn(f"FIPOConfig.delta={fipo.delta!r} (FIPO's participation filter) differs from "
             f"GRPOConfig.delta={trl_delta!r} (TRL's dual clip); ms-swift uses one value for both.", stacklevel=3)
    return fipo


def check_ratio_rule(args: Any, config: FIPOConfig, explicit: bool) -> None:
    """The rule every host applies (``settings.check_ratio_thresholds``): TRL's dual clip ``GRPOConfig.delta``,
    and FIPO's delta and filter threshold, must lie beyond TRL's PPO clip ``1 + epsilon_high``. ``explicit``:
    ``config`` was passed as ``fipo=``, so its fields are named ``FIPOConfig.*``."""
    epsilon_high, epsilon_option = getattr(args, 'epsilon_high', None), layout.EPSILON_HIGH_OPTION
    if epsilon_high is None:  # TRL's upper clip is then epsilon
        epsilon_high, epsilon_option = getattr(args, 'epsilon', None), layout.EPSILON_OPTION
    trl_delta = getattr(args, 'delta', None)
    if trl_delta is not None:  # TRL clamps its ratio at delta whatever FIPO does: the same rule holds for it
        try:
            trl_dual_clip = FIPOConfig(delta=trl_delta)
        except FIPOConfigError as error:
            raise config_error(error, layout.DELTA_OPTION, HOST) from None
        check_ratio_thresholds(trl_dual_clip, epsilon_high, lambda field: layout.DELTA_OPTION, HOST, epsilon_option)
    check_ratio_thresholds(config, epsilon_high, lambda field: f'FIPOConfig.{field}' if explicit or field != 'delta'
                           else layout.DELTA_OPTION, HOST, epsilon_option)


class FIPOGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` with FIPO: the clipped per-token loss is reweighted by Future-KL influence.

    Use it like ``GRPOTrainer``, plus ``fipo=FIPOConfig(...)`` (default: ms-swift's defaults, with
    ``delta`` taken from ``GRPOConfig.delta``). Metrics ``fipo/*`` go through TRL's metric logging.
    FIPO only acts on rollouts reused off-policy: use ``num_iterations > 1``.
    """

    def __init__(self, *args: Any, fipo: FIPOConfig | None = None, **kwargs: Any) -> None:
        # type(self): a subclass's compute_loss must reach _compute_loss too.
        check_trl_support(type(self))
        lost_init = lost_init_refusal(GRPOTrainer)
        if lost_init is not None:
            raise RuntimeError(lost_init)
        try:
            grpo_args = inspect.signature(GRPOTrainer.__init__).bind(self, *args, **kwargs).arguments.get('args')
        except TypeError:
            grpo_args = None  # a bad call: let GRPOTrainer report it in its own words
        # Validate before GRPOTrainer loads the model (and, for Liger, fails with its own import error).
        if grpo_args is not None:
            validate_grpo_args(grpo_args, GRPOTrainer)
            self.fipo_config = _config_for(grpo_args, fipo)
            check_ratio_rule(grpo_args, self.fipo_config, explicit=fipo is not None)
        super().__init__(*args, **kwargs)
        if grpo_args is None:  # GRPOTrainer built its default GRPOConfig
            validate_grpo_args(self.args, GRPOTrainer)
            self.fipo_config = _config_for(self.args, fipo)
            check_ratio_rule(self.args, self.fipo_config, explicit=fipo is not None)

    @property
    def last_fipo_stats(self) -> FIPOStats | None:
        """The FIPO stats of the last loss call (None before the first)."""
        return interception_of(self).last_stats

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        state = interception_of(self)
        with state.loss_call(inputs) as batch:
            loss = super()._compute_loss(model, batch)
        failure = state.finish(batch)
        overrides = _logps_overrides(type(self))
        if failure is not None and overrides and not batch.weighted:  # the subclass's override, not TRL
            raise UnsupportedTRLError(_logps_override_refusal(type(self), overrides[0]) + f' ({failure})')
        if failure is not None:
            raise UnsupportedTRLError(
                _unsupported(f'GRPOTrainer._compute_loss used the advantages without passing through the FIPO hook '
                             f'({failure}; {_LOGPS_METHOD} {"was" if batch.weighted else "was not"} called first)'))
        return loss

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        # The source scan at construction cannot read every compute_loss (dynamic code, no source), nor see an
        # override of _compute_loss that skips ours: count. Raising here comes before the optimizer step.
        before = interception_of(self).loss_calls
        loss = super().training_step(*args, **kwargs)
        if interception_of(self).loss_calls == before:
            _, owner = compute_loss_reaches_hook(type(self))
            where = '' if owner is None else f' ({owner.__module__}.{owner.__qualname__}.compute_loss)'
            raise UnsupportedTRLError(
                f'swift-fipo: {type(self).__qualname__} trained a step without FIPO: its compute_loss{where} did '
                'not reach FIPOGRPOTrainer._compute_loss, where FIPO reweights the advantages (or an override of '
                '_compute_loss did not call super()._compute_loss). Refused before the optimizer step; let '
                'compute_loss return self._compute_loss(model, inputs).')
        return loss

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        # The log-probs come first; TRL 1.x returns more than (logps, entropies), so pass all through.
        result = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        batch = interception_of(self).pending()
        if batch is not None:  # inside our loss call (not while generating), once
            self._reweight_advantages(batch, result[0])
        return result

    def _reweight_advantages(self, batch: InterceptedBatch, per_token_logps: torch.Tensor) -> None:
        ratios = log_ratio(per_token_logps, batch.peek(OLD_LOGPS))
        mask = batch.peek('completion_mask')
        tool_mask = batch.peek('tool_mask')
        if tool_mask is not None:  # tool outputs were not sampled by the policy: no Future-KL from them
            mask = mask * tool_mask
        mask = mask.bool()
        # The same sequence-level ratio TRL's loss clips, for the safety rule and the filter.
        sequence_level = getattr(self, 'importance_sampling_level', 'token') == 'sequence'
        ratio = sequence_ratio(ratios, mask) if sequence_level else None
        weighted, stats = reweight_advantages(batch.peek('advantages'), ratios, mask, self.fipo_config, ratio=ratio)
        batch.replace_advantages(weighted)
        interception_of(self).last_stats = stats
        mode = 'train' if self.model.training else 'eval'
        # One gather and one device sync for all the metrics of this micro-batch.
        record_summaries(self._metrics[mode], stats, self.accelerator.gather, self.accelerator.device)
