"""FIPO in OpenRLHF's ``PolicyLoss``: its own ``ppo`` branch called with the advantages reweighted.

``PolicyLoss.forward`` reads the advantage only through ``ratio * A``, ``clip(ratio) * A`` and the dual clip
``dual_clip * A`` (chosen by ``A < 0``). FIPO's weight is positive and detached, so ``A * w`` keeps every sign
and branch: the loss is FIPO's, and OpenRLHF's aggregation (token-mean or seq-mean-token-mean, its global
token counts), IS correction and clip/KL metrics apply exactly as for ``ppo``. FIPO's delta is OpenRLHF's
dual clip. A response the sequence drop removes gets weight 0: nothing in the loss, still in the counts.

Imports OpenRLHF (``openrlhf.models.loss``) and torch; ``hooks`` imports this module only where OpenRLHF is.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import torch
from openrlhf.models.loss import PolicyLoss

from swift_fipo.config import FIPOConfig
from swift_fipo.integrations.openrlhf import layout
from swift_fipo.integrations.patches import original_of
from swift_fipo.ops.influence import FIPOStats
from swift_fipo.ops.loss import reweight_advantages

FIPO_ATTRIBUTE = 'fipo_config'
"""A PolicyLoss with this attribute set (a FIPOConfig) computes FIPO; the resolved config of the run."""
STATS_ATTRIBUTE = 'last_fipo_stats'
"""The FIPOStats of the loss's latest call (the actor's training step reports them as metrics)."""
# OpenRLHF's forward clamps the log-ratio into [-20, 20] before exp() in its ppo branch (a literal of its
# source, see layout.FORWARD_MARKERS): FIPO's filter and safety rule test that same ratio.
PPO_LOG_RATIO_BOUND = 20.0

# What OpenRLHF does with a metric: a 0-dim tensor is averaged weighted by the micro-batch's action tokens,
# a [B] tensor by its samples, over micro-batches and ranks (ActorPPOTrainer.ppo_train). FIPO's token means
# fit the first, the per-response drop the second; a minimum, maximum or quantile cannot be averaged, so
# influence_weight_min/max and neg_adv_ratio_p99 are left out.
METRIC_PREFIX = 'fipo_'
_UNLOGGED = frozenset({'influence_weight_min', 'influence_weight_max', 'neg_adv_ratio_p99', 'dropped_response_ratio'})


def with_dual_clip(config: FIPOConfig | None, dual_clip: float | None) -> FIPOConfig:
    """``config`` (default ``FIPOConfig()``) with FIPO's delta set to OpenRLHF's dual clip."""
    return dataclasses.replace(config if config is not None else FIPOConfig(), delta=dual_clip)


def fipo_forward(loss: Any, stock_forward: Callable[..., Any], config: FIPOConfig, *args: Any,
                 **kwargs: Any) -> Any:
    """Call OpenRLHF's ``stock_forward`` (the unpatched ``PolicyLoss.forward``) on ``loss`` with the
    advantages multiplied by FIPO's weights; keeps the weights' stats on ``loss``."""
    bound = inspect.signature(stock_forward).bind(loss, *args, **kwargs)
    arguments = bound.arguments
    log_probs, old_log_probs, advantages = arguments['log_probs'], arguments['old_log_probs'], arguments['advantages']
    mask = arguments.get('action_mask')
    if mask is None:  # OpenRLHF's masked means take None as "every position"
        mask = torch.ones_like(log_probs, dtype=torch.bool)
    # In float32 whatever the log-probs' dtype: a bf16 difference would round the log-ratio FIPO sums.
    log_ratio = log_probs.detach().float() - old_log_probs.detach().float()
    ratio = log_ratio.clamp(-PPO_LOG_RATIO_BOUND, PPO_LOG_RATIO_BOUND).exp()
    arguments['advantages'], stats = reweight_advantages(advantages, log_ratio, mask.bool(), config, ratio=ratio)
    object.__setattr__(loss, STATS_ATTRIBUTE, stats)  # not a submodule or buffer: keep nn.Module out of it
    return stock_forward(*bound.args, **bound.kwargs)


class FIPOPolicyLoss(PolicyLoss):
    """OpenRLHF's ``PolicyLoss`` computing FIPO, for a loop that builds its loss itself (no patch needed).

    Takes PolicyLoss's arguments plus ``fipo_config``; FIPO's delta is ``dual_clip``. Returns what
    PolicyLoss returns (loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio); ``last_fipo_stats`` holds the
    latest call's ``FIPOStats``.
    """

    def __init__(self, clip_eps_low: float = 0.2, clip_eps_high: float = 0.2, dual_clip: float | None = None,
                 token_level_loss: bool = True, policy_loss_type: str = layout.LOSS_TYPE,
                 fipo_config: FIPOConfig | None = None, **kwargs: Any) -> None:
        if policy_loss_type not in (layout.LOSS_TYPE, layout.STOCK_LOSS_TYPE):
            raise ValueError(f"FIPOPolicyLoss runs OpenRLHF's token-level {layout.STOCK_LOSS_TYPE!r} loss; "
                             f'policy_loss_type must be {layout.LOSS_TYPE!r}; got {policy_loss_type!r}.')
        # The stock __init__ even where the class is patched: this class needs no patch.
        original_of(PolicyLoss.__init__)(self, clip_eps_low, clip_eps_high, dual_clip, token_level_loss,
                                         policy_loss_type=layout.STOCK_LOSS_TYPE, **kwargs)
        setattr(self, FIPO_ATTRIBUTE, with_dual_clip(fipo_config, dual_clip))
        object.__setattr__(self, STATS_ATTRIBUTE, None)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return fipo_forward(self, original_of(PolicyLoss.forward), getattr(self, FIPO_ATTRIBUTE), *args, **kwargs)


def metrics_of(stats: FIPOStats) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(metrics, weights)`` to add to what OpenRLHF's ``training_step`` returns, in its convention."""
    summary = stats.summary
    tokens = stats.completion_mask.sum()
    metrics: dict[str, torch.Tensor] = {}
    for key, value in summary.items():
        if key in _UNLOGGED:
            continue
        # A micro-batch without action tokens is weighted 0 by OpenRLHF, but NaN * 0 is NaN: report 0.
        metrics[f'{METRIC_PREFIX}{key}'] = torch.where(tokens > 0, value, torch.zeros_like(value)).detach()
    weights = dict.fromkeys(metrics, 'token')
    # Per response: OpenRLHF's sample-weighted mean of it is the fraction of dropped responses.
    metrics[f'{METRIC_PREFIX}dropped_response_ratio'] = stats.dropped.to(torch.float32)
    weights[f'{METRIC_PREFIX}dropped_response_ratio'] = 'sample'
    return metrics, weights
