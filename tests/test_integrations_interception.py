"""The advantage interception kit (swift_fipo/integrations/interception.py) that TRL's FIPOGRPOTrainer and the
legacy ms-swift hook share: the private batch, the per-trainer state, the log-ratio and sequence ratio, and
the metric sink. The hosts' own tests run it inside TRL's and ms-swift's losses; these pin its rules."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from swift_fipo.config import FIPOConfig
from swift_fipo.integrations.interception import (
    InterceptedBatch,
    Interception,
    existing_interception,
    interception_of,
    log_ratio,
    record_summaries,
    sequence_ratio,
)
from swift_fipo.integrations.metrics import METRIC_REDUCTIONS
from swift_fipo.ops.influence import compute_fipo_influence


def test_a_read_of_the_advantages_before_they_are_reweighted_is_noted():
    batch = InterceptedBatch({'advantages': torch.ones(2), 'completion_mask': torch.ones(2, 3)})
    assert batch.peek('advantages') is not None and not batch.read_before_weighting  # FIPO's own read
    batch['completion_mask']
    assert not batch.read_before_weighting
    batch.get('advantages')
    assert batch.read_before_weighting


def test_a_read_after_reweighting_is_the_reweighted_value():
    batch = InterceptedBatch({'advantages': torch.ones(2)})
    weighted = torch.full((2, 3), 2.0)
    batch.replace_advantages(weighted)
    assert batch['advantages'] is weighted and batch.weighted and not batch.read_before_weighting


def test_the_loss_call_is_pending_once_and_only_inside_the_call():
    state = Interception()
    assert state.pending() is None  # generating: the log-prob method runs outside any loss call
    inputs = {'advantages': torch.ones(2)}
    with state.loss_call(inputs) as batch:
        assert state.pending() is batch and batch is not inputs and dict(batch) == inputs
        batch.replace_advantages(torch.ones(2, 3))
        assert state.pending() is None  # reweighted once: a second log-prob call leaves it alone
    assert state.batch is None
    assert state.finish(batch) is None and state.loss_calls == 1


@pytest.mark.parametrize('early_read', [False, True])
def test_a_loss_call_that_did_not_train_on_the_reweighted_values_is_not_counted(early_read):
    state = Interception()
    with state.loss_call({'advantages': torch.ones(2)}) as batch:
        if early_read:
            batch['advantages']
            batch.replace_advantages(torch.ones(2, 3))
    reason = state.finish(batch)
    assert reason is not None and state.loss_calls == 0
    assert ('before the log-prob hook' in reason) == early_read


def test_the_state_is_cleared_when_the_loss_raises():
    state = Interception()
    with pytest.raises(RuntimeError), state.loss_call({'advantages': torch.ones(1)}):
        raise RuntimeError('the host loss failed')
    assert state.batch is None and state.pending() is None


def test_each_trainer_has_one_state_made_on_demand():
    trainer, other = SimpleNamespace(), SimpleNamespace()
    assert existing_interception(trainer) is None
    state = interception_of(trainer)
    assert interception_of(trainer) is state and existing_interception(trainer) is state
    assert interception_of(other) is not state


def test_no_stored_old_log_probs_means_on_policy():
    logps = torch.randn(2, 5, requires_grad=True)
    assert torch.equal(log_ratio(logps, None), torch.zeros(2, 5)) and not log_ratio(logps, None).requires_grad
    old = torch.randn(2, 5)
    assert torch.equal(log_ratio(logps, old), logps.detach() - old)


def test_the_sequence_ratio_is_the_exp_of_the_masked_mean_in_float64():
    generator = torch.Generator().manual_seed(0)
    ratios = torch.randn(4, 7, generator=generator) * 0.3
    mask = torch.rand(4, 7, generator=generator) > 0.3
    mask[3] = False  # a response without tokens: ratio exp(0) = 1
    ratios[~mask] = torch.nan  # padding may hold anything; it must not leak in
    expected = [math.exp(sum(float(x) for x, keep in zip(row, keep_row, strict=True) if keep)
                         / max(1, int(keep_row.sum())))
                for row, keep_row in zip(ratios.double(), mask, strict=False)]
    got = sequence_ratio(ratios, mask)
    assert got.shape == (4, 1)
    assert torch.allclose(got.squeeze(-1).double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6)
    assert got[3].item() == 1.0


def _summary(seed: int, batch: int = 3) -> object:
    generator = torch.Generator().manual_seed(seed)
    logps = torch.randn(batch, 6, generator=generator) * 0.2
    mask = torch.ones(batch, 6, dtype=torch.bool)
    advantages = torch.randn(batch, generator=generator)
    return compute_fipo_influence(logps, mask, advantages, FIPOConfig())[1]


def test_the_metric_sink_keeps_means_per_call_and_extremes_once():
    metrics: defaultdict = defaultdict(list)
    chunks = [_summary(seed) for seed in range(3)]
    for stats in chunks:
        record_summaries(metrics, stats, gather=lambda row: row)  # one rank
    assert set(metrics) == {f'fipo/{key}' for key in chunks[0].summary}
    for key, how in METRIC_REDUCTIONS.items():
        values = [float(stats.summary[key]) for stats in chunks]
        finite = [value for value in values if not math.isnan(value)]
        recorded = metrics[f'fipo/{key}']
        if how == 'mean':
            assert len(recorded) == 3 and recorded == pytest.approx(values, nan_ok=True), key
        else:
            expected = min(finite) if how == 'min' else max(finite)
            assert recorded == pytest.approx([expected]), key


def test_the_metric_sink_reduces_over_ranks_in_one_gather():
    stats = _summary(0)
    calls = []

    def two_ranks(row: torch.Tensor) -> torch.Tensor:
        calls.append(row.shape)
        other = row.clone()
        other[0, list(stats.summary).index('influence_weight_max')] = 99.0
        return torch.cat([row, other])

    metrics: defaultdict = defaultdict(list)
    record_summaries(metrics, stats, gather=two_ranks)
    assert calls == [(1, len(stats.summary))]
    assert metrics['fipo/influence_weight_max'] == [99.0]
    assert metrics['fipo/influence_weight_min'] == pytest.approx([float(stats.summary['influence_weight_min'])])
