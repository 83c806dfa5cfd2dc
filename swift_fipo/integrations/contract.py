"""The host contract: what every integration (ms-swift HF and Megatron, TRL, verl, and any later one)
needs from swift-fipo besides the maths, written once.

- configuration: ``resolve_config`` (preset, then explicit options) and ``config_error`` (a bad value
  re-worded with the host's own option name); ``RunSettings`` is the resolved result a host hands to
  its trainer, attached to the trainer's arguments object (``attach_settings`` / ``settings_of``);
- refusals and warnings: ``liger_refusal``, ``check_ratio_thresholds`` (the dual clip and the filter must lie
  beyond the PPO clip, on every host), ``on_policy_reason``, ``warn`` (a Python warning about a setting, rank 0,
  once per message) and ``report`` (a line on stderr about something during training, rank 0);
- versions: ``installed_version``;
- process exit: ``settle_gloo_workers_at_exit`` (gloo worker threads finish before the interpreter goes);
- metrics: ``METRIC_REDUCTIONS`` (how each ``FIPOStats.summary`` key combines across ranks and
  gradient-accumulation chunks), ``combine_metric``, ``combine_over_ranks`` and ``record_metric`` (one loss
  call's value into a host's per-logging-step list that the host averages);
- reweighting: ``reweight_advantages`` and ``apply_fipo`` (re-exported from ``ops.loss``);
- patches: ``Patch`` / ``PatchSet``, declared by a host in one list, applied by its ``install()`` and
  reverted exactly by its ``uninstall()``.

Importing this module imports no torch (hosts validate while their command line is still being
parsed); only the metric and reweighting functions need it, and load it when called.
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib.metadata
import math
import os
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Mapping, Optional

from swift_fipo.config import PRESETS, FIPOConfig, FIPOConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    'FIPOWarning', 'METRIC_REDUCTIONS', 'Patch', 'PatchSet', 'RunSettings', 'apply_fipo', 'attach_settings',
    'check_ratio_thresholds', 'combine_metric', 'combine_over_ranks', 'config_error', 'installed_version',
    'liger_refusal', 'on_policy_reason', 'record_metric', 'report', 'resolve_config', 'reweight_advantages', 'settings_of',
    'settle_gloo_workers_at_exit', 'warn'
]

# ---------------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Everything a host resolved about FIPO for one run, handed to its trainer."""

    config: FIPOConfig = dataclasses.field(default_factory=FIPOConfig)
    capture_completions: int = 0
    """Completions per logging step whose per-token FIPO values are written out (0: off)."""
    # No field name may contain '_token': ms-swift's args.json writer briefly sets such attributes of
    # every object it finds in the arguments to None (to hide API tokens), which a frozen class refuses.


_SETTINGS_ATTRIBUTE = '_swift_fipo_settings'


def attach_settings(arguments: Any, settings: RunSettings) -> None:
    """Hand ``settings`` to the trainer that will be built from ``arguments`` (its args object)."""
    object.__setattr__(arguments, _SETTINGS_ATTRIBUTE, settings)


def settings_of(arguments: Any) -> Optional[RunSettings]:
    """The settings a host attached to a trainer's arguments, or None."""
    return getattr(arguments, _SETTINGS_ATTRIBUTE, None)


def resolve_config(preset: str, explicit: Mapping[str, Any], option_name: Callable[[str], str],
                   host: str) -> FIPOConfig:
    """The FIPOConfig of ``preset`` with the ``explicit`` field values on top (explicit always wins).

    A bad value raises ``ValueError`` naming the host's option (``option_name(field)``) and its range.
    """
    if preset not in PRESETS:
        raise ValueError(f'{host}: the FIPO preset must be one of {", ".join(PRESETS)}; got {preset!r}.')
    unknown = sorted(set(explicit) - {field.name for field in dataclasses.fields(FIPOConfig)})
    if unknown:
        raise ValueError(f'{host}: unknown FIPO option(s) {", ".join(map(option_name, unknown))}; known: '
                         f'{", ".join(option_name(field.name) for field in dataclasses.fields(FIPOConfig))}.')
    try:
        return dataclasses.replace(PRESETS[preset], **explicit)
    except FIPOConfigError as error:
        raise config_error(error, option_name(error.field), host) from None


