"""compute_fipo_influence against a float64 brute force, against ms-swift's own native method, and on
the inputs that break naive implementations."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import need, only_where
from reference import brute_fipo, brute_fipo_weight, is_close, random_inputs

from swift_fipo import FIPOConfig, compute_fipo_influence
from swift_fipo.integrations.ms_swift.layout import native_fipo_installed

CONFIGS = {
    'defaults': FIPOConfig(),
    'symmetric': FIPOConfig(clip_range=0.2, clip_high_only=False),
    'no-clip': FIPOConfig(clip_range=None),
    'clip-zero': FIPOConfig(clip_range=0.0),
    'delta': FIPOConfig(delta=1.3),
    'no-safety': FIPOConfig(safety_threshold=None),
    'short-window': FIPOConfig(decay_rate=2.0, safety_threshold=1.1),
}


# Options ms-swift's native method does not have (the authors' safeguards), and the two participation
# thresholds set to different values: whichever is smaller must decide.
SAFEGUARD_CONFIGS = {
    'delta-below-filter': FIPOConfig(delta=1.2, filter_threshold=1.6),
    'filter-below-delta': FIPOConfig(delta=1.6, filter_threshold=1.2, clip_high_only=False),
    'filter-only': FIPOConfig(filter_threshold=1.3, safety_threshold=1.5),
    'clamp': FIPOConfig(log_ratio_clamp=0.25, clip_range=None, safety_threshold=1.1),
    'cap': FIPOConfig(clip_range=0.0, unclipped_weight_cap=1.1),
    'drop-by-delta': FIPOConfig(delta=1.5, filter_threshold=1.2, sequence_drop=True),
    'drop-by-filter': FIPOConfig(filter_threshold=1.4, sequence_drop=True, safety_threshold=None),
}


def _options(config: FIPOConfig) -> dict:
    """The brute force's options for ``config``; the sequence drop's c is delta, else the filter threshold."""
    drop = (config.delta if config.delta is not None else config.filter_threshold) if config.sequence_drop else None
    return dict(decay_rate=config.decay_rate, clip_range=config.clip_range, clip_high_only=config.clip_high_only,
                safety_threshold=config.safety_threshold, delta=config.delta,
                filter_threshold=config.filter_threshold, log_ratio_clamp=config.log_ratio_clamp,
                unclipped_weight_cap=config.unclipped_weight_cap, drop_threshold=drop)


def _brute(log_ratio, mask, advantages, config: FIPOConfig, ratio=None):
    return brute_fipo_weight(log_ratio, mask, advantages, ratio=ratio, **_options(config))


def _check_against_brute_force(log_ratio, mask, advantages, config: FIPOConfig, ratio=None) -> dict:
    weight, stats = compute_fipo_influence(log_ratio, mask, advantages, config, ratio=ratio)
    expected = brute_fipo(log_ratio, mask, advantages, ratio=ratio, **_options(config))
    assert weight.dtype == torch.float32 and weight.shape == log_ratio.shape
    assert is_close(stats.future_kl, expected['future_kl'])
    assert is_close(weight, expected['weight'])
    assert is_close(stats.weight, expected['weight'])
    assert is_close(stats.raw_weight, expected['raw_weight'])
    assert torch.equal(stats.safety_mask, expected['safety'])
    assert torch.equal(stats.participation_mask, expected['participation'])
    assert torch.equal(stats.dropped, expected['dropped'])
    return expected


@pytest.mark.parametrize('name', sorted(CONFIGS))
@pytest.mark.parametrize('length', [1, 7, 200])
def test_matches_float64_brute_force(name, length):
    log_ratio, mask, advantages = random_inputs(5, length, seed=length)
    _check_against_brute_force(log_ratio, mask, advantages, CONFIGS[name])


@pytest.mark.parametrize('name', sorted(SAFEGUARD_CONFIGS))
@pytest.mark.parametrize('ratio_level', ['token', 'sequence'])
def test_safeguards_match_float64_brute_force(name, ratio_level):
    config = SAFEGUARD_CONFIGS[name]
    log_ratio, mask, advantages = random_inputs(6, 120, seed=11, scale=0.4)
    advantages[:3] = -advantages[:3].abs()  # negative rows for the safety rule and the drop
    ratio = None
    if ratio_level == 'sequence':  # a per-row ratio that is not exp(log_ratio), spread around the thresholds
        ratio = torch.tensor([[0.7], [1.25], [1.45], [1.8], [1.15], [3.0]])
    expected = _check_against_brute_force(log_ratio, mask, advantages, config, ratio=ratio)
    # The inputs must exercise the option: some, not all, tokens filtered; some, not all, rows dropped.
    completion = mask.bool()
    filtered = int((completion & ~expected['participation']).sum())
    if config.delta is not None or config.filter_threshold is not None:
        assert 0 < filtered < int(completion.sum())
    if config.sequence_drop and ratio_level == 'token':
        assert 0 < int(expected['dropped'].sum()) < 6


def test_the_stricter_participation_threshold_decides():
    """delta and filter_threshold each keep high-ratio tokens out: ratios between the two thresholds are
    filtered whichever of the two is the smaller one."""
    ratios = [0.9, 1.3, 1.7, 2.5, 1.1]
    log_ratio = torch.log(torch.tensor([ratios]))
    mask = torch.ones_like(log_ratio, dtype=torch.bool)
    gamma = 2**(-1 / 32)
    # Only ratios <= 1.2 (0.9 and 1.1, positions 0 and 4) enter Future-KL, in either assignment.
    expected_first = math.log(0.9) + gamma**4 * math.log(1.1)
    for config in (FIPOConfig(delta=1.2, filter_threshold=2.0), FIPOConfig(delta=2.0, filter_threshold=1.2)):
        _, stats = compute_fipo_influence(log_ratio, mask, torch.ones(1), config)
        assert stats.participation_mask.tolist() == [[True, False, False, False, True]]
        assert float(stats.future_kl[0, 0]) == pytest.approx(expected_first, rel=1e-6)
        assert float(stats.summary['filtered_ratio']) == pytest.approx(3 / 5)


@pytest.mark.parametrize('shape', ['B', 'B1', 'BT'])
def test_advantage_shapes_agree(shape):
    log_ratio, mask, advantages = random_inputs(4, 30, seed=3, scale=1.0)
    as_shape = {'B': advantages, 'B1': advantages[:, None], 'BT': advantages[:, None].expand(4, 30).clone()}
    config = FIPOConfig(safety_threshold=1.5)
    reference, _ = compute_fipo_influence(log_ratio, mask, advantages, config)
    weight, stats = compute_fipo_influence(log_ratio, mask, as_shape[shape], config)
    assert torch.equal(weight, reference)
    assert stats.safety_mask.shape == (4, 30) and not bool(stats.safety_mask.all())


def test_sequence_level_ratio_drives_filter_and_safety_rule():
    log_ratio, mask, _ = random_inputs(4, 20, seed=4)
    advantages = torch.tensor([-1.0, -1.0, 1.0, -1.0])
    ratio = torch.tensor([[5.0], [1.0], [5.0], [0.5]])  # [B, 1], as with importance_sampling_level sequence
    config = FIPOConfig(delta=2.0)
    weight, stats = compute_fipo_influence(log_ratio, mask, advantages, config, ratio=ratio)
    expected_weight, expected_future_kl, expected_safety = _brute(log_ratio, mask, advantages, config, ratio=ratio)
    assert is_close(weight, expected_weight) and is_close(stats.future_kl, expected_future_kl)
    # Only row 0 (negative advantage, ratio 5 > 4) trips the safety rule; rows 0 and 2 are filtered.
    assert torch.equal(stats.safety_mask.all(dim=1), torch.tensor([False, True, True, True]))
    assert not bool(stats.participation_mask[0].any()) and not bool(stats.participation_mask[2].any())
    assert torch.equal(stats.future_kl[0], torch.zeros(20))


def test_completion_mask_accepts_bool_and_01():
    log_ratio, mask, advantages = random_inputs(3, 40, seed=5)
    from_bool, _ = compute_fipo_influence(log_ratio, mask, advantages)
    for as_number in (mask.long(), mask.float(), mask.to(torch.bfloat16)):
        assert torch.equal(compute_fipo_influence(log_ratio, as_number, advantages)[0], from_bool)


def test_result_is_detached_and_saves_nothing_for_autograd():
    log_ratio, mask, advantages = random_inputs(2, 300, seed=6)
    log_ratio.requires_grad_(True)
    saved: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        weight, stats = compute_fipo_influence(log_ratio, mask, advantages)
        _ = stats.summary
    assert saved == []
    assert not weight.requires_grad and not stats.future_kl.requires_grad and weight.grad_fn is None


def test_bf16_input_is_computed_in_float32():
    log_ratio, mask, advantages = random_inputs(3, 500, seed=7, scale=0.05)
    config = FIPOConfig(clip_range=None)
    weight, stats = compute_fipo_influence(log_ratio.to(torch.bfloat16), mask, advantages, config)
    # Reference on the same bf16-rounded inputs, in float64: only the input rounding may differ.
    expected_weight, expected_future_kl, _ = _brute(log_ratio.to(torch.bfloat16).float(), mask, advantages, config)
    assert weight.dtype == torch.float32 and stats.future_kl.dtype == torch.float32
    assert is_close(stats.future_kl, expected_future_kl) and is_close(weight, expected_weight)


def test_single_token_and_fully_masked_rows():
    log_ratio = torch.tensor([[0.5], [2.0], [-1.0]])
    mask = torch.tensor([[True], [False], [True]])
    weight, stats = compute_fipo_influence(log_ratio, mask, torch.tensor([1.0, 1.0, -1.0]),
                                           FIPOConfig(clip_range=None))
    assert torch.allclose(weight, torch.tensor([[math.exp(0.5)], [1.0], [math.exp(-1.0)]]))
    empty = torch.zeros(2, 8, dtype=torch.bool)
    weight, stats = compute_fipo_influence(torch.randn(2, 8), empty, torch.ones(2))
    assert torch.equal(weight, torch.ones(2, 8)) and torch.equal(stats.future_kl, torch.zeros(2, 8))
    summary = stats.summary
    assert float(summary.pop('dropped_response_ratio')) == 0.0  # a per-response count: none dropped
    assert all(math.isnan(float(value)) for value in summary.values())


@pytest.mark.parametrize('name', ['defaults', 'no-clip', 'symmetric'])
def test_extreme_and_non_finite_log_ratios_give_finite_weights(name):
    config = CONFIGS[name]
    log_ratio = torch.tensor([[0.1, 100.0, -0.2, 1e6, 0.0, -1e6, math.inf, -math.inf, 0.3, 0.0]])
    mask = torch.ones_like(log_ratio, dtype=torch.bool)
    weight, stats = compute_fipo_influence(log_ratio, mask, torch.tensor([1.0]), config)
    assert bool(torch.isfinite(weight).all()) and bool(torch.isfinite(stats.raw_weight).all())
    assert bool((weight >= 0).all())
    # Tokens after the last infinity are untouched by it: their Future-KL only looks ahead.
    expected_tail, _, _ = _brute(log_ratio[:, 8:], mask[:, 8:], torch.tensor([1.0]), config)
    assert is_close(weight[:, 8:], expected_tail)
    bounds = config.weight_bounds
    if bounds is not None:
        low, high = (float(torch.tensor(bound, dtype=torch.float32)) for bound in bounds)
        assert float(weight.min()) >= low and float(weight.max()) <= high


@pytest.mark.parametrize('name, lowest', [('no-clip', 0.0), ('defaults', 1.0), ('symmetric', 0.8)])
def test_minus_infinity_pulls_the_weight_to_its_lowest(name, lowest):
    """A token the new policy gives probability 0 (log-ratio -inf): its Future-KL is hugely negative, so
    its weight and those before it within reach go to the lowest the clip allows, never the highest."""
    log_ratio = torch.tensor([[0.1, -math.inf, 0.2]])
    weight, stats = compute_fipo_influence(log_ratio, torch.ones(1, 3, dtype=torch.bool), torch.ones(1), CONFIGS[name])
    assert float(stats.future_kl[0, 1]) < -1e29
    assert weight[0, :2].tolist() == pytest.approx([lowest, lowest])
    assert float(weight[0, 2]) == pytest.approx(math.exp(0.2) if name == 'no-clip' else 1.2)


def test_a_ratio_equal_to_a_threshold_does_not_exceed_it():
    """The filter and the safety rule act on ratios that exceed their threshold: equality does not."""
    log_ratio = torch.full((2, 3), 0.1)
    ratio = torch.tensor([[2.0], [2.5]])  # exactly representable, as a sequence-level ratio
    config = FIPOConfig(delta=2.0, safety_threshold=2.0, clip_range=None)
    _, stats = compute_fipo_influence(log_ratio, torch.ones(2, 3, dtype=torch.bool), torch.tensor([-1.0, -1.0]),
                                      config, ratio=ratio)
    assert stats.participation_mask.all(dim=1).tolist() == [True, False]
    assert stats.safety_mask.all(dim=1).tolist() == [True, False]


def test_non_finite_values_at_masked_positions_do_not_leak():
    log_ratio, mask, advantages = random_inputs(4, 50, seed=8)
    poisoned = log_ratio.clone()
    poisoned[~mask] = torch.tensor([math.nan, math.inf, -math.inf]).repeat(int((~mask).sum()))[:int((~mask).sum())]
    for config in CONFIGS.values():
        clean, clean_stats = compute_fipo_influence(log_ratio, mask, advantages, config)
        dirty, dirty_stats = compute_fipo_influence(poisoned, mask, advantages, config)
        assert torch.equal(clean[mask], dirty[mask]) and bool(torch.isfinite(dirty).all())
        assert torch.equal(clean_stats.future_kl, dirty_stats.future_kl)


def test_summary_averages_over_completion_tokens_only():
    log_ratio, mask, _ = random_inputs(4, 64, seed=9, scale=1.0)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])  # negative rows: the safety rule can fire
    config = FIPOConfig(clip_range=0.2, clip_high_only=False, safety_threshold=2.0)
    weight, stats = compute_fipo_influence(log_ratio, mask, advantages, config)
    summary = stats.summary
    assert float(summary['influence_weight_mean']) == pytest.approx(float(weight[mask].mean()), rel=1e-6)
    assert float(summary['influence_weight_min']) == float(weight[mask].min())
    assert float(summary['influence_weight_max']) == float(weight[mask].max())
    assert float(summary['future_kl_mean']) == pytest.approx(float(stats.future_kl[mask].mean()), rel=1e-5)
    assert float(summary['safety_keep_ratio']) == pytest.approx(float(stats.safety_mask[mask].float().mean()))
    fired = float((~stats.safety_mask[mask]).float().mean())
    assert 0 < fired < 1 and float(summary['safety_fired_ratio']) == pytest.approx(fired)
    assert float(summary['filtered_ratio']) == 0.0  # no delta, no filter threshold: every token takes part
    assert float(summary['clipped_high_ratio']) == pytest.approx(float((stats.raw_weight[mask] > 1.2).float().mean()))
    assert float(summary['clipped_low_ratio']) == pytest.approx(float((stats.raw_weight[mask] < 0.8).float().mean()))
    assert 0 < float(summary['clipped_high_ratio']) < 1
    with pytest.raises(dataclasses.FrozenInstanceError):  # stats are a record of the step, not a scratch pad
        stats.weight = weight  # type: ignore[misc]


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match='log_ratio must be'):
        compute_fipo_influence(torch.zeros(4), torch.ones(4), torch.zeros(4))
    with pytest.raises(ValueError, match='completion_mask must match'):
        compute_fipo_influence(torch.zeros(2, 4), torch.ones(2, 5), torch.zeros(2))
    with pytest.raises(ValueError, match=r'advantages must be \[B\], \[B, 1\] or \[B, T\]'):
        compute_fipo_influence(torch.zeros(2, 4), torch.ones(2, 4), torch.zeros(3))
    with pytest.raises(ValueError, match='ratio must be'):
        compute_fipo_influence(torch.zeros(2, 4), torch.ones(2, 4), torch.zeros(2), ratio=torch.ones(2, 3))


# --- parity with the installed ms-swift's own method -------------------------------------------------


@pytest.fixture(scope='module')
def native_fipo():
    """ms-swift's own GRPOTrainer._compute_fipo_influence, as shipped (never the plugin's adapter)."""
    grpo_trainer = need('swift.rlhf_trainers.grpo_trainer', 'ms-swift')
    from swift_fipo.integrations.ms_swift import native_fipo_influence
    method = native_fipo_influence(grpo_trainer.GRPOTrainer)
    assert method.__module__ == grpo_trainer.__name__
    assert method.__qualname__ == 'GRPOTrainer._compute_fipo_influence'
    return method


def _stand_in(config: FIPOConfig) -> SimpleNamespace:
    """The attributes ms-swift's method reads from its trainer, set as ms-swift's __init__ sets them."""
    return SimpleNamespace(args=SimpleNamespace(delta=config.delta), fipo_gamma=2**(-1 / config.decay_rate),
                           fipo_clip_range=config.clip_range, fipo_clip_high_only=config.clip_high_only,
                           fipo_safety_threshold=config.safety_threshold)


@pytest.mark.ms_swift
@only_where(native_fipo_installed(), 'this ms-swift predates native FIPO (4.2.2), or none is installed: no native '
            'method to compare with (the legacy lines: tests/test_integrations_ms_swift_legacy.py)')
@pytest.mark.parametrize('name', sorted(CONFIGS))
@pytest.mark.parametrize('ratio_level', ['token', 'sequence'])
@pytest.mark.parametrize('length', [1, 129, 300])
def test_matches_native_ms_swift(native_fipo, name, ratio_level, length):
    config = CONFIGS[name]
    log_ratio, mask, advantages = random_inputs(6, length, seed=length, scale=0.6)
    ratio: torch.Tensor | None = None
    if ratio_level == 'sequence':
        ratio = torch.exp((log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1))
    coef_1 = torch.exp(log_ratio) if ratio is None else ratio
    # ms-swift 4.4+ expands advantages to [B, T]; 4.3 passes [B]. Give each version what it expects.
    import inspect
    source = inspect.getsource(native_fipo)
    native_advantages = advantages if 'advantages.unsqueeze(1)' in source else advantages[:, None].expand(6, length)
    native_weight, native_metrics = native_fipo(_stand_in(config), log_ratio, coef_1, native_advantages, mask)
    weight, stats = compute_fipo_influence(log_ratio, mask, advantages, config, ratio=ratio)
    assert is_close(weight, native_weight)
    assert is_close(stats.future_kl, native_metrics['future_kl'])
    assert torch.equal(stats.safety_mask, native_metrics['safety_mask'].expand(6, length))


def meta_stats(ratio_shape: tuple[int, int], weight_bounds: tuple[float, float] | None):
    """FIPOStats built on the meta device by hand: compute_fipo_influence itself cannot run there
    (torch.nonzero has no meta kernel), but a host may trace or size its metrics on meta tensors."""
    from swift_fipo.ops.influence import FIPOStats
    batch, length = 3, 7

    def tensor(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device='meta')
    return FIPOStats(future_kl=tensor((batch, length)), raw_weight=tensor((batch, length)),
                     weight=tensor((batch, length)), safety_mask=tensor((batch, length), torch.bool),
                     participation_mask=tensor((batch, length), torch.bool),
                     completion_mask=tensor((batch, length), torch.bool), ratio=tensor(ratio_shape),
                     negative_advantage=tensor((batch, 1), torch.bool), dropped=tensor((batch, ), torch.bool),
                     weight_bounds=weight_bounds)


@pytest.mark.parametrize('ratio_shape', [(3, 7), (3, 1)])
@pytest.mark.parametrize('weight_bounds', [None, (0.8, 1.2)])
def test_summary_works_on_meta_tensors(ratio_shape, weight_bounds):
    summary = meta_stats(ratio_shape, weight_bounds).summary
    _, real = compute_fipo_influence(torch.randn(3, 7), torch.ones(3, 7, dtype=torch.bool), torch.ones(3),
                                     FIPOConfig(clip_range=None if weight_bounds is None else 0.2))
    assert summary.keys() == real.summary.keys()
    for name, value in summary.items():
        assert (value.device.type, value.shape, value.dtype) == ('meta', torch.Size([]), torch.float32), name


def _same(first: torch.Tensor, second: torch.Tensor) -> bool:
    return bool(torch.equal(first, second) or (first.isnan() & second.isnan()))


@pytest.mark.parametrize('size', [0, 1, 2, 99, 100, 101, 200, 300, 1000, 4097])
@pytest.mark.parametrize('q', [0.0, 0.5, 0.9, 0.99, 1.0])
def test_the_sync_free_quantile_is_the_selecting_one(size, q):
    """Off the CPU the summary's p99 sorts every value instead of selecting (no device sync, a meta
    kernel): on the same data it must pick the very same element, ties, infinities and NaNs included."""
    from swift_fipo.ops.influence import FIPOStats, _masked_quantile
    generator = torch.Generator().manual_seed(size * 1000 + int(q * 100))
    for trial in range(6):
        values = torch.randint(0, 7, (size, ), generator=generator).to(torch.float32) / 4  # many ties
        if trial >= 3 and size:
            special = torch.randint(0, size, (max(1, size // 10), ), generator=generator)
            values[special] = torch.tensor([math.inf, -math.inf, math.nan][trial - 3])
        mask = torch.rand(size, generator=generator) < [0.0, 1.0, 0.5, 0.3, 0.7, 0.9][trial]
        for shaped, shaped_mask in ((values, mask), (values.reshape(1, -1), mask.reshape(1, -1))):
            sorted_pick = FIPOStats._sorted_quantile(shaped, shaped_mask, q)
            assert sorted_pick.shape == torch.Size([])
            assert _same(sorted_pick, _masked_quantile(shaped, shaped_mask, q)), (trial, size, q)
