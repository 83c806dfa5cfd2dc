"""The maths under the precision policies hosts train with: ``torch.autocast`` (CPU here; CUDA autocast
takes the same code path, the device type is read from the tensors) in bf16 and fp16.

verl's FSDP engine computes its policy loss inside ``torch.autocast(dtype=bf16)``, Accelerate's CPU AMP
(transformers 4.x) wraps ``compute_loss`` in it, and custom loops often do. Autocast would run the
Future-KL matmuls in half precision: the weights must be the float32 ones whatever surrounds the call.
"""

from __future__ import annotations

import math

import pytest
import torch
from reference import random_inputs

from swift_fipo import FIPOConfig, apply_fipo, compute_fipo_influence, reweight_advantages
from swift_fipo.config import PRESETS
from swift_fipo.ops.future_kl import discounted_future_sum

HALF = [torch.bfloat16, torch.float16]
# Lengths on each side of the dense cutoff (256) and past one level of blocks (256 * 32).
LENGTHS = [16, 300, 5000, 9000]


def _autocast(dtype: torch.dtype) -> torch.autocast:
    return torch.autocast('cpu', dtype=dtype)


def _inputs(length: int, seed: int = 0, scale: float = 0.3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    log_ratio, mask, advantages = random_inputs(4, length, seed=seed, scale=scale)
    return log_ratio, mask, advantages


def test_autocast_would_run_a_matmul_in_half_precision() -> None:
    """The premise: without the guard, autocast really lowers the Future-KL matmul (else these tests
    would pass for nothing)."""
    values = torch.randn(2, 8)
    with _autocast(torch.bfloat16):
        assert (values @ torch.ones(8, 8)).dtype == torch.bfloat16


@pytest.mark.parametrize('dtype', HALF)
@pytest.mark.parametrize('length', LENGTHS)
def test_future_sum_under_autocast_equals_float32(dtype: torch.dtype, length: int) -> None:
    values = torch.randn(3, length, generator=torch.Generator().manual_seed(length))
    gamma = 2.0**(-1 / 32)
    expected = discounted_future_sum(values, gamma)
    with _autocast(dtype):
        got = discounted_future_sum(values, gamma)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


@pytest.mark.parametrize('dtype', HALF)
@pytest.mark.parametrize('length', LENGTHS)
@pytest.mark.parametrize('preset', sorted(PRESETS))
def test_weights_under_autocast_equal_the_weights_without_it(dtype: torch.dtype, length: int, preset: str) -> None:
    config = FIPOConfig.from_preset(preset)
    log_ratio, mask, advantages = _inputs(length, seed=length)
    expected, expected_stats = compute_fipo_influence(log_ratio, mask, advantages, config)
    with _autocast(dtype):
        weight, stats = compute_fipo_influence(log_ratio, mask, advantages, config)
    assert weight.dtype == torch.float32 and stats.future_kl.dtype == torch.float32
    assert (weight - expected).abs().max().item() <= 1e-6
    assert (stats.future_kl - expected_stats.future_kl).abs().max().item() <= 1e-6
    assert torch.isfinite(weight).all()
    # Off-policy inputs: the weights really moved, so equality is not 1 == 1.
    assert (expected[mask] != 1).any()
    for key, value in stats.summary.items():
        reference = expected_stats.summary[key]
        assert value.dtype == torch.float32, key
        assert torch.equal(value.isnan(), reference.isnan()), key
        assert (value.isnan() | (value - reference).abs().le(1e-6)).all(), key


@pytest.mark.parametrize('dtype', HALF)
def test_half_precision_log_ratios_under_autocast(dtype: torch.dtype) -> None:
    """A host whose log-probs come out of an autocast forward hands over a bf16/fp16 log-ratio: the
    weights are those of that log-ratio read as float32."""
    log_ratio, mask, advantages = _inputs(700, seed=3)
    half = log_ratio.to(dtype)
    expected, _ = compute_fipo_influence(half.float(), mask, advantages)
    with _autocast(dtype):
        weight, _ = compute_fipo_influence(half, mask, advantages)
    assert (weight - expected).abs().max().item() <= 1e-6


def test_fp16_infinite_log_ratios_give_finite_weights_under_autocast() -> None:
    """fp16 overflows to +-inf at 65504; the log-ratio of such log-probs is +-inf (or NaN)."""
    log_ratio, mask, advantages = _inputs(300, seed=4)
    half = log_ratio.to(torch.float16)
    half[0, 5], half[1, 7], half[2, 9] = math.inf, -math.inf, math.nan
    expected, _ = compute_fipo_influence(half.float(), mask, advantages, FIPOConfig(clip_range=0.0))
    with _autocast(torch.float16):
        weight, stats = compute_fipo_influence(half, mask, advantages, FIPOConfig(clip_range=0.0))
    assert torch.isfinite(weight).all() and torch.isfinite(stats.raw_weight).all()
    assert torch.equal(weight, expected)


@pytest.mark.parametrize('dtype', HALF)
def test_loss_forms_under_autocast(dtype: torch.dtype) -> None:
    """``apply_fipo`` and ``reweight_advantages`` inside an autocast loss: the same numbers as without,
    and the dtypes documented (the weighted loss promoted with float32; advantages keep theirs)."""
    log_ratio, mask, advantages = _inputs(300, seed=5)
    log_ratio.requires_grad_(True)
    per_token_loss = -(torch.exp(log_ratio) * advantages[:, None])
    expected_loss, _ = apply_fipo(per_token_loss, log_ratio, mask, advantages, reduction='token_mean')
    expected_adv, _ = reweight_advantages(advantages, log_ratio, mask)
    with _autocast(dtype):
        loss, _ = apply_fipo(per_token_loss, log_ratio, mask, advantages, reduction='token_mean')
        half_loss, _ = apply_fipo(per_token_loss.to(dtype), log_ratio, mask, advantages)
        weighted, _ = reweight_advantages(advantages, log_ratio, mask)
        half_adv, _ = reweight_advantages(advantages.to(dtype), log_ratio, mask)
    assert loss.dtype == torch.float32 and half_loss.dtype == torch.float32
    assert (loss - expected_loss).abs().item() <= 1e-6
    assert torch.equal(weighted, expected_adv) and half_adv.dtype == dtype
    loss.backward()
    assert log_ratio.grad is not None and torch.isfinite(log_ratio.grad).all()


def test_autocast_stays_on_for_the_caller() -> None:
    """The guard is local: the host's own ops after the call are still autocast."""
    log_ratio, mask, advantages = _inputs(16)
    with _autocast(torch.bfloat16):
        compute_fipo_influence(log_ratio, mask, advantages)
        assert torch.is_autocast_enabled('cpu')
        assert (log_ratio @ log_ratio.t()).dtype == torch.bfloat16


def test_meta_tensors_pass_through_the_guard() -> None:
    """A device type autocast knows nothing about must not trip the guard."""
    values = torch.empty(2, 40, device='meta')
    assert discounted_future_sum(values, 0.9).shape == (2, 40)


# --- Which part must run in float32 (issue 29.4) ---------------------------------------------------------
# Autocast lowers only matmul-like ops (mm, bmm, addmm, matmul, linear, ...); every other op of the weight
# computation (exp, clamp, lerp, where, addcmul, comparisons, the summaries' sums and kthvalue) runs in its
# inputs' dtype, float32 here. So the Future-KL sum (discounted_future_sum's matmuls) is the part that must
# be guarded; everything after it is float32 because its input is. These tests pin both halves.


def _no_guard(device=None):
    import contextlib
    return contextlib.nullcontext()


@pytest.mark.parametrize('dtype', HALF)
@pytest.mark.parametrize('length', [300, 5000])
def test_the_future_kl_guard_alone_keeps_every_weight_and_summary_float32(monkeypatch, dtype, length) -> None:
    """Narrowed to the Future-KL sum (the outer guard of compute_fipo_influence removed), the weights and
    every summary read inside autocast still equal the unguarded float32 ones: the rest is autocast-safe."""
    from swift_fipo.ops import influence
    config = FIPOConfig.from_preset('paper-7b')
    log_ratio, mask, advantages = _inputs(length, seed=11)
    expected, expected_stats = compute_fipo_influence(log_ratio, mask, advantages, config)
    expected_summary = {key: float(value) for key, value in expected_stats.summary.items()}
    monkeypatch.setattr(influence, 'autocast_off', _no_guard)
    with _autocast(dtype):
        weight, stats = compute_fipo_influence(log_ratio, mask, advantages, config)
        summary = {key: float(value) for key, value in stats.summary.items()}  # a host reads them in its loss
    assert torch.equal(weight, expected) and torch.equal(stats.future_kl, expected_stats.future_kl)
    assert summary.keys() == expected_summary.keys()
    for key, value in summary.items():
        assert value == expected_summary[key] or (math.isnan(value) and math.isnan(expected_summary[key])), key


@pytest.mark.parametrize('length', [16, 300, 5000])
def test_without_the_future_kl_guard_the_weights_are_wrong_or_refused(monkeypatch, length) -> None:
    """The Future-KL sum is the part that must be float32: with no guard at all (both uses of autocast_off
    gone) the bf16 matmuls either crash the float32 cap of the raw weight or give different weights."""
    from swift_fipo.ops import future_kl, influence
    log_ratio, mask, advantages = _inputs(length, seed=12)
    expected, _ = compute_fipo_influence(log_ratio, mask, advantages, FIPOConfig(clip_range=0.0))
    monkeypatch.setattr(influence, 'autocast_off', _no_guard)
    monkeypatch.setattr(future_kl, 'autocast_off', _no_guard)
    with _autocast(torch.bfloat16):
        try:
            weight, _ = compute_fipo_influence(log_ratio, mask, advantages, FIPOConfig(clip_range=0.0))
        except RuntimeError as error:
            assert 'BFloat16' in str(error)
            return
    assert not torch.equal(weight, expected)
