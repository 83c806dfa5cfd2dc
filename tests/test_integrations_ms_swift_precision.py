"""ms-swift's loss paths under ``torch.autocast`` (bf16, fp16): the native hook's adapter on 4.2.2+ and the
legacy path's reweighted DAPO loss on 3.11 - 4.2.1, on the installed trainer classes. transformers 4.x's
CPU AMP runs ms-swift's ``compute_loss`` inside autocast; the weights must be the float32 ones."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import need, only_where
from reference import random_inputs

from swift_fipo.integrations.ms_swift import hooks as ms_swift
from swift_fipo.integrations.ms_swift.layout import module_path, native_fipo_installed

pytestmark = pytest.mark.ms_swift
need('swift', 'ms-swift')
HALF = [torch.bfloat16, torch.float16]
NATIVE = native_fipo_installed()


@only_where(NATIVE, 'this ms-swift predates native FIPO (4.2.2): no _compute_fipo_influence to adapt')
@pytest.mark.parametrize('dtype', HALF)
@pytest.mark.parametrize('length', [30, 700])
def test_native_adapter_under_autocast_equals_float32(dtype: torch.dtype, length: int) -> None:
    import importlib
    trainer_class = importlib.import_module(module_path('swift.rlhf_trainers.grpo_trainer')).GRPOTrainer
    ms_swift.install()
    log_ratio, mask, advantages = random_inputs(4, length, seed=length, scale=0.4)
    trainer = SimpleNamespace(args=SimpleNamespace(loss_type='fipo', fipo_decay_rate=32.0, fipo_clip_range=0.2,
                                                   fipo_clip_high_only=False, fipo_safety_threshold=1.3, delta=None))
    call = (trainer, log_ratio, torch.exp(log_ratio), advantages[:, None], mask)
    expected, expected_metrics = trainer_class._compute_fipo_influence(*call)
    with torch.autocast('cpu', dtype=dtype):
        weight, metrics = trainer_class._compute_fipo_influence(*call)
    assert weight.dtype == torch.float32 and (expected[mask] != 1).any()
    assert (weight - expected).abs().max().item() <= 1e-6
    assert (metrics['future_kl'] - expected_metrics['future_kl']).abs().max().item() <= 1e-6


@only_where(not NATIVE, 'the legacy path serves only ms-swift 3.11 - 4.2.1')
@pytest.mark.parametrize('dtype', HALF)
def test_legacy_loss_under_autocast_equals_float32(dtype: torch.dtype) -> None:
    from test_integrations_ms_swift_legacy import loss_inputs, make_batch, make_trainer
    batch = make_batch(seed=11)
    results = []
    for autocast in (False, True):
        logps = batch['logps'].clone().requires_grad_(True)
        trainer = make_trainer('fipo', logps, batch['entropies'])
        with torch.autocast('cpu', dtype=dtype, enabled=autocast):
            loss, _ = trainer._compute_loss_and_metrics(None, loss_inputs(batch))
        (gradient,) = torch.autograd.grad(loss.float(), logps)
        results.append((loss.detach().float(), gradient, trainer._metrics['train']['fipo/influence_weight_max'][-1]))
    (loss, gradient, high), (half_loss, half_gradient, half_high) = results
    assert high > 1  # off-policy: the weights moved
    assert half_high == pytest.approx(high, abs=1e-6)
    assert torch.allclose(half_loss, loss, rtol=1e-6, atol=1e-6)
    assert torch.allclose(half_gradient, gradient, rtol=1e-6, atol=1e-6)