def config_error(error: FIPOConfigError, option: str, host: str) -> ValueError:
    """``error`` re-worded with the host's name for the option, e.g. ``--fipo_clip_range``."""
    return ValueError(f'{host}: {error.describe(option)}')


# ---------------------------------------------------------------------------------------------------
# Refusals and warnings


class FIPOWarning(UserWarning):
    """A FIPO setting that works but probably not as the user meant (e.g. FIPO would be a no-op)."""


def liger_refusal(host: str, option: str) -> str:
    """Why FIPO refuses a host's fused Liger loss: it has no per-token weights to reweight."""
    return (f'{host}: FIPO does not work with {option}: the Liger kernel computes a fused loss that never '
            f'calls FIPO, so training would silently be the unweighted loss. Turn {option} off.')


# The FIPOConfig fields that bound the importance ratio from above (the dual clip and the filter c).
RATIO_THRESHOLD_FIELDS = ('delta', 'filter_threshold')


def check_ratio_thresholds(config: FIPOConfig, epsilon_high: Optional[float], option_name: Callable[[str], str],
                           host: str, epsilon_option: str) -> None:
    """Refuse a dual clip or filter threshold at or inside the PPO clip ``1 + epsilon_high``, on every host.

    The PPO clip already bounds the ratio up to 1 + epsilon_high: a dual clip at or below it changes nothing
    (ms-swift) or stops the gradient of negative-advantage tokens the PPO clip still trains (verl), and the
    participation filter there keeps such tokens out of Future-KL. ``option_name(field)`` is the host's name
    of a field (ms-swift: ``--delta``; verl: its ``clip_ratio_c``), ``epsilon_option`` its name of
    epsilon_high. ``epsilon_high`` None: nothing to check. A ``ValueError`` names the option and the bound.
    """
    if epsilon_high is None:
        return
    bound = 1 + epsilon_high
    for field in RATIO_THRESHOLD_FIELDS:
        value = getattr(config, field)
        if value is not None and value <= bound:
            raise ValueError(f'{host}: {option_name(field)} must be > 1 + {epsilon_option} = {bound:g} (the PPO clip '
                             f'already bounds ratios up to there); got {value:g}.')


def on_policy_reason(num_iterations: Optional[int], steps_per_generation: Optional[int],
                     gradient_accumulation_steps: Optional[int]) -> Optional[str]:
    """Why FIPO would be a no-op with this schedule, or None when some rollout is reused off-policy.

    A rollout is generated every ``steps_per_generation * num_iterations`` micro-steps (TRL's and
    ms-swift's schedule; ``steps_per_generation`` defaults to ``gradient_accumulation_steps``). If that
    count divides the accumulation window, every rollout is used up within one optimizer step, by the
    policy that sampled it: log pi_new == log pi_old, Future-KL is 0 and every weight is 1.
    """
    accumulation = gradient_accumulation_steps or 1
    iterations = num_iterations or 1
    steps = steps_per_generation or accumulation
    if accumulation % (steps * iterations) != 0:
        return None
    return (f'FIPO is a no-op here: nothing is reused off-policy (num_iterations={iterations}, '
            f'steps_per_generation={steps}, gradient_accumulation_steps={accumulation}): every rollout is '
            'optimised by the policy that sampled it, so log pi_new == log pi_old, Future-KL is 0, every weight '
            'is 1 and the loss is the unweighted one. Use num_iterations > 1 or steps_per_generation > '
            'gradient_accumulation_steps.')


def _on_rank_zero() -> bool:
    # RANK: torchrun's, and what ms-swift, TRL (accelerate), verl and OpenRLHF workers get from their launcher.
    return os.environ.get('RANK', '0').strip() in ('', '0')


def report(message: str) -> None:
    """Write one ``[swift-fipo] WARNING:`` line to stderr on rank 0 only, for what happens during training
    (a Python warning would name a line of ours, and hosts often silence warnings while they train)."""
    if _on_rank_zero():
        print(f'[swift-fipo] WARNING: {message}', file=sys.stderr, flush=True)


