"""The public maths API refuses what it cannot interpret, by argument name, and never hands out
tensors that alias each other or the caller's inputs."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from conftest import need

from swift_fipo import FIPOConfig, compute_fipo_influence
from swift_fipo.ops.future_kl import discounted_future_sum
from swift_fipo.ops.loss import apply_fipo, reweight_advantages


def batch(b: int = 3, t: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(b * 100 + t)
    return (0.5 * torch.randn(b, t, generator=generator), torch.rand(b, t, generator=generator) > 0.2,
            torch.randn(b, generator=generator))


# --- apply_fipo: no silent broadcast ---------------------------------------------------------------


@pytest.mark.parametrize('shape', [(), (5, ), (1, 5), (1, 1), (3, 5, 1), (3, 4), (2, 5)])
def test_apply_fipo_refuses_a_loss_that_would_broadcast(shape):
    log_ratio, mask, advantages = batch()
    with pytest.raises(ValueError, match=r'per_token_loss must be \[B, T\] or \[B, 1\] with B=3, T=5'):
        apply_fipo(torch.ones(shape), log_ratio, mask, advantages)


@pytest.mark.parametrize('shape', [(3, 5), (3, 1)])
def test_apply_fipo_accepts_exactly_b_t_and_b_1(shape):
    log_ratio, mask, advantages = batch()
    loss, stats = apply_fipo(torch.ones(shape), log_ratio, mask, advantages)
    assert loss.shape == (3, 5) and torch.equal(loss, stats.weight)


@pytest.mark.parametrize('loss', [torch.ones(3, 5, dtype=torch.int64), torch.ones(3, 5, dtype=torch.complex64),
                                  [[1.0] * 5] * 3])
def test_apply_fipo_refuses_a_loss_that_is_not_a_float_tensor(loss):
    log_ratio, mask, advantages = batch()
    with pytest.raises(TypeError, match='per_token_loss must be a floating-point'):
        apply_fipo(loss, log_ratio, mask, advantages)


# --- compute_fipo_influence: types, dtypes, devices --------------------------------------------------


@pytest.mark.parametrize('dtype', [torch.int64, torch.int8, torch.bool, torch.complex64])
def test_log_ratio_dtypes_that_would_be_cast_silently_are_refused(dtype):
    log_ratio, mask, advantages = batch()
    with pytest.raises(TypeError, match=f'log_ratio must be a .B, T. floating-point tensor; got dtype {dtype}'):
        compute_fipo_influence(log_ratio.to(dtype), mask, advantages)
    with pytest.raises(TypeError, match='log_ratio'):
        apply_fipo(torch.ones(3, 5), log_ratio.to(dtype), mask, advantages)


@pytest.mark.parametrize('argument, value, error, message', [
    ('log_ratio', [[0.0] * 5] * 3, TypeError, 'log_ratio must be a .B, T. floating-point torch.Tensor; got list'),
    ('completion_mask', torch.ones(3, 5, dtype=torch.complex64), TypeError, 'completion_mask must be'),
    ('completion_mask', [[True] * 5] * 3, TypeError, 'completion_mask must be .* torch.Tensor; got list'),
    ('advantages', torch.ones(3, dtype=torch.bool), TypeError,
     'advantages must be .* real tensor; got dtype torch.bool'),
    ('advantages', 1.0, TypeError, 'advantages must be .*; got float'),
    ('ratio', torch.ones(3, 5, dtype=torch.int64), TypeError, 'ratio must be .* floating-point tensor'),
    ('config', {'decay_rate': 16.0}, TypeError, 'config must be a FIPOConfig .*; got dict'),
    ('config', 'paper-7b', TypeError, 'config must be a FIPOConfig .*; got str'),
    ('completion_mask', torch.ones(3, 5, device='meta'), ValueError,
     'completion_mask must be on the device of log_ratio'),
])
def test_arguments_it_cannot_interpret_are_refused_by_name(argument, value, error, message):
    log_ratio, mask, advantages = batch()
    arguments = dict(log_ratio=log_ratio, completion_mask=mask, advantages=advantages, config=None, ratio=None)
    arguments[argument] = value
    with pytest.raises(error, match=message):
        compute_fipo_influence(**arguments)


def test_integer_advantages_are_read_by_sign():
    log_ratio, mask, advantages = batch()
    weight_int, _ = compute_fipo_influence(log_ratio, mask, advantages.sign().to(torch.int64))
    weight, _ = compute_fipo_influence(log_ratio, mask, advantages)
    assert torch.equal(weight, weight_int)


@pytest.mark.parametrize('dtype', [torch.int64, torch.int32, torch.int8, torch.uint8])
def test_reweighted_integer_advantages_are_not_truncated(dtype):
    # Before: A * w came back in the advantages' integer dtype, so a weight of 1.2 on A = 3 gave 3 and a
    # weight of 0.8 on A = 2 gave 0, silently.
    log_ratio = torch.full((2, 4), 0.5)  # Future-KL >= 0.5: weights above 1.6, clipped at 1.2
    mask = torch.ones(2, 4, dtype=torch.bool)
    advantages = torch.tensor([3, 2], dtype=dtype)
    config = FIPOConfig(clip_high_only=False, clip_range=0.2)
    weighted, stats = reweight_advantages(advantages, log_ratio, mask, config)
    assert weighted.dtype == torch.float32
    assert torch.equal(weighted, advantages.to(torch.float32).unsqueeze(1) * stats.weight)
    assert float(weighted[0, 0]) == pytest.approx(3 * 1.2)
    # A negative log-ratio gives weights below 1 (0.8 at the clip): 2 * 0.8 is 1.6, not 1.
    weighted, _ = reweight_advantages(advantages, -log_ratio, mask, config)
    assert float(weighted[1, 0]) == pytest.approx(2 * 0.8)


@pytest.mark.parametrize('dtype', [torch.float64, torch.bfloat16, torch.float16])
def test_reweighted_floating_advantages_keep_their_dtype(dtype):
    log_ratio, mask, advantages = batch()
    weighted, stats = reweight_advantages(advantages.to(dtype), log_ratio, mask)
    assert weighted.dtype == dtype
    assert torch.equal(weighted, advantages.to(dtype).unsqueeze(1) * stats.weight.to(dtype))


def test_every_public_function_returns_floating_results_for_integer_advantages():
    log_ratio, mask, advantages = batch()
    integer = advantages.sign().to(torch.int64)
    weight, stats = compute_fipo_influence(log_ratio, mask, integer)
    loss, _ = apply_fipo(torch.ones(3, 5), log_ratio, mask, integer)
    weighted, _ = reweight_advantages(integer, log_ratio, mask)
    assert all(tensor.dtype == torch.float32 for tensor in (weight, stats.weight, loss, weighted))


# --- discounted_future_sum -------------------------------------------------------------------------


@pytest.mark.parametrize('dtype', [torch.int64, torch.int32, torch.bool, torch.complex128])
def test_future_sum_refuses_integer_and_complex_values(dtype):
    # Before: an int64 input came back unchanged (its decay matrix rounded to the identity).
    with pytest.raises(TypeError, match=f'values must be a floating-point tensor; got dtype {dtype}'):
        discounted_future_sum(torch.ones(2, 6).to(dtype), 0.5)


@pytest.mark.parametrize('arguments, message', [
    ((torch.tensor(1.0), 0.5), 'at least one dimension'),
    ((torch.ones(2, 3), True), 'gamma must be a number'),
    ((torch.ones(2, 3), '0.5'), 'gamma must be a number'),
    ((torch.ones(2, 3), math.nan), 'gamma must be a number'),
    ((torch.ones(2, 3), 0.5, 2.0), r'block_size must be an int in \[2, 256\]; got 2.0'),
    ((torch.ones(2, 3), 0.5, True), r'block_size must be an int in \[2, 256\]'),
    # Before: 8192 built (and cached) an [8192, 8192] decay matrix for 20 numbers, seconds and gigabytes.
    ((torch.ones(1, 20), 0.9, 8192), r'block_size must be an int in \[2, 256\]; got 8192'),
    ((torch.ones(1, 20), 0.9, 257), r'block_size must be an int in \[2, 256\]; got 257'),
])
def test_future_sum_refuses_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        discounted_future_sum(*arguments)


def test_future_sum_takes_numpy_and_tensor_gammas():
    numpy = need('numpy')
    values = torch.randn(2, 7)
    expected = discounted_future_sum(values, 0.75)
    assert torch.equal(discounted_future_sum(values, numpy.float32(0.75)), expected)
    assert torch.equal(discounted_future_sum(values, torch.tensor(0.75)), expected)


# --- empty batches -----------------------------------------------------------------------------------


@pytest.mark.parametrize('shape', [(0, 5), (3, 0), (0, 0), (0, 300)])
@pytest.mark.parametrize('preset', ['swift', 'paper-7b'])
def test_empty_batches_give_nan_summaries_not_exceptions(shape, preset):
    config = FIPOConfig.from_preset(preset)
    log_ratio = torch.zeros(shape)
    mask = torch.ones(shape, dtype=torch.bool)
    advantages = torch.ones(shape[0])
    weight, stats = compute_fipo_influence(log_ratio, mask, advantages, config)
    assert weight.shape == shape and stats.future_kl.shape == shape
    summary = stats.summary
    dropped = float(summary.pop('dropped_response_ratio'))
    assert math.isnan(dropped) if shape[0] == 0 else dropped == 0.0  # a per-response ratio: B responses, none dropped
    assert summary and all(math.isnan(float(value)) for value in summary.values())
    loss, _ = apply_fipo(torch.zeros(shape), log_ratio, mask, advantages, config, reduction='token_mean')
    assert float(loss) == 0.0


# --- aliasing ----------------------------------------------------------------------------------------


def storages(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    return {name: tensor.untyped_storage().data_ptr() for name, tensor in tensors.items() if tensor.numel()}


@pytest.mark.parametrize('config', [FIPOConfig(), FIPOConfig(clip_range=None, safety_threshold=None),
                                    FIPOConfig(clip_range=0.0, safety_threshold=None, unclipped_weight_cap=None),
                                    FIPOConfig.from_preset('paper-7b')], ids=['defaults', 'unbounded', 'clip-0',
                                                                              'paper-7b'])
@pytest.mark.parametrize('with_ratio', [False, True])
def test_no_returned_tensor_shares_memory_with_another_or_with_an_input(config, with_ratio):
    log_ratio, mask, advantages = batch()
    ratio = log_ratio.exp() if with_ratio else None  # float32 [B, T]: the identity cast would alias it
    weight, stats = compute_fipo_influence(log_ratio, mask, advantages, config, ratio=ratio)
    tensors = {'weight': weight, 'log_ratio': log_ratio, 'mask': mask, 'advantages': advantages,
               **({'ratio-input': ratio} if ratio is not None else {}),
               **{f'stats.{field.name}': getattr(stats, field.name) for field in dataclasses.fields(stats)
                  if isinstance(getattr(stats, field.name), torch.Tensor)}}
    pointers = storages(tensors)
    shared = [(a, b) for a, b in itertools.combinations(pointers, 2) if pointers[a] == pointers[b]]
    assert not shared


def test_in_place_edits_after_the_call_do_not_leak_into_the_stats():
    log_ratio, mask, advantages = batch()
    config = FIPOConfig(clip_range=None, safety_threshold=None)  # before: weight was raw_weight was stats.weight
    weight, stats = compute_fipo_influence(log_ratio, mask, advantages, config)
    expected = {key: float(value) for key, value in stats.summary.items()}
    del stats.__dict__['summary']  # recompute it after the edits below
    weight.mul_(0.0)
    mask.zero_()
    assert torch.equal(stats.weight, stats.raw_weight) and float(stats.weight.sum()) > 0
    after = {key: float(value) for key, value in stats.summary.items()}
    assert after.keys() == expected.keys()
    assert all(after[key] == expected[key] or (math.isnan(after[key]) and math.isnan(expected[key])) for key in after)


# --- FIPOStats built by hand ------------------------------------------------------------------------


def test_summary_refuses_hand_built_stats_it_cannot_interpret():
    log_ratio, mask, advantages = batch()
    _, stats = compute_fipo_influence(log_ratio, mask, advantages)
    for field, value, message in [('completion_mask', mask.float(), 'completion_mask must be a .B, T. bool tensor'),
                                  ('weight', torch.ones(5), r'FIPOStats.weight must be a tensor of shape \(3, 5\)'),
                                  ('dropped', torch.zeros(3), 'FIPOStats.dropped must be a bool tensor'),
                                  ('ratio', [1.0], 'FIPOStats.ratio must be a tensor of shape')]:
        broken = dataclasses.replace(stats, **{field: value})
        with pytest.raises(ValueError, match=message):
            _ = broken.summary  # the property validates the stats
