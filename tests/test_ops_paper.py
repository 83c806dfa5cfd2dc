"""The paper presets reproduce the authors' per-token weights; each safeguard does what it says."""

from __future__ import annotations

import math

import pytest
import torch
from reference import authors_weight, is_close, random_inputs

from swift_fipo import FIPOConfig, compute_fipo_influence
from swift_fipo.config import PRESETS


def _paper_case(seed: int, batch: int = 8, length: int = 160):
    """Log-ratios with heavy tails, so that the filter, the clamp, the safety rule and the sequence drop
    all fire somewhere; advantages per token as in verl."""
    log_ratio, mask, advantages = random_inputs(batch, length, seed=seed, scale=0.4)
    generator = torch.Generator().manual_seed(seed + 1)
    spikes = torch.rand(batch, length, generator=generator)
    log_ratio = torch.where(spikes < 0.03, log_ratio + 3.0, log_ratio)  # ratio ~ 20 > c = 10
    log_ratio = torch.where(spikes > 0.995, torch.full_like(log_ratio, 40.0), log_ratio)  # clamped to 20
    # Row 0 always has two negative-advantage tokens past the dual clip: a sure sequence drop.
    advantages[0] = -abs(float(advantages[0])) - 0.1
    mask[0, :4] = True
    log_ratio[0, 1:3] = 3.0
    old_log_prob = -torch.rand(batch, length, generator=generator) * 3
    return old_log_prob + log_ratio, old_log_prob, advantages[:, None].expand(batch, length), mask


@pytest.mark.parametrize('preset', ['paper-32b', 'paper-7b'])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_paper_presets_reproduce_the_authors_weights(preset, seed):
    config = PRESETS[preset]
    log_prob, old_log_prob, advantages, mask = _paper_case(seed)
    expected = authors_weight(log_prob, old_log_prob, advantages, mask, decay_rate=config.decay_rate,
                              clip_ratio=config.clip_range, clip_high_only=config.clip_high_only,
                              safety_thresh=config.safety_threshold, clip_ratio_c=config.dual_clip_threshold)
    weight, stats = compute_fipo_influence(log_prob - old_log_prob, mask, advantages, config)
    # Only completion tokens carry a loss; there the weights must agree.
    assert is_close(weight[mask], expected[mask])
    summary = stats.summary
    assert 0 < float(summary['filtered_ratio']) < 0.2
    assert float(summary['safety_fired_ratio']) > 0
    assert bool(stats.dropped.any()) and not bool(stats.dropped.all())
    assert float(summary['dropped_response_ratio']) == pytest.approx(float(stats.dropped.float().mean()))


def test_paper_no_clip_caps_the_weight_at_10():
    log_prob, old_log_prob, advantages, mask = _paper_case(3)
    config = FIPOConfig.from_preset('paper-32b', clip_range=0.0)
    expected = authors_weight(log_prob, old_log_prob, advantages, mask, decay_rate=32.0, clip_ratio=0.0,
                              clip_high_only=True, safety_thresh=10.0, clip_ratio_c=10.0)
    weight, _ = compute_fipo_influence(log_prob - old_log_prob, mask, advantages, config)
    assert is_close(weight[mask], expected[mask])
    assert float(weight.max()) <= 10.0 and float(weight.max()) > 1.2


def test_presets_and_overrides():
    assert FIPOConfig.from_preset('swift') == FIPOConfig()
    paper = FIPOConfig.from_preset('paper-32b', safety_threshold=5.0)
    assert paper.safety_threshold == 5.0 and paper.sequence_drop and paper.filter_threshold == 10.0
    assert PRESETS['paper-7b'].weight_bounds == (0.8, 1.2) and PRESETS['paper-32b'].weight_bounds == (1.0, 1.2)
    with pytest.raises(ValueError, match='preset must be one of swift, paper-32b, paper-7b'):
        FIPOConfig.from_preset('paper-70b')


def test_filter_threshold_works_without_delta():
    log_ratio = torch.tensor([[0.0, math.log(20.0), 0.1]])
    mask = torch.ones_like(log_ratio, dtype=torch.bool)
    _, plain = compute_fipo_influence(log_ratio, mask, torch.ones(1), FIPOConfig())
    _, filtered = compute_fipo_influence(log_ratio, mask, torch.ones(1), FIPOConfig(filter_threshold=10.0))
    assert plain.participation_mask.all() and filtered.participation_mask.tolist() == [[True, False, True]]
    gamma = 2**(-1 / 32)
    assert float(filtered.future_kl[0, 0]) == pytest.approx(0.1 * gamma**2, rel=1e-6)


def test_log_ratio_clamp_bounds_future_kl():
    log_ratio = torch.tensor([[50.0, -50.0]])
    _, stats = compute_fipo_influence(log_ratio, torch.ones(1, 2, dtype=torch.bool), torch.ones(1),
                                      FIPOConfig(log_ratio_clamp=20.0, clip_range=None))
    assert float(stats.future_kl[0, 1]) == -20.0
    assert float(stats.future_kl[0, 0]) == pytest.approx(20.0 - 20.0 * 2**(-1 / 32), rel=1e-6)


def test_sequence_drop_needs_two_bound_tokens():
    ratio_log = math.log(12.0)
    log_ratio = torch.tensor([[ratio_log, 0.0, ratio_log], [ratio_log, 0.0, 0.0], [ratio_log, ratio_log, 0.0]])
    mask = torch.ones_like(log_ratio, dtype=torch.bool)
    advantages = torch.tensor([-1.0, -1.0, 1.0])
    config = FIPOConfig(delta=10.0, sequence_drop=True, safety_threshold=None)
    weight, stats = compute_fipo_influence(log_ratio, mask, advantages, config)
    assert stats.dropped.tolist() == [True, False, False]
    assert torch.equal(weight[0], torch.zeros(3)) and bool((weight[1:] >= 1).all())


def test_unclipped_weight_cap():
    log_ratio = torch.full((1, 4), 5.0)
    weight, _ = compute_fipo_influence(log_ratio, torch.ones(1, 4, dtype=torch.bool), torch.ones(1),
                                       FIPOConfig(clip_range=None, unclipped_weight_cap=10.0))
    assert torch.equal(weight, torch.full((1, 4), 10.0))


def test_negative_advantage_ratio_p99():
    log_ratio = torch.log(torch.arange(1, 201, dtype=torch.float32) / 100).reshape(2, 100)
    mask = torch.ones_like(log_ratio, dtype=torch.bool)
    _, stats = compute_fipo_influence(log_ratio, mask, torch.tensor([-1.0, 1.0]))
    # Negative row holds ratios 0.01 .. 1.00: nearest-rank p99 is 0.99.
    assert float(stats.summary['neg_adv_ratio_p99']) == pytest.approx(0.99, rel=1e-6)