def warn(message: str, stacklevel: int = 2) -> None:
    """Warn on rank 0 only, once per message and call site (Python's ``default`` warning action)."""
    if not _on_rank_zero():
        return
    # Hosts (and their dependencies) sometimes silence warnings wholesale; ours must still show. Added
    # only when missing: every change of the filters resets Python's record of what was shown.
    if not any(entry[2] is FIPOWarning for entry in warnings.filters):
        warnings.filterwarnings('default', category=FIPOWarning)
    warnings.warn(f'[swift-fipo] WARNING: {message}', FIPOWarning, stacklevel=stacklevel + 1)


# Seconds a process with a gloo group holds back its exit (see settle_gloo_workers_at_exit).
GLOO_EXIT_GRACE_S = 0.5


def settle_gloo_workers_at_exit() -> None:
    """At interpreter exit, give gloo's worker threads time to finish before the interpreter is torn down.

    After a gloo collective completes, its worker thread still drops the tensors it held, which needs the
    GIL. If that thread is scheduled late (a busy CPU) and the main thread has begun finalizing, taking the
    GIL ends the thread inside a destructor: SIGABRT, "terminate called without an active exception", after
    all work is done (seen in two-process CPU runs of ``swift rlhf``; pytorch/pytorch#190489). Destroying
    the group does not help: gloo's threads live while anything references the group. So in a process whose
    default group uses gloo, an atexit handler sleeps GLOO_EXIT_GRACE_S, releasing the GIL and a core to
    those threads. It narrows the race; it cannot close it from outside torch. Registered once per process.
    """
    atexit.unregister(_settle_gloo_workers)
    atexit.register(_settle_gloo_workers)


def _settle_gloo_workers() -> None:
    distributed = sys.modules.get('torch.distributed')
    try:
        if distributed is None or not distributed.is_available() or not distributed.is_initialized():
            return
        if 'gloo' in str(distributed.get_backend_config()):  # 'gloo', 'cpu:gloo,cuda:nccl', ...
            time.sleep(GLOO_EXIT_GRACE_S)
    except Exception as error:  # noqa: BLE001 - the process is exiting; report, never raise
        print(f'[swift-fipo] could not wait for gloo at exit ({type(error).__name__}: {error})', file=sys.stderr)


def installed_version(distribution: str) -> Optional[str]:
    """The installed version of a distribution (e.g. ``ms-swift``), or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------------
# Metrics

Reduction = Literal['mean', 'min', 'max']
# How every FIPOStats.summary key combines across ranks and gradient-accumulation chunks.
METRIC_REDUCTIONS: dict[str, Reduction] = {
    'future_kl_mean': 'mean',
    'raw_weight_mean': 'mean',
    'influence_weight_mean': 'mean',
    'influence_weight_min': 'min',
    'influence_weight_max': 'max',
    'safety_keep_ratio': 'mean',
    'safety_fired_ratio': 'mean',
    'filtered_ratio': 'mean',
    'dropped_response_ratio': 'mean',
    'neg_adv_ratio_p99': 'max',
    'clipped_high_ratio': 'mean',
    'clipped_low_ratio': 'mean',
}


def combine_metric(key: str, values: 'torch.Tensor') -> float:
    """Combine one summary's values from several ranks or chunks as ``METRIC_REDUCTIONS`` says.

    NaN entries (a rank or chunk without such tokens) are ignored; NaN if all are.
    """
    import torch
    finite = values[~torch.isnan(values)]
    if finite.numel() == 0:
        return math.nan
    how = METRIC_REDUCTIONS[key]
    return float(finite.min() if how == 'min' else finite.max() if how == 'max' else finite.mean())


def record_metric(values: list[float], key: str, value: float) -> None:
    """Add one loss call's ``value`` of summary ``key`` to ``values``, a host's list for one logging step
    that the host averages when it logs (TRL's and ms-swift's ``_metrics[mode][name]``).

    A mean key appends, so the host's average is the mean over loss calls. A min or max key keeps a
    single entry, the extreme so far (``combine_metric``: NaN ignored), so the host's average of that one
    entry is the minimum or maximum over every gradient-accumulation chunk, as ``METRIC_REDUCTIONS`` says;
    appended, it would become a mean of per-chunk extremes.
    """
    how = METRIC_REDUCTIONS[key]
    if how == 'mean' or not values:
        values.append(value)
        return
    finite = [number for number in (*values, value) if not math.isnan(number)]
    values[:] = [(min if how == 'min' else max)(finite) if finite else math.nan]


def combine_over_ranks(summary: Mapping[str, 'torch.Tensor'], gather: Callable[['torch.Tensor'], 'torch.Tensor'],
                       device: Optional['torch.device'] = None) -> dict[str, float]:
    """Combine this rank's ``FIPOStats.summary`` values with every other rank's, each key as
    ``METRIC_REDUCTIONS`` says, in one collective: ``gather`` (e.g. an accelerate ``Accelerator.gather``)
    takes this rank's ``[1, n]`` row and returns the ``[world, n]`` rows; ``device``, where the row must be."""
    import torch
    keys = list(summary)
    row = torch.stack([summary[key] for key in keys]).reshape(1, -1)
    gathered = gather(row if device is None else row.to(device)).reshape(-1, len(keys)).float().cpu()
    return {key: combine_metric(key, gathered[:, column]) for column, key in enumerate(keys)}


