"""apply_fipo: the trainer-free helper, and the custom-loop example that documents it."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from reference import brute_fipo_weight

from swift_fipo.config import FIPOConfig
from swift_fipo.ops.loss import apply_fipo

EXAMPLE = Path(__file__).resolve().parents[1] / 'examples' / 'custom_loop.py'


def _clipped_loss(log_ratio: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    ratio = log_ratio.exp()
    a = advantages[:, None]
    return -torch.min(ratio * a, ratio.clamp(0.8, 1.28) * a)


def _batch(seed: int = 0, batch: int = 4, length: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    log_ratio = 0.3 * torch.randn(batch, length, generator=generator)
    lengths = torch.tensor([length, length - 3, 2, length - 1])[:batch]
    mask = torch.arange(length)[None, :] < lengths[:, None]
    advantages = torch.randn(batch, generator=generator)
    return log_ratio, mask, advantages


def test_none_reduction_is_per_token_loss_times_influence_weight() -> None:
    log_ratio, mask, advantages = _batch()
    config = FIPOConfig(decay_rate=4.0, clip_range=0.3, clip_high_only=False)
    per_token_loss = _clipped_loss(log_ratio, advantages)
    loss, stats = apply_fipo(per_token_loss, log_ratio, mask, advantages, config)
    # The weights of the float64 brute force (tests/reference.py), not of the code under test.
    weight, _, _ = brute_fipo_weight(log_ratio, mask, advantages, decay_rate=4.0, clip_range=0.3,
                                     clip_high_only=False)
    weight = weight.float()
    assert loss.shape == per_token_loss.shape
    torch.testing.assert_close(loss, per_token_loss * weight)
    torch.testing.assert_close(stats.weight, weight)
    # The batch is off-policy, so the weights must actually move, within the symmetric clip.
    assert not torch.allclose(weight[mask], torch.ones(()))
    assert weight[mask].min() >= 0.7 and weight[mask].max() <= 1.3


def test_token_mean_is_dapo_of_the_weighted_loss_and_ignores_padding() -> None:
    log_ratio, mask, advantages = _batch(seed=1)
    per_token_loss = _clipped_loss(log_ratio, advantages)
    per_token_loss = torch.where(mask, per_token_loss, torch.nan)  # garbage at padding must not leak
    loss, stats = apply_fipo(per_token_loss, log_ratio, mask, advantages, reduction='token_mean')
    weight = brute_fipo_weight(log_ratio, mask, advantages)[0].float()
    assert bool((weight[mask] > 1).any())  # the weights matter here
    expected = (per_token_loss * weight)[mask].sum() / mask.sum()
    torch.testing.assert_close(loss, expected)
    total, _ = apply_fipo(per_token_loss, log_ratio, mask, advantages, reduction='sum')
    torch.testing.assert_close(total, expected * mask.sum())


def test_token_mean_of_a_single_completion_token_is_its_weighted_loss() -> None:
    log_ratio = torch.tensor([[0.3, 0.0]])
    mask = torch.tensor([[True, False]])
    per_token_loss = torch.tensor([[2.0, 7.0]])
    loss, stats = apply_fipo(per_token_loss, log_ratio, mask, torch.ones(1), reduction='token_mean')
    assert float(loss) == pytest.approx(2.0 * 1.2)  # exp(0.3) > 1.2: clipped to the default high bound


def test_on_policy_equals_plain_dapo() -> None:
    _, mask, advantages = _batch(seed=2)
    log_ratio = torch.zeros(mask.shape)
    per_token_loss = _clipped_loss(log_ratio, advantages)
    loss, stats = apply_fipo(per_token_loss, log_ratio, mask, advantages, reduction='token_mean')
    assert torch.equal(loss, per_token_loss[mask].sum() / mask.sum())
    assert stats.summary['influence_weight_mean'].item() == 1.0


def test_gradient_flows_through_the_loss_only() -> None:
    log_ratio, mask, advantages = _batch(seed=3)
    log_ratio.requires_grad_(True)
    loss, stats = apply_fipo(_clipped_loss(log_ratio, advantages), log_ratio, mask, advantages, reduction='sum')
    (grad, ) = torch.autograd.grad(loss, log_ratio)
    # The weight is a constant: d(sum w * l)/dx = w * dl/dx, with no term from d w / dx.
    reference = log_ratio.detach().requires_grad_(True)
    plain = torch.where(mask, _clipped_loss(reference, advantages) * stats.weight, 0.0).sum()
    (expected, ) = torch.autograd.grad(plain, reference)
    torch.testing.assert_close(grad, expected)
    assert not stats.weight.requires_grad


def test_sequence_level_loss_and_half_precision() -> None:
    log_ratio, mask, advantages = _batch(seed=4)
    sequence_loss = torch.randn(4, 1).to(torch.bfloat16)
    loss, stats = apply_fipo(sequence_loss, log_ratio, mask, advantages)
    assert loss.shape == log_ratio.shape and loss.dtype == torch.float32
    torch.testing.assert_close(loss, sequence_loss.float() * stats.weight)


@pytest.mark.parametrize('shape', [(4, 8), (3, 9), (4, 9, 1)])
def test_rejects_a_loss_that_does_not_match_the_log_ratio(shape: tuple[int, ...]) -> None:
    log_ratio, mask, advantages = _batch()
    with pytest.raises(ValueError, match='per_token_loss'):
        apply_fipo(torch.zeros(shape), log_ratio, mask, advantages)


def test_rejects_an_unknown_reduction() -> None:
    log_ratio, mask, advantages = _batch()
    with pytest.raises(ValueError, match='reduction'):
        apply_fipo(torch.zeros_like(log_ratio), log_ratio, mask, advantages, reduction='mean')  # type: ignore[arg-type]


def test_custom_loop_example_runs_and_fipo_acts_on_reuse_only(capsys: pytest.CaptureFixture[str]) -> None:
    main = runpy.run_path(str(EXAMPLE), run_name='example')['main']
    history = main(rollouts=3, iterations=2)
    assert len(history) == 6 and 'reward' in capsys.readouterr().out
    for record in history:
        assert all(torch.isfinite(torch.tensor(value)) for value in record.values())
        if record['iteration'] == 0:  # first pass over a rollout: on-policy, FIPO == DAPO
            assert record['fipo/influence_weight_mean'] == 1.0 and record['fipo/future_kl_mean'] == 0.0
        else:  # reused after an optimizer step: the weights move, within the high-only clip [1, 1.2]
            assert record['fipo/influence_weight_mean'] > 1.0
            assert record['fipo/influence_weight_max'] <= 1.2 + 1e-6
