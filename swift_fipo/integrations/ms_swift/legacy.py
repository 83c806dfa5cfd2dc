"""FIPO on ms-swift's HF GRPO trainer before it had native FIPO (ms-swift 3.11 to 4.2.1).

Those trainers have no ``_compute_fipo_influence`` to replace, but FIPO's loss is DAPO's with the
advantage A replaced by A * w (w > 0 and detached), and their ``_compute_loss_and_metrics`` has the
DAPO branch with native FIPO's own normalisation (completion tokens of the whole step). So, as the
TRL integration does, we intercept the loss where the current log-probs become available and swap in
reweighted advantages; every other line of the loss stays ms-swift's code:

* ``__init__``: a ``--loss_type fipo`` trainer keeps ``args.loss_type == 'fipo'`` (logs, args.json)
  but its loss runs the ``dapo`` branch, exactly as native FIPO (4.2.2) does for everything except
  the policy term.
* ``_compute_loss_and_metrics``: runs on a private copy of the batch; once the trainer's
  ``_get_per_token_logps_and_entropies`` returns the current log-probs, the weights are computed from
  the same log-ratio, mask (after ``--overlong_filter``) and ratio native FIPO uses, and
  ``advantages`` becomes ``ReweightedAdvantages``: the ``[B]`` advantages for every use except
  ``advantages.unsqueeze(1)`` -- the clipped surrogate's ``[B, 1]`` advantage -- which yields the
  ``[B, T]`` A * w. The KL term, entropy mask, dual clip ``--delta``, rollout importance-sampling
  weights and off-policy sequence mask therefore act exactly as in native FIPO. ms-swift's
  clip-ratio metrics also read ``advantages.unsqueeze(1)``, only for its sign, which A * w keeps
  (w > 0), except in responses ``--fipo_sequence_drop`` zeroes: those count as unclipped there.
* every loss call verifies that the surrogate read the reweighted advantages (after the log-probs),
  and refuses to train on otherwise.

Hook points are found by capability (the methods exist, the loss source has the DAPO branch and
reads the advantages after the log-probs), never by version strings.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_map

from swift_fipo.integrations.interception import (
    ADVANTAGES,
    OLD_LOGPS,
    InterceptedBatch,
    existing_interception,
    interception_of,
    log_ratio,
    record_summaries,
    sequence_ratio,
)
from swift_fipo.integrations.ms_swift import layout
from swift_fipo.integrations.ms_swift.arguments import run_settings
from swift_fipo.integrations.ms_swift.layout import FIPO_HOOK, LOGPS_METHOD, LOSS_METHOD, source_is_servable
from swift_fipo.integrations.patches import Patch, is_patch
from swift_fipo.ops.influence import FIPOStats
from swift_fipo.ops.loss import reweight_advantages

FIRST_NATIVE = '4.2.2'
# The loss branch a legacy FIPO run takes: native FIPO shares DAPO's normalisation and KL handling.
SERVING_LOSS_TYPE = layout.DAPO_LOSS_TYPE


class LegacyHookError(RuntimeError):
    """ms-swift's loss did not use the reweighted advantages the way FIPO needs."""


def class_is_servable(cls: type) -> bool:
    """Capability check of an imported trainer class (no native hook, a servable loss)."""
    if hasattr(cls, FIPO_HOOK):
        return False
    loss = getattr(cls, LOSS_METHOD, None)
    if not callable(loss) or not callable(getattr(cls, LOGPS_METHOD, None)):
        return False
    loss = inspect.unwrap(loss)
    try:
        source = inspect.getsource(loss)
    except (OSError, TypeError):
        return False
    return source_is_servable(source)


class ReweightedAdvantages(torch.Tensor):
    """The ``[B]`` advantages, except that ``.unsqueeze(1)`` gives the ``[B, T]`` A * w.

    ms-swift's clipped surrogate multiplies ``coef * advantages.unsqueeze(1)``; every other use
    (signs for the clip metrics and the off-policy sequence mask, logging) sees the plain values.
    Results of any operation are plain tensors.
    """

    _weighted: torch.Tensor
    _reads: list[int]

    @staticmethod
    def wrap(advantages: torch.Tensor, weighted: torch.Tensor) -> ReweightedAdvantages:
        wrapped = advantages.as_subclass(ReweightedAdvantages)
        wrapped._weighted = weighted
        wrapped._reads = [0]
        return wrapped

    @property
    def weighted_reads(self) -> int:
        return self._reads[0]

    @classmethod
    def __torch_function__(cls, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.unsqueeze and args and isinstance(args[0], ReweightedAdvantages):
            dim = args[1] if len(args) > 1 else kwargs.get('dim')
            if dim in (1, -1) and args[0].dim() == 1:
                args[0]._reads[0] += 1
                return args[0]._weighted
        plain = functools.partial(tree_map, lambda value: value.as_subclass(torch.Tensor)
                                  if isinstance(value, ReweightedAdvantages) else value)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*plain(args), **plain(kwargs))