# ---------------------------------------------------------------------------------------------------
# Reweighting (the maths lives in ops/; hosts pick the form their loss takes)


def reweight_advantages(*args: Any, **kwargs: Any) -> Any:
    """See ``swift_fipo.ops.loss.reweight_advantages``."""
    from swift_fipo.ops.loss import reweight_advantages as reweight
    return reweight(*args, **kwargs)


def apply_fipo(*args: Any, **kwargs: Any) -> Any:
    """See ``swift_fipo.ops.loss.apply_fipo``."""
    from swift_fipo.ops.loss import apply_fipo as apply
    return apply(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------
# Patches

_ORIGINAL = '__swift_fipo_original__'
_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Patch:
    """Replace ``owner.attribute`` by ``make(original)``; revertible.

    The replacement remembers the original (and whether ``owner`` defined it itself or inherited it),
    so reverting restores exactly what was there and applying twice changes nothing.
    """

    owner: Any
    attribute: str
    make: Callable[[Any], Any]
    why: str = ''

    def own_value(self) -> Any:
        return vars(self.owner).get(self.attribute, _MISSING) if hasattr(self.owner, '__dict__') else _MISSING

    def is_applied(self) -> bool:
        """True if ``owner`` itself holds a replacement made by a patch."""
        return is_patch(self.own_value())

    def apply(self) -> None:
        # Already ours, here or on a base class the owner inherits it from: wrapping twice would
        # run the wrapper twice.
        if is_patch(getattr(self.owner, self.attribute, None)):
            return
        own = self.own_value()
        replacement = self.make(getattr(self.owner, self.attribute))
        # Set after make: functools.wraps copies the wrapped function's __dict__ into the wrapper.
        setattr(_unwrap_descriptor(replacement), _ORIGINAL, own)
        setattr(self.owner, self.attribute, replacement)

    def revert(self) -> None:
        if not self.is_applied():
            return
        original = getattr(_unwrap_descriptor(self.own_value()), _ORIGINAL)
        if original is _MISSING:
            delattr(self.owner, self.attribute)
        else:
            setattr(self.owner, self.attribute, original)


def _unwrap_descriptor(value: Any) -> Any:
    return value.__func__ if isinstance(value, (staticmethod, classmethod)) else value


def is_patch(value: Any) -> bool:
    """True if ``value`` is a replacement a ``Patch`` installed."""
    return _ORIGINAL in getattr(_unwrap_descriptor(value), '__dict__', {})


def original_of(value: Any) -> Any:
    """What a patch replaced (``value`` itself if it is not a replacement)."""
    if not is_patch(value):
        return value
    function = _unwrap_descriptor(value)
    original = getattr(function, _ORIGINAL)
    # Where the owner only inherited the attribute, the wrapper's __wrapped__ is what it saw.
    return function.__wrapped__ if original is _MISSING else original


@dataclasses.dataclass(frozen=True)
class PatchSet:
    """The patches one host needs, applied together and reverted together (in reverse order)."""

    patches: tuple[Patch, ...]

    def __init__(self, patches: Iterable[Patch]) -> None:
        object.__setattr__(self, 'patches', tuple(patches))

    def apply(self) -> None:
        for patch in self.patches:
            patch.apply()

    def revert(self) -> None:
        for patch in reversed(self.patches):
            patch.revert()
