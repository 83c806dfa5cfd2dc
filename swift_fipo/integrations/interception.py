"""Advantage interception, written once for every host whose loss FIPO joins from outside (TRL's
``FIPOGRPOTrainer``, ms-swift 3.11 - 4.2.1): the loss runs on a private copy of its batch; once the host's
log-prob method returns the current log-probs, the copy's advantages are replaced by FIPO-reweighted ones,
which the rest of the host's loss then reads. After the call, a check that the loss really read them
(and not the plain advantages before they existed) guards against a host whose loss changed shape.

- ``InterceptedBatch``: the private copy; notes a read of ``advantages`` before they are reweighted;
- ``Interception``: a trainer's one piece of FIPO state: the loss call in progress (its batch), the stats of
  the last reweighting, and how many loss calls FIPO reweighted;
- ``log_ratio`` / ``sequence_ratio``: the inputs FIPO needs, as every host's loss computes them;
- ``record_summaries``: a loss call's ``fipo/*`` values into a host's per-logging-step metric lists, each
  combined across ranks and chunks as ``METRIC_REDUCTIONS`` says.

Hosts keep what is theirs: which mask, which ratio level, the form the reweighted advantages take.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from swift_fipo.integrations.metrics import record_metric
from swift_fipo.integrations.ranks import combine_over_ranks

if TYPE_CHECKING:
    import torch

    from swift_fipo.ops.influence import FIPOStats

ADVANTAGES = 'advantages'
OLD_LOGPS = 'old_per_token_logps'
METRIC_PREFIX = 'fipo/'


class InterceptedBatch(dict[str, Any]):
    """Shallow copy of one loss call's inputs; notes whether the loss read the advantages too early."""

    read_before_weighting = False
    weighted = False

    def __getitem__(self, key: Any) -> Any:
        if key == ADVANTAGES and not self.weighted:
            self.read_before_weighting = True
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default

    def peek(self, key: str, default: Any = None) -> Any:
        """A value read by FIPO itself, which does not count as the loss's read."""
        return dict.get(self, key, default)

    def replace_advantages(self, weighted: Any) -> None:
        self[ADVANTAGES] = weighted
        self.weighted = True


@dataclasses.dataclass
class Interception:
    """One trainer's FIPO state across loss calls: the only attribute swift-fipo sets on a host's trainer."""

    batch: InterceptedBatch | None = None
    """The loss call in progress, while its advantages are not reweighted yet; None otherwise."""
    last_stats: FIPOStats | None = None
    loss_calls: int = 0
    """Loss calls whose advantages FIPO reweighted (a training step that adds none trained without FIPO)."""
    token_capture: Any = None
    """The host's per-token capture state (ms-swift's ``--fipo_log_tokens``), made by the host on first use."""

    @contextlib.contextmanager
    def loss_call(self, inputs: Mapping[str, Any]) -> Iterator[InterceptedBatch]:
        """The private batch one loss call runs on; the log-prob hook finds it through ``pending()``."""
        batch = InterceptedBatch(inputs)
        self.batch = batch
        try:
            yield batch
        finally:
            self.batch = None

    def pending(self) -> InterceptedBatch | None:
        """The batch to reweight now: inside a loss call, once. The log-prob method also runs while the
        host generates (old and reference log-probs), where there is nothing to reweight."""
        return self.batch if self.batch is not None and not self.batch.weighted else None

    def failure(self, batch: InterceptedBatch) -> str | None:
        """Why the loss call just made did not train on the reweighted advantages; None when it did."""
        if not batch.weighted:
            return 'the log-prob hook was not reached before the loss read the advantages'
        if batch.read_before_weighting:
            return 'the loss read the advantages before the log-prob hook reweighted them'
        return None

    def finish(self, batch: InterceptedBatch) -> str | None:
        """Close a loss call: count it when it trained with FIPO; else why not (see ``failure``)."""
        reason = self.failure(batch)
        if reason is None:
            self.loss_calls += 1
        return reason


_STATE_ATTRIBUTE = '_swift_fipo_interception'


def interception_of(trainer: Any) -> Interception:
    """The trainer's ``Interception``, made on first use (a patched host class has no ``__init__`` of ours to make
    it in)."""
    state = existing_interception(trainer)
    if state is None:
        state = Interception()
        object.__setattr__(trainer, _STATE_ATTRIBUTE, state)
    return state


def existing_interception(trainer: Any) -> Interception | None:
    """The trainer's ``Interception`` if it has one: where having one is what marks a trainer FIPO serves."""
    state: Interception | None = vars(trainer).get(_STATE_ATTRIBUTE)
    return state


def log_ratio(per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor | None) -> torch.Tensor:
    """``log pi_new - log pi_old``, detached. TRL's and ms-swift's convention: no stored old log-probs means
    the rollout is on-policy (the log-ratio is 0)."""
    current = per_token_logps.detach()
    return current - (current if old_per_token_logps is None else old_per_token_logps)


def sequence_ratio(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The ``[B, 1]`` sequence-level ratio ``exp(mean of the masked log-ratio)`` a sequence-level loss clips,
    which FIPO's filter and safety rule then test (a response without tokens: ratio 1)."""
    import torch
    mask = mask.bool()
    # where, not a product: a padded position's log-ratio may be inf or NaN, and 0 * inf is NaN.
    mean = torch.where(mask, log_ratio, 0.0).sum(-1) / mask.sum(-1).clamp(min=1)
    return torch.exp(mean).unsqueeze(-1)


def record_summaries(metrics: MutableMapping[str, list[float]], stats: FIPOStats,
                     gather: Callable[[torch.Tensor], torch.Tensor], device: torch.device | None = None
                     ) -> None:
    """Add one loss call's summaries, reduced over ranks in one collective, to ``metrics`` (a host's
    ``{name: values of this logging step}``, which it averages when it logs): min/max keys keep one entry,
    the extreme over the step's chunks (``record_metric``), means one entry per loss call."""
    for key, value in combine_over_ranks(stats.summary, gather, device).items():
        record_metric(metrics[METRIC_PREFIX + key], key, value)