def _loss_mask(trainer: Any, batch: InterceptedBatch) -> torch.Tensor:
    """The completion mask the loss uses for FIPO: ``--overlong_filter`` removes truncated completions."""
    mask = batch.peek(layout.COMPLETION_MASK_KEY).bool()
    truncated = batch.peek(layout.TRUNCATED_MASK_KEY)
    if getattr(trainer, layout.OVERLONG_FILTER_ATTRIBUTE, False) and truncated is not None and bool(truncated.any()):
        mask = mask & ~truncated.bool().unsqueeze(-1)
    return mask


def reweight_batch(trainer: Any, batch: InterceptedBatch, per_token_logps: torch.Tensor) -> FIPOStats:
    """Put ``ReweightedAdvantages`` into ``batch``; return the FIPO stats of this loss call."""
    ratios = log_ratio(per_token_logps, batch.peek(OLD_LOGPS))
    mask = _loss_mask(trainer, batch)
    # The sequence-level ratio the loss clips, which native FIPO's filter and safety rule test.
    level = getattr(trainer, layout.IMPORTANCE_SAMPLING_ATTRIBUTE, 'token')
    ratio = sequence_ratio(ratios, mask) if level in layout.SEQUENCE_LEVELS else None
    advantages = batch.peek(ADVANTAGES)
    if advantages.dim() != 1:
        raise LegacyHookError(f'swift-fipo: expected [B] advantages in this ms-swift GRPO trainer; got shape '
                              f'{tuple(advantages.shape)}.')
    weighted, stats = reweight_advantages(advantages, ratios, mask, run_settings(trainer).config, ratio=ratio)
    batch.replace_advantages(ReweightedAdvantages.wrap(advantages, weighted))
    return stats


def log_metrics(trainer: Any, stats: FIPOStats) -> None:
    """Add this loss call's ``fipo/*`` summaries (reduced over ranks) to the trainer's metrics, which
    ms-swift's ``log()`` averages (``interception.record_summaries``)."""
    mode = 'train' if trainer.model.training else 'eval'
    record_summaries(trainer._metrics[mode], stats, trainer.accelerator.gather, trainer.accelerator.device)


def serve_fipo(trainer: Any) -> None:
    """Make a built trainer compute FIPO: its loss takes the DAPO branch with reweighted advantages (a
    trainer with an ``Interception`` is one that serves FIPO)."""
    trainer.loss_type = SERVING_LOSS_TYPE
    interception_of(trainer)


def _with_fipo_loss_type(init: Callable[..., None]) -> Callable[..., None]:

    @functools.wraps(init)
    def init_for_fipo(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if getattr(self.args, 'loss_type', None) == 'fipo':
            serve_fipo(self)

    return init_for_fipo


def _with_reweighted_advantages(loss: Callable[..., Any]) -> Callable[..., Any]:

    @functools.wraps(loss)
    def loss_with_fipo(self: Any, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        state = existing_interception(self)
        if state is None or not isinstance(inputs, dict):
            return loss(self, model, inputs, *args, **kwargs)
        with state.loss_call(inputs) as batch:
            result = loss(self, model, batch, *args, **kwargs)
        # The surrogate reads A * w only through advantages.unsqueeze(1) (ReweightedAdvantages).
        if state.finish(batch) is not None or batch.peek(ADVANTAGES).weighted_reads == 0:
            raise LegacyHookError(
                f'swift-fipo: {type(self).__name__}.{LOSS_METHOD} did not build its clipped surrogate from the '
                f'FIPO-reweighted advantages (log-probs hook ran: {batch.weighted}; advantages read '
                f'before it: {batch.read_before_weighting}). This ms-swift cannot be served; use ms-swift '
                f'>= {FIRST_NATIVE}.')
        stats = state.last_stats
        log_metrics(self, stats)
        from swift_fipo.integrations.ms_swift.token_capture import capture
        capture(self, stats, (model, inputs), {})
        return result

    return loss_with_fipo


def _with_logps_hook(get_logps: Callable[..., Any]) -> Callable[..., Any]:

    @functools.wraps(get_logps)
    def get_logps_for_fipo(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = get_logps(self, *args, **kwargs)
        state = existing_interception(self)
        batch = state.pending() if state is not None else None
        if batch is not None:  # inside our loss call (not while generating), once
            state.last_stats = reweight_batch(self, batch, result[0])
        return result

    return get_logps_for_fipo


def trainer_patches(cls: type) -> list[Patch]:
    """The patches of a servable legacy trainer class (see ``class_is_servable``)."""
    return [
        Patch(cls, '__init__', _with_fipo_loss_type, "fipo runs ms-swift's dapo branch"),
        Patch(cls, LOSS_METHOD, _with_reweighted_advantages, 'FIPO: the DAPO loss with reweighted advantages'),
        Patch(cls, LOGPS_METHOD, _with_logps_hook, 'reweight the advantages once the current log-probs exist'),
    ]


def is_patched(cls: type) -> bool:
    """True if ``cls`` computes FIPO through this module."""
    return is_patch(getattr(cls, LOSS_METHOD, None))
