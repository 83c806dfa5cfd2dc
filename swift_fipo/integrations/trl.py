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
call also verifies at run time that the advantages TRL used were the reweighted ones.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Optional

import torch
from trl import GRPOTrainer

from swift_fipo.config import FIPOConfig
from swift_fipo.integrations.contract import (combine_over_ranks, installed_version, liger_refusal, on_policy_reason,
                                              record_metric, reweight_advantages, warn)
from swift_fipo.ops.influence import FIPOStats

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
METRIC_PREFIX = 'fipo/'

_LOGPS_METHOD = '_get_per_token_logps_and_entropies'
_LOSS_METHOD = '_compute_loss'


def trl_version() -> str:
    return installed_version('trl') or '(unknown)'


class UnsupportedTRLError(RuntimeError):
    """The installed TRL has no place where FIPO can be applied without copying its loss."""


def check_trl_support(trainer_cls: type = GRPOTrainer) -> None:
    """Raise ``UnsupportedTRLError`` unless ``trainer_cls`` has the hooks FIPOGRPOTrainer relies on."""
    missing = [name for name in (_LOGPS_METHOD, _LOSS_METHOD) if not callable(getattr(trainer_cls, name, None))]
    if missing:
        raise UnsupportedTRLError(_unsupported(f'{trainer_cls.__name__} has no {", ".join(missing)}'))
    try:
        source = inspect.getsource(getattr(trainer_cls, _LOSS_METHOD))
    except (OSError, TypeError):
        # No source (e.g. a frozen install): the run-time check in every loss call still guards us.
        warn('cannot read the source of GRPOTrainer._compute_loss to verify the FIPO hook; relying on the '
             'per-step check.')
        return
    logps_at = source.find(f'self.{_LOGPS_METHOD}(')
    advantages_at = source.find('inputs["advantages"]')
    if logps_at < 0 or advantages_at < logps_at:
        raise UnsupportedTRLError(
            _unsupported('its _compute_loss does not read inputs["advantages"] after computing the log-probs'))
    # Before 0.26 TRL always did advantages.unsqueeze(1): [B, T] advantages would broadcast to
    # [B, B, T] without any error, so this must be refused rather than discovered.
    if 'advantages.dim()' not in source:
        raise UnsupportedTRLError(_unsupported('its _compute_loss does not accept per-token [B, T] advantages'))


def _unsupported(reason: str) -> str:
    return (f'swift-fipo: FIPOGRPOTrainer cannot hook this TRL (installed: trl {trl_version()}): {reason}. '
            f"It supports {SUPPORTED_RANGE} (tested: {', '.join(TESTED_VERSIONS)}); "
            f"install one with: pip install 'trl>=0.26'")


def trl_loss_types(trainer_cls: type = GRPOTrainer) -> Optional[frozenset[str]]:
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


def _loss_source(trainer_cls: type) -> Optional[str]:
    try:
        return inspect.getsource(getattr(trainer_cls, _LOSS_METHOD))
    except (AttributeError, OSError, TypeError):
        return None


def validate_grpo_args(args: Any, trainer_cls: type = GRPOTrainer) -> None:
    """Refuse TRL settings under which FIPO would silently not be applied or not be FIPO; warn if it cannot act."""
    # The Liger path computes a fused loss in compute_liger_loss and never calls _compute_loss.
    if getattr(args, 'use_liger_kernel', False) or getattr(args, 'use_liger_loss', False):
        raise ValueError(liger_refusal('swift-fipo: FIPOGRPOTrainer', 'use_liger_kernel=True'))
    loss_type = getattr(args, 'loss_type', None)
    if loss_type not in SUPPORTED_LOSS_TYPES:
        why = f' ({REFUSED_LOSS_TYPES[loss_type]})' if loss_type in REFUSED_LOSS_TYPES else ''
        raise ValueError(f'swift-fipo: FIPOGRPOTrainer supports loss_type in {SUPPORTED_LOSS_TYPES} (FIPO reweights '
                         f"the clipped PPO surrogate; 'dapo' is the paper's and ms-swift's choice); got "
                         f'loss_type={loss_type!r}{why}.')
    offered = trl_loss_types(trainer_cls)
    if offered is not None and loss_type not in offered:
        raise ValueError(f'swift-fipo: loss_type={loss_type!r} is not a loss of the installed TRL (trl '
                         f'{trl_version()}, which has {", ".join(sorted(offered))}); upgrade TRL or choose another.')
    if loss_type == 'luspo' and not luspo_masks_padding(trainer_cls):
        raise ValueError(f"swift-fipo: loss_type='luspo' with FIPO needs a TRL that sums LUSPO's loss over "
                         f'completion tokens only (as TRL 1.16 does); trl {trl_version()} averages it over padding '
                         "positions too, where FIPO's per-token weights would count. Upgrade TRL or choose another "
                         'loss_type.')
    level = getattr(args, 'importance_sampling_level', 'token')
    if level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(f'swift-fipo: importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}; '
                         f'got {level!r}.')
    reason = on_policy_reason(getattr(args, 'num_iterations', 1), getattr(args, 'steps_per_generation', None),
                              getattr(args, 'gradient_accumulation_steps', 1))
    if reason is not None:
        warn(reason, stacklevel=3)


