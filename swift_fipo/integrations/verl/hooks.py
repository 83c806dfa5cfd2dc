"""FIPO as verl's policy loss ``fipo`` (``actor_rollout_ref.actor.policy_loss.loss_mode=fipo``).

The loss is verl's own ``vanilla`` loss called with the advantages reweighted by FIPO: vanilla reads
the advantage only through ``-A * ratio``, ``-A * clip(ratio)``, the dual clip ``-A * clip_ratio_c``
and the sign test ``A < 0``; the weight is positive and detached, so every branch, the rollout
importance-sampling weights and verl's aggregation (``agg_loss`` with its global-batch numbers) apply
exactly as in vanilla, per token scaled by the weight. A response the sequence drop removes gets
weight 0: it adds nothing to the loss, but still counts in verl's denominators.

verl's dual clip ``clip_ratio_c`` is always on; it plays the role of ms-swift's ``--delta`` (the
participation filter and the sequence drop use it), so ``fipo.delta`` is not an option here.

Options live under ``actor_rollout_ref.actor.policy_loss.fipo`` (a dict: ``preset`` plus any
``FIPOConfig`` field). verl builds its config dataclasses from Hydra with ``OmegaConf.structured`` and
a merge, which rejects unknown keys, so ``patch_config_module`` adds the field ``fipo`` to verl's
``PolicyLossConfig`` and validates it when the dataclass is built: on the driver, verl's
``validate_config`` builds the actor config before Ray starts any worker. ``patch_core_algos``
registers the loss. The interpreter-start activation calls both in every process (Ray workers
included) when verl imports those modules; ``install()`` (``swift_fipo.verl_plugin``) is the
explicit route.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from swift_fipo.config import FLOAT32_MAX, FIPOConfig, real_number
from swift_fipo.integrations.diagnosis import Diagnosis, import_observed, why_not_hooked
from swift_fipo.integrations.messages import warn
from swift_fipo.integrations.metrics import METRICS
from swift_fipo.integrations.patches import Patch, PatchSet
from swift_fipo.integrations.refusals import on_policy_reason
from swift_fipo.integrations.settings import check_ratio_thresholds, resolve_config
from swift_fipo.integrations.verl.layout import (
    ACTOR_CONFIG_CLASS,
    ACTOR_VALIDATE_METHOD,
    CLIP_HIGH_OPTION,
    CONFIG_MODULE,
    CORE_ALGOS_MODULE,
    DUAL_CLIP_DEFAULT,
    DUAL_CLIP_OPTION,
    GET_LOSS_FUNCTION,
    LOSS_MODE,
    NAME,
    OPTION_PREFIX,
    POLICY_LOSS_CONFIG_CLASS,
    REGISTER_FUNCTION,
    REGISTRY,
    STOCK_LOSS_MODE,
)

if TYPE_CHECKING:
    import torch

HOST = NAME
# verl averages every loss metric over micro-batches and ranks (ppo_loss wraps them as means); a
# quantile cannot be averaged meaningfully, and it is NaN in a micro-batch without negative advantages.
_UNLOGGED = frozenset({'neg_adv_ratio_p99'})
# What a micro-batch without response tokens reports: FIPO did nothing there (no log-ratio: Future-KL 0,
# every weight 1, nothing clipped, filtered, fired or dropped). Its summaries are NaN (a mean over no
# tokens), and verl takes a plain np.mean over micro-batches (NaN then spoils the whole step's value)
# and needs as many values from every rank (a left-out key breaks that); vanilla's own masked means
# give 0 there.
EMPTY_MICRO_BATCH_METRICS = {key: metric.idle for key, metric in METRICS.items() if key not in _UNLOGGED}
_LOSS_PARAMETERS = ('old_log_prob', 'log_prob', 'advantages', 'response_mask', 'loss_agg_mode', 'config',
                    'rollout_is_weights')


def option_name(field: str) -> str:
    """The Hydra path of a FIPO option, as error messages name it; FIPO's delta is verl's dual clip."""
    return DUAL_CLIP_OPTION if field == 'delta' else f'{OPTION_PREFIX}.{field}'


@dataclasses.dataclass
class _FIPOField:
    # The Field object that patch_config_module adds to PolicyLossConfig, built by dataclasses itself.
    fipo: dict = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------
# Configuration


def fipo_config(options: Mapping[str, Any] | None, clip_ratio_c: float | None = None,
                clip_ratio_high: float | None = None) -> FIPOConfig:
    """The FIPOConfig of ``policy_loss.fipo`` (``preset`` plus explicit fields; explicit wins).

    ``clip_ratio_c`` (verl's dual clip) becomes FIPO's ``delta`` when given. With ``clip_ratio_high``
    (vanilla's epsilon_high), the dual clip and ``filter_threshold`` must exceed 1 + clip_ratio_high, the
    rule every host applies (``settings.check_ratio_thresholds``). A bad value raises ``ValueError``
    naming the Hydra option.
    """
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f'{HOST}: {OPTION_PREFIX} must be a mapping of FIPO options; got {options!r}.')
    explicit = dict(options or {})
    preset = explicit.pop('preset', 'swift')
    if 'delta' in explicit:
        raise ValueError(f'{HOST}: {OPTION_PREFIX}.delta is not an option under verl: verl always applies its '
                         f'dual clip {DUAL_CLIP_OPTION}, and FIPO uses that value. Set {DUAL_CLIP_OPTION} instead.')
    host_values = {}
    if clip_ratio_c is not None:
        dual_clip = real_number(clip_ratio_c)
        if dual_clip is None or not 1 < dual_clip <= FLOAT32_MAX:
            raise ValueError(f'{HOST}: {DUAL_CLIP_OPTION} must be a number > 1 for FIPO (it is the dual clip FIPO '
                             f'filters and drops by); got {clip_ratio_c!r}.')
        host_values['delta'] = dual_clip
    # The dual clip is resolved with the options, so that the sequence drop sees its c (a paper preset's
    # sequence_drop with verl's clip_ratio_c); every message names verl's options (option_name).
    config = resolve_config(preset, explicit, option_name, HOST, host_values)
    check_ratio_thresholds(config, clip_ratio_high, option_name, HOST, CLIP_HIGH_OPTION)
    return config


def _clip_ratio_high(actor_config: Any) -> float | None:
    """The upper PPO clip width vanilla uses: ``clip_ratio_high``, else ``clip_ratio`` (None if neither)."""
    high = actor_config.get('clip_ratio_high', None)
    return actor_config.get('clip_ratio', None) if high is None else high


def config_of_actor(actor_config: Any) -> FIPOConfig:
    """The FIPOConfig of an actor config (verl's ``ActorConfig``, or its DictConfig in older verl)."""
    return fipo_config(actor_config.policy_loss.get('fipo', None),
                       actor_config.get('clip_ratio_c', DUAL_CLIP_DEFAULT), _clip_ratio_high(actor_config))


def _validate_policy_loss(policy_loss: Any) -> None:
    options = policy_loss.get('fipo', None)
    if policy_loss.get('loss_mode', None) == LOSS_MODE:
        # The actor's clip_ratio_c is not known here: the options are checked with verl's default dual clip,
        # and again with the actor's own by ActorConfig.validate (config_of_actor).
        fipo_config(options, DUAL_CLIP_DEFAULT)
    elif options:
        warn(f'{OPTION_PREFIX} is set but actor_rollout_ref.actor.policy_loss.loss_mode is '
             f'{policy_loss.get("loss_mode", None)!r}: the FIPO options do nothing.')


def _validate_actor(actor_config: Any, train_batch_size: int) -> None:
    if actor_config.policy_loss.get('loss_mode', None) != LOSS_MODE:
        return
    config_of_actor(actor_config)
    # At validation time ppo_mini_batch_size still counts prompts, like data.train_batch_size.
    mini_batch = actor_config.get('ppo_mini_batch_size', None) or train_batch_size
    updates_per_rollout = max(1, train_batch_size // mini_batch)
    if on_policy_reason(actor_config.get('ppo_epochs', 1), updates_per_rollout, 1) is not None:
        warn('FIPO is a no-op here: with actor_rollout_ref.actor.ppo_epochs=1 and one mini-batch per rollout '
             f'(data.train_batch_size={train_batch_size}, actor_rollout_ref.actor.ppo_mini_batch_size='
             f'{mini_batch}), every rollout is optimised once, by the policy that sampled it: Future-KL is 0 '
             'and the loss is vanilla. Use ppo_epochs > 1 or ppo_mini_batch_size < train_batch_size.')


def _accept_fipo_options(original_init: Any) -> Any:
    """PolicyLossConfig.__init__ that also takes ``fipo`` and validates it (verl validates in its
    config dataclasses; this one is built on the driver before any worker starts)."""

    def __init__(self: Any, *args: Any, fipo: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        # Set first: verl's __post_init__ runs inside the original __init__, and fields freeze after it.
        object.__setattr__(self, 'fipo', dict(fipo) if isinstance(fipo, Mapping) else {} if fipo is None else fipo)
        original_init(self, *args, **kwargs)
        _validate_policy_loss(self)

    __init__.__wrapped__ = original_init  # type: ignore[attr-defined]
    return __init__


def _validate_fipo_too(original_validate: Any) -> Any:

    def validate(self: Any, n_gpus: int, train_batch_size: int, *args: Any, **kwargs: Any) -> Any:
        result = original_validate(self, n_gpus, train_batch_size, *args, **kwargs)
        _validate_actor(self, train_batch_size)
        return result

    validate.__wrapped__ = original_validate  # type: ignore[attr-defined]
    return validate


class _Extended(dict):
    """A class's ``__annotations__`` / ``__dataclass_fields__`` with ``fipo`` added; a dict subclass so
    that a Patch can mark it as its replacement."""


def _with_fipo(mapping: dict, value: Any) -> _Extended:
    return _Extended({**mapping, 'fipo': value})


def config_patches(module: Any) -> PatchSet:
    """The patches that give ``module.PolicyLossConfig`` the field ``fipo`` and validate it."""
    policy_loss, actor = getattr(module, POLICY_LOSS_CONFIG_CLASS), getattr(module, ACTOR_CONFIG_CLASS)
    fipo_field = dataclasses.fields(_FIPOField)[0]
    return PatchSet([
        # OmegaConf.structured reads the type hints and dataclasses.fields; hydra and to_object call __init__.
        Patch(policy_loss, '__annotations__', lambda hints: _with_fipo(hints, dict), 'fipo type hint'),
        Patch(policy_loss, '__dataclass_fields__', lambda fields: _with_fipo(fields, fipo_field), 'fipo field'),
        Patch(policy_loss, '__init__', _accept_fipo_options, 'accept and validate policy_loss.fipo'),
        Patch(actor, ACTOR_VALIDATE_METHOD, _validate_fipo_too, 'FIPO with clip_ratio_c; the no-op warning'),
    ])


def patch_config_module(module: Any) -> dict[str, Any]:
    """Extend verl's PolicyLossConfig (``verl.workers.config.actor``) with ``fipo``; idempotent."""
    for name in (POLICY_LOSS_CONFIG_CLASS, ACTOR_CONFIG_CLASS):
        if not dataclasses.is_dataclass(getattr(module, name, None)):
            return {'fipo_options': f'no dataclass {name} in {module.__name__}'}
    patches = config_patches(module)
    declared = {field.name for field in dataclasses.fields(getattr(module, POLICY_LOSS_CONFIG_CLASS))}
    if 'fipo' in declared and not patches.patches[1].is_applied():  # [1]: the field patch
        return {'fipo_options': 'verl defines policy_loss.fipo itself; left alone'}
    patches.apply()
    return {'fipo_options': True}


# ---------------------------------------------------------------------------------------------------
# The loss


def compute_policy_loss_fipo(old_log_prob: torch.Tensor,
                             log_prob: torch.Tensor,
                             advantages: torch.Tensor,
                             response_mask: torch.Tensor,
                             loss_agg_mode: str = 'token-mean',
                             config: Any = None,
                             rollout_is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """verl's vanilla PPO loss with the advantages multiplied by FIPO's influence weights."""
    if config is None:
        raise ValueError(f'{HOST}: the {LOSS_MODE} policy loss needs the actor config.')
    from swift_fipo.ops.loss import reweight_advantages  # torch: only once verl computes a loss
    fipo = config_of_actor(config)
    weighted, stats = reweight_advantages(advantages, log_prob - old_log_prob, response_mask, fipo)
    vanilla = getattr(importlib.import_module(CORE_ALGOS_MODULE), GET_LOSS_FUNCTION)(STOCK_LOSS_MODE)
    loss, metrics = vanilla(old_log_prob=old_log_prob, log_prob=log_prob, advantages=weighted,
                            response_mask=response_mask, loss_agg_mode=loss_agg_mode, config=config,
                            rollout_is_weights=rollout_is_weights)
    import torch
    summary = {key: value for key, value in stats.summary.items() if key not in _UNLOGGED}
    tokens = stats.completion_mask.sum().to(torch.float32)
    *values, tokens = torch.stack([*summary.values(), tokens]).tolist()  # one device sync for all of them
    if tokens == 0:  # no response token: NaN summaries would spoil verl's mean over micro-batches
        values = [EMPTY_MICRO_BATCH_METRICS[key] for key in summary]
    return loss, {**metrics, **{f'actor/fipo/{key}': value for key, value in zip(summary, values, strict=True)}}


def serves(core_algos: Any) -> str | None:
    """Why this verl's policy-loss registry cannot take FIPO, or None if it can (checked by
    capability: the registry, and a vanilla loss taking the arguments FIPO passes through)."""
    for name in (REGISTRY, REGISTER_FUNCTION, GET_LOSS_FUNCTION):
        if not hasattr(core_algos, name):
            return f'{core_algos.__name__} has no {name} (verl < 0.6.1)'
    vanilla = getattr(core_algos, REGISTRY).get(STOCK_LOSS_MODE)
    if vanilla is None:
        return 'verl has no vanilla policy loss to build FIPO on'
    parameters = inspect.signature(vanilla).parameters
    missing = [name for name in _LOSS_PARAMETERS if name not in parameters]
    if missing:
        return f'verl\'s vanilla policy loss lacks {", ".join(missing)} (verl < 0.6.1)'
    returned = typing.get_args(inspect.signature(vanilla).return_annotation)
    if len(returned) != 2 or typing.get_origin(returned[1]) is not dict:
        return "verl's vanilla policy loss does not return (loss, metrics) (verl < 0.6.1)"
    return None


def patch_core_algos(module: Any) -> dict[str, Any]:
    """Register ``fipo`` in verl's policy-loss registry (``verl.trainer.ppo.core_algos``); idempotent."""
    reason = serves(module)
    if reason is not None:
        return {LOSS_MODE: f'not registered: {reason}'}
    registered = getattr(module, REGISTRY).get(LOSS_MODE)
    if registered is not None and registered is not compute_policy_loss_fipo:
        return {LOSS_MODE: 'verl registers its own fipo loss; left alone'}
    getattr(module, REGISTER_FUNCTION)(LOSS_MODE)(compute_policy_loss_fipo)
    return {LOSS_MODE: True}


def install() -> dict[str, Any]:
    """Explicit route: import verl's config and policy-loss modules and hook both (idempotent)."""
    report = patch_config_module(importlib.import_module(CONFIG_MODULE))
    report.update(patch_core_algos(importlib.import_module(CORE_ALGOS_MODULE)))
    return report


def uninstall() -> None:
    """Undo ``install()`` / the activation in this process."""
    core_algos = sys.modules.get(CORE_ALGOS_MODULE)
    registry = getattr(core_algos, REGISTRY, {}) if core_algos is not None else {}
    if registry.get(LOSS_MODE) is compute_policy_loss_fipo:
        del registry[LOSS_MODE]
    config_module = sys.modules.get(CONFIG_MODULE)
    if config_module is not None:
        config_patches(config_module).revert()


def diagnose() -> Diagnosis:
    """verl's part of ``swift-fipo doctor``: its config and policy-loss modules imported as a run imports
    them, and whether ``loss_mode=fipo`` is served (both hooked)."""
    diagnosis = Diagnosis()
    config_module, config_error = import_observed(CONFIG_MODULE, diagnosis)
    core, core_error = import_observed(CORE_ALGOS_MODULE, diagnosis)
    if core is None or config_module is None:
        diagnosis.say(f'verl: cannot import it: {core_error or config_error}')
        diagnosis.judge(f'verl `policy_loss.loss_mode={LOSS_MODE}`', False)
        return diagnosis
    registered = getattr(core, REGISTRY, {}).get(LOSS_MODE)
    if registered is compute_policy_loss_fipo:
        loss_state = f'{LOSS_MODE} registered (loss_mode={LOSS_MODE})'
    elif serves(core) is not None:
        loss_state = f'not registered: {serves(core)}'
    elif registered is not None:
        loss_state = f'verl registers its own {LOSS_MODE} loss; left alone'
    else:
        loss_state = f'not registered: {why_not_hooked()}'
    diagnosis.say(f'{CORE_ALGOS_MODULE}: {loss_state}')
    try:
        options = all(patch.is_applied() for patch in config_patches(config_module).patches)
    except AttributeError as error:  # a verl without PolicyLossConfig / ActorConfig
        options, reason = False, str(error)
    else:
        reason = why_not_hooked()
    diagnosis.say(f'{CONFIG_MODULE}: ' + (f'{POLICY_LOSS_CONFIG_CLASS} takes the {LOSS_MODE} options' if options
                                          else f'{LOSS_MODE} options not hooked: {reason}'))
    diagnosis.judge(f'verl `policy_loss.loss_mode={LOSS_MODE}`', registered is compute_policy_loss_fipo and options)
    return diagnosis