def _config_for(args: Any, fipo: Optional[FIPOConfig]) -> FIPOConfig:
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


class _FIPOBatch(dict):
    """Shallow copy of TRL's batch for one loss call; notes whether TRL read the advantages too early."""

    read_before_weighting = False
    weighted = False

    def __getitem__(self, key: Any) -> Any:
        if key == 'advantages' and not self.weighted:
            self.read_before_weighting = True
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default


class FIPOGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` with FIPO: the clipped per-token loss is reweighted by Future-KL influence.

    Use it like ``GRPOTrainer``, plus ``fipo=FIPOConfig(...)`` (default: ms-swift's defaults, with
    ``delta`` taken from ``GRPOConfig.delta``). Metrics ``fipo/*`` go through TRL's metric logging.
    FIPO only acts on rollouts reused off-policy: use ``num_iterations > 1``.
    """

    def __init__(self, *args: Any, fipo: Optional[FIPOConfig] = None, **kwargs: Any) -> None:
        check_trl_support(GRPOTrainer)
        if '__init__' not in vars(GRPOTrainer):
            # ms-swift's own GRPO trainer module runs `del trl.GRPOTrainer.__init__` when imported.
            raise RuntimeError('swift-fipo: trl.GRPOTrainer has lost its __init__: ms-swift deletes it when '
                               'swift.rlhf_trainers.grpo_trainer is imported. Use FIPOGRPOTrainer in a process '
                               "that does not import ms-swift's GRPO trainer (for ms-swift, use swift rlhf "
                               '--loss_type fipo instead).')
        try:
            grpo_args = inspect.signature(GRPOTrainer.__init__).bind(self, *args, **kwargs).arguments.get('args')
        except TypeError:
            grpo_args = None  # a bad call: let GRPOTrainer report it in its own words
        self._fipo_batch: Optional[_FIPOBatch] = None
        self.last_fipo_stats: Optional[FIPOStats] = None
        # Validate before GRPOTrainer loads the model (and, for Liger, fails with its own import error).
        if grpo_args is not None:
            validate_grpo_args(grpo_args, GRPOTrainer)
            self.fipo_config = _config_for(grpo_args, fipo)
        super().__init__(*args, **kwargs)
        if grpo_args is None:  # GRPOTrainer built its default GRPOConfig
            validate_grpo_args(self.args, GRPOTrainer)
            self.fipo_config = _config_for(self.args, fipo)

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        batch = _FIPOBatch(inputs)
        self._fipo_batch = batch
        try:
            loss = super()._compute_loss(model, batch)
        finally:
            self._fipo_batch = None
        if not batch.weighted or batch.read_before_weighting:
            raise UnsupportedTRLError(
                _unsupported('GRPOTrainer._compute_loss used the advantages without passing through the FIPO hook '
                             f'({_LOGPS_METHOD} {"was" if batch.weighted else "was not"} called first)'))
        return loss

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        # The log-probs come first; TRL 1.x returns more than (logps, entropies), so pass all through.
        result = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        batch = self._fipo_batch
        # Also called while generating (old/ref log-probs): act only inside our loss call, once.
        if batch is not None and not batch.weighted:
            self._reweight_advantages(batch, result[0])
        return result

    def _reweight_advantages(self, batch: _FIPOBatch, per_token_logps: torch.Tensor) -> None:
        old = dict.get(batch, 'old_per_token_logps')
        # TRL's convention: no stored old log-probs means the rollout is on-policy.
        log_ratio = per_token_logps.detach() - (per_token_logps.detach() if old is None else old)
        mask = dict.__getitem__(batch, 'completion_mask')
        tool_mask = dict.get(batch, 'tool_mask')
        if tool_mask is not None:  # tool outputs were not sampled by the policy: no Future-KL from them
            mask = mask * tool_mask
        mask = mask.bool()
        ratio = None
        if getattr(self, 'importance_sampling_level', 'token') == 'sequence':
            # The same sequence-level ratio TRL's loss clips, for the safety rule and the filter.
            mean_log_ratio = torch.where(mask, log_ratio, 0.0).sum(-1) / mask.sum(-1).clamp(min=1)
            ratio = torch.exp(mean_log_ratio).unsqueeze(-1)
        batch['advantages'], stats = reweight_advantages(dict.__getitem__(batch, 'advantages'), log_ratio, mask,
                                                         self.fipo_config, ratio=ratio)
        batch.weighted = True
        self.last_fipo_stats = stats
        self._log_fipo_metrics(stats)

    def _log_fipo_metrics(self, stats: FIPOStats) -> None:
        mode = 'train' if self.model.training else 'eval'
        # One gather and one device sync for all the metrics of this micro-batch. TRL's log() averages each
        # list: min/max keys keep one entry, the extreme over the step's chunks (record_metric).
        for key, value in combine_over_ranks(stats.summary, self.accelerator.gather, self.accelerator.device).items():
            record_metric(self._metrics[mode][METRIC_PREFIX + key], key, value)
