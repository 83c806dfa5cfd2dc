"""FIPO in OpenRLHF (``--actor.policy_loss_type fipo``): its real ``PolicyLoss``, its real command line, its
real actor (``PolicyModelActor`` building the DeepSpeed engine and ``ActorPPOTrainer``) training on CPU.
Runs against the installed OpenRLHF (scripts/suites/openrlhf-0.11.2.sh); not collected where OpenRLHF is
not installed.

Faked, because it cannot run on this machine: vLLM (CUDA wheels only; ``tests/openrlhf_cpu/vllm`` is an
importable stand-in that refuses to build an engine), flash-attn's CUDA extension (the suite installs
flash-attn's Python part and an empty ``flash_attn_2_cuda``; nothing here calls a kernel), Ray (the actor's
body runs in a test process) and the CUDA calls OpenRLHF makes unconditionally (tests/openrlhf_cpu/actor_step.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import REPO, need

need('openrlhf')  # not collected without OpenRLHF; where it is installed, an import error fails

CPU_HELPERS = REPO / 'tests' / 'openrlhf_cpu'
if importlib.util.find_spec('vllm') is None:  # OpenRLHF's trainer modules import vLLM at module level
    sys.path.insert(0, str(CPU_HELPERS))

from openrlhf.models import Actor  # noqa: E402
from openrlhf.models import loss as openrlhf_loss  # noqa: E402
from openrlhf.trainer.ray import ppo_actor  # noqa: E402
from reference import brute_fipo_weight, random_inputs  # noqa: E402

from swift_fipo import FIPOConfig  # noqa: E402
from swift_fipo.config import PRESETS  # noqa: E402
from swift_fipo.integrations.openrlhf import arguments as fipo_arguments  # noqa: E402
from swift_fipo.integrations.openrlhf import hooks, layout  # noqa: E402
from swift_fipo.integrations.openrlhf.loss import FIPOPolicyLoss, metrics_of  # noqa: E402
from swift_fipo.integrations.patches import is_patch, original_of  # noqa: E402

pytestmark = pytest.mark.openrlhf

PolicyLoss = openrlhf_loss.PolicyLoss
TINY_BUILDER = REPO / 'examples' / 'tiny' / 'build_tiny_model.py'


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(CPU_HELPERS), os.environ.get('PYTHONPATH', '')]))
    env = {**os.environ, 'PYTHONPATH': path, **extra}
    env.pop('SWIFT_FIPO_DISABLE', None)
    return env


@pytest.fixture(autouse=True, scope='module')
def unhooked_afterwards():
    """This process's OpenRLHF (and argparse) as it was, once the module's tests are done."""
    yield
    hooks.uninstall()


@pytest.fixture(autouse=True)
def hooked(unhooked_afterwards):
    """Every test starts with OpenRLHF hooked (the explicit route)."""
    hooks.install()


# ----------------------------------------------------------------------------------------------------------
# The loss: OpenRLHF's own PolicyLoss
# ----------------------------------------------------------------------------------------------------------

def batch(seed: int, off_policy: bool, batch_size: int = 6, length: int = 40, spikes: bool = False,
          dtype: torch.dtype = torch.float32):
    """(log_probs leaf, old_log_probs, token advantages [B, A], action mask, rollout log-probs)."""
    log_ratio, mask, advantages = random_inputs(batch_size, length, seed=seed, scale=0.3)
    generator = torch.Generator().manual_seed(seed + 100)
    if spikes:  # ratios past the dual clip 10 and the safety thresholds, so every safeguard fires
        draw = torch.rand(batch_size, length, generator=generator)
        log_ratio = torch.where(draw < 0.04, log_ratio + 3.0, log_ratio)
        advantages[0] = -abs(float(advantages[0])) - 0.1
        mask[0, :4] = True
        log_ratio[0, 1:3] = 3.0
    old = -torch.rand(batch_size, length, generator=generator) * 3 - 0.05
    new = (old + log_ratio) if off_policy else old.clone()
    rollout = old + 0.05 * torch.randn(batch_size, length, generator=generator)
    token_advantages = advantages[:, None].expand(batch_size, length) * mask  # OpenRLHF's [B, A] advantages
    return (new.to(dtype).requires_grad_(), old.to(dtype), token_advantages.to(dtype).contiguous(), mask,
            rollout.to(dtype))


def loss_and_grad(loss_fn, new, old, advantages, mask, rollout=None, **batch_info):
    leaf = new.detach().clone().requires_grad_()
    out = loss_fn(leaf, old, advantages, action_mask=mask, rollout_log_probs=rollout, **batch_info)
    out[0].backward()
    return out, leaf.grad


AGGREGATION = [pytest.param(dict(token_level_loss=True), id='token-mean'),
               pytest.param(dict(token_level_loss=False), id='seq-mean-token-mean')]
BATCH_INFO = [pytest.param({}, id='micro-batch'),
              pytest.param(dict(dp_size=2, batch_num_tokens=300.0, global_batch_size=12.0), id='global-counts')]


@pytest.mark.parametrize('info', BATCH_INFO)
@pytest.mark.parametrize('aggregation', AGGREGATION)
@pytest.mark.parametrize('correction', ['off', 'token', 'seq'])
@pytest.mark.parametrize('dual_clip', [None, 3.0])
def test_first_pass_equals_openrlhfs_ppo_loss_and_gradient(dual_clip, correction, aggregation, info):
    new, old, advantages, mask, rollout = batch(seed=1, off_policy=False)
    options = dict(dual_clip=dual_clip, is_correction_level=correction, **aggregation)
    stock, stock_grad = loss_and_grad(PolicyLoss(policy_loss_type='ppo', **options), new, old, advantages, mask,
                                      rollout, **info)
    fipo_loss = PolicyLoss(policy_loss_type='fipo', fipo_config=PRESETS['paper-32b'], **options)
    fipo, fipo_grad = loss_and_grad(fipo_loss, new, old, advantages, mask, rollout, **info)
    assert fipo_loss.last_fipo_stats is not None  # FIPO ran, and on-policy changed nothing
    assert float(fipo_loss.last_fipo_stats.summary['influence_weight_mean']) == 1.0
    for mine, theirs in zip(fipo, stock, strict=False):
        assert (mine is None and theirs is None) or torch.equal(mine, theirs)
    assert torch.equal(fipo_grad, stock_grad)


def _reference_weight(config: FIPOConfig, new: torch.Tensor, old: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    options = {field.name: getattr(config, field.name) for field in dataclasses.fields(FIPOConfig)}
    log_ratio = new.double() - old.double()
    # OpenRLHF's ppo ratio: the log-ratio clamped into [-20, 20] before exp().
    ratio = log_ratio.clamp(-20.0, 20.0).exp()
    weight, _, _ = brute_fipo_weight(log_ratio, mask, advantages.double(), ratio=ratio, **options)
    return weight


@pytest.mark.parametrize('aggregation', AGGREGATION)
@pytest.mark.parametrize('preset', ['swift', 'paper-32b', 'paper-7b'])
def test_off_policy_follows_the_float64_reference(preset, aggregation):
    new, old, advantages, mask, _ = batch(seed=2, off_policy=True, spikes=True)
    dual_clip = PRESETS[preset].delta  # None for swift; 10 for the paper presets
    fipo_loss = PolicyLoss(policy_loss_type='fipo', dual_clip=dual_clip, fipo_config=PRESETS[preset], **aggregation)
    (loss, *_), grad = loss_and_grad(fipo_loss, new, old, advantages, mask)
    # Reference: OpenRLHF's ppo loss in float64 with A x (float64 brute-force weight).
    weight = _reference_weight(fipo_loss.fipo_config, new, old, advantages, mask)
    (expected, *_), expected_grad = loss_and_grad(PolicyLoss(policy_loss_type='ppo', dual_clip=dual_clip,
                                                             **aggregation),
                                                  new.double(), old.double(), advantages.double() * weight, mask)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-5, atol=1e-7)
    summary = fipo_loss.last_fipo_stats.summary
    assert float(summary['influence_weight_max']) > 1.0  # really off-policy
    if preset != 'swift':
        assert float(summary['dropped_response_ratio']) > 0 and float(summary['safety_fired_ratio']) > 0
        assert float(grad[0].abs().sum()) == 0.0  # the dropped response adds nothing


def test_bf16_log_probs_under_cpu_autocast_keep_the_float32_weights():
    """OpenRLHF's actor runs in bf16; the weights are still the float32 maths (gamma not rounded)."""
    new, old, advantages, mask, _ = batch(seed=3, off_policy=True)
    fipo_loss = PolicyLoss(policy_loss_type='fipo')
    with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
        loss, *_ = fipo_loss(new.bfloat16(), old.bfloat16(), advantages.bfloat16(), action_mask=mask)
    assert torch.isfinite(loss)
    stats = fipo_loss.last_fipo_stats
    expected = _reference_weight(fipo_loss.fipo_config, new.bfloat16(), old.bfloat16(), advantages, mask)
    assert stats.weight.dtype == torch.float32
    torch.testing.assert_close(stats.weight.double(), expected, rtol=1e-5, atol=1e-6)


def test_dual_clip_is_fipos_delta():
    loss = PolicyLoss(policy_loss_type='fipo', dual_clip=5.0, fipo_config=FIPOConfig(delta=None))
    assert loss.fipo_config.delta == 5.0 and loss.dual_clip == 5.0 and loss.policy_loss_type == 'ppo'
    assert PolicyLoss(policy_loss_type='fipo').fipo_config == FIPOConfig()
    with pytest.raises(ValueError, match="fipo_config is for policy_loss_type='fipo'"):
        PolicyLoss(policy_loss_type='gspo', fipo_config=FIPOConfig())


def test_fipo_policy_loss_needs_no_patch():
    new, old, advantages, mask, _ = batch(seed=4, off_policy=True)
    patched, _ = loss_and_grad(PolicyLoss(policy_loss_type='fipo', dual_clip=4.0), new, old, advantages, mask)
    hooks.uninstall()
    assert not is_patch(PolicyLoss.forward)
    plain, _ = loss_and_grad(FIPOPolicyLoss(dual_clip=4.0), new, old, advantages, mask)
    stock, _ = loss_and_grad(PolicyLoss(dual_clip=4.0), new, old, advantages, mask)
    assert torch.equal(plain[0], patched[0]) and not torch.equal(plain[0], stock[0])
    with pytest.raises(ValueError, match="policy_loss_type must be 'fipo'"):
        FIPOPolicyLoss(policy_loss_type='gspo')


def test_metrics_follow_openrlhfs_reduction_convention():
    new, old, advantages, mask, _ = batch(seed=2, off_policy=True, spikes=True)
    fipo_loss = PolicyLoss(policy_loss_type='fipo', dual_clip=10.0, fipo_config=PRESETS['paper-32b'])
    fipo_loss(new, old, advantages, action_mask=mask)
    stats = fipo_loss.last_fipo_stats
    metrics, weights = metrics_of(stats)
    # 0-dim: OpenRLHF weights them by action tokens (token means); [B]: by samples (the drop is per response).
    for key, value in metrics.items():
        assert weights[key] == ('token' if value.dim() == 0 else 'sample'), key
        assert not value.requires_grad
    assert metrics['fipo_influence_weight_mean'] == stats.summary['influence_weight_mean']
    assert metrics['fipo_dropped_response_ratio'].mean() == stats.summary['dropped_response_ratio']
    assert not {'fipo_influence_weight_min', 'fipo_influence_weight_max', 'fipo_neg_adv_ratio_p99'} & set(metrics)
    # A micro-batch without action tokens: weighted 0 by OpenRLHF, so it must not be NaN (NaN x 0 is NaN).
    fipo_loss(new, old, advantages, action_mask=torch.zeros_like(mask))
    empty, _ = metrics_of(fipo_loss.last_fipo_stats)
    assert all(torch.isfinite(value).all() for value in empty.values())
    # One action token is a real micro-batch: its own values, not the empty one's zeros.
    single = torch.zeros_like(mask)
    single[0, 1] = True
    fipo_loss(new, old, advantages, action_mask=single)
    one, _ = metrics_of(fipo_loss.last_fipo_stats)
    assert one['fipo_influence_weight_mean'] == fipo_loss.last_fipo_stats.summary['influence_weight_mean'] > 0


class _MicroBatch:
    """One micro-batch as ppo_train hands it to training_step: responses of one length, some dropped."""

    def __init__(self, responses: int, length: int, dropped: int) -> None:
        self.old = torch.full((responses, 40), -1.0)
        self.new = self.old.clone()
        self.mask = torch.arange(40)[None, :] < length
        self.mask = self.mask.expand(responses, 40).contiguous()
        self.advantages = torch.ones(responses, 40)
        for row in range(dropped):  # two negative-advantage tokens past the dual clip 10: dropped
            self.advantages[row] = -1.0
            self.new[row, :2] = self.old[row, :2] + 3.0
        self.advantages = self.advantages * self.mask

    def to_device(self, device: Any) -> None:
        pass


def _ppo_train_status(micro_batches: list, peer_steps: list | None = None) -> tuple[dict, list]:
    """OpenRLHF's own ``ActorPPOTrainer.ppo_train`` over ``micro_batches`` (one epoch), with swift-fipo's
    hooked training_step around a stand-in for the model step (it calls the real hooked PolicyLoss and returns
    the status OpenRLHF's training_step returns). ``peer_steps``: what another rank contributes to each step's
    all_reduce (a sum, as DeepSpeed's strategy does). Returns ppo_train's status and this rank's contributions."""
    loss_fn = PolicyLoss(policy_loss_type='fipo', dual_clip=10.0)
    loss_fn.fipo_config = FIPOConfig.from_preset('paper-32b')
    contributions: list = []

    def all_reduce(data: dict, op: str = 'mean') -> dict:
        contributions.append(dict(data))
        peer = peer_steps[len(contributions) - 1] if peer_steps is not None else {}
        return {key: value + peer.get(key, 0.0) for key, value in data.items()}

    def model_step(self, experience, kl_ctl, step, loss_batch_info=None):
        loss = self.actor_loss_fn(experience.new, experience.old, experience.advantages,
                                  action_mask=experience.mask)[0]
        return {'metrics': {'policy_loss': loss.detach()}, 'weights': {'policy_loss': 'token'},
                'num_samples': float(experience.mask.shape[0]), 'num_action_tokens': float(experience.mask.sum())}

    class Buffer(list):
        sample_batch_size = 1

        @staticmethod
        def collate_fn(items):
            return items[0]

        def setup_dynamic_batch(self, strategy):
            pass

    trainer_class = type('Trainer', (), {'training_step': hooks._reporting_training_step(model_step)})
    trainer = trainer_class()
    trainer.args = SimpleNamespace(train=SimpleNamespace(dynamic_batch_enable=True),
                                   ds=SimpleNamespace(tensor_parallel_size=1))
    trainer.strategy = SimpleNamespace(ring_attn_group=None, is_rank_0=lambda: False, all_reduce=all_reduce)
    trainer.replay_buffer, trainer.dataloader_pin_memory = Buffer(micro_batches), False
    trainer.max_epochs, trainer.actor_loss_fn = 1, loss_fn
    status = original_of(ppo_actor.ActorPPOTrainer.ppo_train)(trainer, 0.0)
    return status, contributions


def test_the_dropped_response_ratio_is_a_share_of_responses_over_micro_batches_and_ranks(monkeypatch):
    """Through OpenRLHF's own ppo_train reduction: 2 of 8 responses dropped, both in short micro-batches, gives
    0.25, not a token-weighted share (6 / 172 tokens) nor a mean of per-micro-batch shares (0.375)."""
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 'cpu')  # ppo_train asks for the CUDA device
    peer = [_MicroBatch(2, length=3, dropped=1), _MicroBatch(2, length=40, dropped=0)]
    mine = [_MicroBatch(1, length=3, dropped=1), _MicroBatch(3, length=40, dropped=0)]
    _, peer_steps = _ppo_train_status(peer)
    status, _ = _ppo_train_status(mine, peer_steps)
    assert status['fipo_dropped_response_ratio'] == pytest.approx(2 / 8)
    # The token means are token-weighted the same way: here every kept token has weight 1.
    assert status['fipo_influence_weight_mean'] < 1.0


def test_packed_samples_repadded_by_the_actor_never_cross_a_sequence_boundary(tmp_path):
    """With ``--ds.packing_samples`` OpenRLHF's Actor runs the model on one packed row and pads the log-probs
    back to one row per sample (``gather_and_pad_tensor``) before the loss: each row's Future-KL sees only
    its own sample, so its weights are those of the sample alone, whatever its neighbours are."""
    subprocess.run([sys.executable, str(TINY_BUILDER), str(tmp_path)], check=True, capture_output=True,
                   env={**os.environ, 'SWIFT_FIPO_DISABLE': '1'})
    packed = Actor(str(tmp_path / 'model'), attn_implementation='sdpa', param_dtype='bf16', packing_samples=True)
    padded = Actor(str(tmp_path / 'model'), attn_implementation='sdpa', param_dtype='bf16', packing_samples=False)
    generator = torch.Generator().manual_seed(0)
    batch_size, prompt, response = 4, 5, 16
    sequences = torch.randint(5, 40, (batch_size, prompt + response), generator=generator)
    lengths = torch.tensor([16, 7, 12, 3])
    action_mask = torch.arange(response)[None, :] < lengths[:, None]
    attention_mask = torch.cat([torch.ones(batch_size, prompt, dtype=torch.long), action_mask.long()], dim=1)
    attention_mask[1, :2] = 0  # left padding
    with torch.no_grad():
        old = packed(sequences, action_mask, attention_mask=attention_mask).float()
        assert torch.allclose(old, padded(sequences, action_mask, attention_mask=attention_mask).float(), atol=0.05)
        for parameter in packed.parameters():  # another policy: off-policy log-probs
            parameter.add_(torch.randn(parameter.shape, generator=generator).to(parameter.dtype) * 0.02)
        new = packed(sequences, action_mask, attention_mask=attention_mask).float()
    advantages = torch.tensor([1.0, -0.5, 0.7, -1.2])[:, None] * action_mask
    fipo_loss = PolicyLoss(policy_loss_type='fipo', fipo_config=FIPOConfig(clip_range=None))  # weights unclipped
    fipo_loss(new, old, advantages, action_mask=action_mask)
    together = fipo_loss.last_fipo_stats
    assert float(together.future_kl.abs().max()) > 0  # really off-policy
    for row in range(batch_size):
        fipo_loss(new[row:row + 1], old[row:row + 1], advantages[row:row + 1], action_mask=action_mask[row:row + 1])
        alone = fipo_loss.last_fipo_stats
        # Equal up to float32 rounding (a batch of one is summed in another blocking).
        torch.testing.assert_close(together.weight[row:row + 1], alone.weight, rtol=1e-6, atol=1e-6)
        # Past a sample's end nothing is carried over from the next one.
        assert float(together.future_kl[row, int(lengths[row]):].abs().sum()) == 0.0
    # What a Future-KL over the packed stream would have given instead: the next sample's log-ratios leak into
    # each sample's tail, far beyond the tolerance above.
    stream_new = torch.cat([new[row, :int(lengths[row])] for row in range(batch_size)])[None]
    stream_old = torch.cat([old[row, :int(lengths[row])] for row in range(batch_size)])[None]
    stream_advantages = torch.cat([advantages[row, :int(lengths[row])] for row in range(batch_size)])[None]
    fipo_loss(stream_new, stream_old, stream_advantages, action_mask=torch.ones_like(stream_new, dtype=torch.bool))
    leaked = fipo_loss.last_fipo_stats.weight[0, :int(lengths[0])]
    assert float((leaked - together.weight[0, :int(lengths[0])]).abs().max()) > 1e-3


# ----------------------------------------------------------------------------------------------------------
# The hooks
# ----------------------------------------------------------------------------------------------------------

def _targets():
    return [(PolicyLoss, '__init__'), (PolicyLoss, 'forward'), (ppo_actor.ActorPPOTrainer, '__init__'),
            (ppo_actor.ActorPPOTrainer, 'training_step'), (argparse.ArgumentParser, 'parse_known_args')]


def test_install_is_idempotent_and_uninstall_restores_openrlhf_exactly():
    originals = [original_of(vars(owner)[name]) for owner, name in _targets()]
    report = hooks.install()
    assert report == {layout.LOSS_MODULE: True, layout.ACTOR_MODULE: True, 'argparse': True}
    wrapped = [vars(owner)[name] for owner, name in _targets()]
    assert all(is_patch(value) for value in wrapped)
    hooks.install()
    assert [vars(owner)[name] for owner, name in _targets()] == wrapped  # not wrapped twice
    hooks.uninstall()
    assert [vars(owner)[name] for owner, name in _targets()] == originals
    assert not any(is_patch(vars(owner)[name]) for owner, name in _targets())


def test_openrlhf_is_in_the_table_of_hosts():
    """The .pth activation hooks OpenRLHF's processes only through the table: it must stay there."""
    from swift_fipo.integrations.hosts import HOSTS
    [host] = [host for host in HOSTS if host.name == layout.NAME]
    assert {layout.LOSS_MODULE, layout.ACTOR_MODULE} <= set(host.watched)


def test_the_argument_hook_goes_in_with_the_actor_module_whatever_the_program(monkeypatch):
    """A copy of train_ppo_ray.py under another name is served as the installed program is (before: only a
    program under openrlhf/cli, so the copy said "invalid choice: 'fipo'")."""
    hooks.uninstall()
    main = ModuleType('__main__')
    main.__spec__, main.__file__ = None, '/home/user/my_train_ppo_ray.py'
    monkeypatch.setitem(sys.modules, '__main__', main)
    assert hooks.patch_module(ppo_actor) == {layout.ACTOR_MODULE: True, 'argparse': True}
    assert is_patch(vars(argparse.ArgumentParser)['parse_known_args'])


def test_the_argument_hook_leaves_other_parsers_alone():
    parser = argparse.ArgumentParser()
    parser.add_argument('--actor.fipo.decay_rate', type=float, default=3.0)  # not OpenRLHF's parser
    namespace = parser.parse_args([])
    assert vars(namespace) == {'actor.fipo.decay_rate': 3.0}


def test_a_loss_without_the_linear_advantage_is_not_hooked():
    module = ModuleType(layout.LOSS_MODULE)

    class ChangedPolicyLoss(torch.nn.Module):  # a later OpenRLHF whose loss reads A non-linearly
        def __init__(self, clip_eps_low=0.2, clip_eps_high=0.2, dual_clip=None, token_level_loss=True,
                     policy_loss_type='ppo'):
            super().__init__()

        def forward(self, log_probs, old_log_probs, advantages, action_mask=None, rollout_log_probs=None):
            return (advantages.exp() * log_probs).mean()

    module.PolicyLoss = ChangedPolicyLoss
    report = hooks.patch_module(module)
    assert report == {layout.LOSS_MODULE: "not hooked: PolicyLoss.forward no longer contains 'ratio * advantages'"}
    assert not is_patch(vars(ChangedPolicyLoss)['forward'])


def test_a_trainer_whose_loss_is_not_hooked_stops_before_training():
    strategy = SimpleNamespace(args=SimpleNamespace(actor=SimpleNamespace(policy_loss_type='fipo')))
    trainer = ppo_actor.ActorPPOTrainer.__new__(ppo_actor.ActorPPOTrainer)

    def stock_init(self, strategy, *rest, **kwargs):  # builds a loss without FIPO, as an unhooked PolicyLoss would
        self.args = strategy.args
        self.actor_loss_fn = torch.nn.Module()

    with pytest.raises(RuntimeError, match='PolicyLoss in this process is not hooked'):
        hooks._configuring_init(stock_init)(trainer, strategy)


def test_arguments_made_in_python_resolve_like_the_command_line():
    """A trainer built from arguments made in Python (no command line, no attached settings) resolves its
    FIPO config from ``args.actor.fipo`` and ``args.actor.dual_clip``, with the same checks."""
    def arguments(**fipo):
        return SimpleNamespace(actor=SimpleNamespace(policy_loss_type='fipo', dual_clip=5.0, eps_clip=0.2,
                                                     eps_clip_low_high=(0.2, 0.28), fipo=SimpleNamespace(**fipo)))

    config = fipo_arguments.config_of_arguments(arguments(preset='paper-32b', decay_rate=8.0))
    assert config == dataclasses.replace(PRESETS['paper-32b'], decay_rate=8.0, delta=5.0)
    with pytest.raises(ValueError, match=r'--actor.fipo.filter_threshold must be > 1 \+ '
                                         r'--actor.eps_clip_low_high\[1\] = 1.28'):
        fipo_arguments.config_of_arguments(arguments(filter_threshold=1.1))
    with pytest.raises(ValueError, match='--actor.fipo.safety_threshold must be None, or a number in'):
        fipo_arguments.config_of_arguments(arguments(safety_threshold=-1.0))


@pytest.mark.parametrize('loss_type', ['ppo', 'gspo'])
def test_other_loss_types_run_openrlhfs_code_unchanged(loss_type):
    new, old, advantages, mask, rollout = batch(seed=5, off_policy=True)
    loss = PolicyLoss(policy_loss_type=loss_type, dual_clip=3.0)
    patched = loss(new, old, advantages, action_mask=mask, rollout_log_probs=rollout)
    stock = original_of(PolicyLoss.forward)(loss, new, old, advantages, action_mask=mask, rollout_log_probs=rollout)
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(patched, stock, strict=False))
    assert getattr(loss, 'last_fipo_stats', None) is None


def test_doctor_reports_the_openrlhf_hooks():
    diagnosis = hooks.diagnose()
    text = '\n'.join(diagnosis.lines)
    assert f'{layout.LOSS_MODULE}: PolicyLoss takes --actor.policy_loss_type fipo' in text
    assert f'{layout.ACTOR_MODULE}: ActorPPOTrainer hands its loss the FIPO settings' in text
    assert diagnosis.verdicts == [('openrlhf `--actor.policy_loss_type fipo`', True)]
    hooks.uninstall()
    unhooked = hooks.diagnose()
    assert unhooked.verdicts == [('openrlhf `--actor.policy_loss_type fipo`', False)]
    assert f'{layout.LOSS_MODULE}: not hooked:' in '\n'.join(unhooked.lines)


def test_interpreter_start_imports_neither_torch_nor_openrlhf():
    code = ('import sys; import swift_fipo.integrations.openrlhf, swift_fipo.integrations.openrlhf.layout; '
            'print(sorted(m for m in ("torch", "openrlhf", "argparse") if m in sys.modules))')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, env=_env())
    assert 'torch' not in result.stdout and 'openrlhf' not in result.stdout, result.stdout


# ----------------------------------------------------------------------------------------------------------
# The command line: OpenRLHF's own train_ppo_ray parser and checks
# ----------------------------------------------------------------------------------------------------------

BASE_ARGV = ['--algo.advantage.estimator', 'group_norm', '--rollout.n_samples_per_prompt', '4',
             '--reward.remote_url', 'http://localhost:1', '--actor.num_gpus_per_node', '1',
             '--rollout.batch_size', '2', '--train.batch_size', '8', '--train.max_epochs', '1']
FIPO = ['--actor.policy_loss_type', 'fipo']

CASES = {
    'default': FIPO,
    'preset': FIPO + ['--actor.fipo.preset', 'paper-7b', '--actor.fipo.safety_threshold', '5'],
    'preset_own_dual_clip': FIPO + ['--actor.fipo.preset', 'paper-32b', '--actor.dual_clip', '4'],
    'unclipped': FIPO + ['--actor.fipo.clip_range', 'none', '--actor.fipo.clip_high_only', 'false',
                         '--actor.fipo.unclipped_weight_cap', '8'],
    'epochs': FIPO + ['--train.max_epochs', '2'],
    'mini_batches': FIPO + ['--train.batch_size', '4'],
    'gspo_with_options': ['--actor.policy_loss_type', 'gspo', '--actor.fipo.decay_rate', '8'],
    'ppo': ['--actor.policy_loss_type', 'ppo'],
    'bad_decay': FIPO + ['--actor.fipo.decay_rate', '0'],
    'bad_clip': FIPO + ['--actor.fipo.clip_range', '-1'],
    'bad_symmetric_clip': FIPO + ['--actor.fipo.clip_high_only', 'false', '--actor.fipo.clip_range', '1.5'],
    'bad_bool': FIPO + ['--actor.fipo.sequence_drop', 'maybe'],
    'bad_preset': FIPO + ['--actor.fipo.preset', 'paper-70b'],
    'bad_drop': FIPO + ['--actor.fipo.sequence_drop', 'true'],
    'dual_clip_as_drop_c': FIPO + ['--actor.fipo.sequence_drop', 'true', '--actor.dual_clip', '5'],
    'dual_clip_inside_ppo_clip': FIPO + ['--actor.dual_clip', '1.1'],
    'filter_inside_ppo_clip': FIPO + ['--actor.eps_clip_low_high', '0.2', '0.28', '--actor.fipo.filter_threshold',
                                      '1.25'],
    'delta': FIPO + ['--actor.fipo.delta', '3'],
    'unknown': FIPO + ['--actor.fipo.decay', '8', '--actor.fipo.bogus', '3'],
    'gspo_fipo_choice': ['--actor.policy_loss_type', 'fipo_gspo'],
}
# (exit status 2, the message argparse prints after "error: ")
REFUSALS = {
    'bad_decay': '--actor.fipo.decay_rate must be a number in [1/126, 2**24]',
    'bad_clip': '--actor.fipo.clip_range must be None, or a number in [0,',
    'bad_symmetric_clip': '--actor.fipo.clip_range must be [0, 1) when clip_high_only is False',
    'bad_bool': "argument --actor.fipo.sequence_drop: expected true or false; got 'maybe'",
    'bad_preset': "argument --actor.fipo.preset: expected one of swift, paper-32b, paper-7b; got 'paper-70b'",
    'bad_drop': ('--actor.fipo.sequence_drop must be False unless --actor.dual_clip or --actor.fipo.filter_threshold '
                 'is set'),
    'dual_clip_inside_ppo_clip': '--actor.dual_clip must be > 1 + --actor.eps_clip = 1.2',
    'filter_inside_ppo_clip': '--actor.fipo.filter_threshold must be > 1 + --actor.eps_clip_low_high[1] = 1.28',
    'delta': '--actor.fipo.delta is not an option: under OpenRLHF, FIPO uses the dual clip --actor.dual_clip',
    'unknown': 'unknown FIPO option --actor.fipo.bogus; known: --actor.fipo.preset, --actor.fipo.decay_rate',
    'gspo_fipo_choice': "argument --actor.policy_loss_type: invalid choice: 'fipo_gspo'",
}


RECIPE = REPO / 'examples' / 'openrlhf' / 'run_fipo.sh'


def _recipe_argv(folder: Path) -> list[str]:
    """The OpenRLHF options the GPU recipe passes, from running it with ``python3`` recording its argv."""
    shims = folder / 'bin'
    shims.mkdir()
    (shims / 'python3').write_text('#!/bin/sh\nprintf \'%s\\n\' "$@" > "$RECIPE_RECORD"\n')
    (shims / 'python3').chmod(0o755)
    env = {**os.environ, 'PATH': f'{shims}{os.pathsep}{os.environ["PATH"]}', 'RECIPE_RECORD': str(folder / 'argv')}
    subprocess.run(['bash', str(RECIPE)], check=True, env=env, cwd=folder, timeout=60)
    argv = (folder / 'argv').read_text().splitlines()
    assert argv[:2] == ['-m', layout.CLI_MODULE], argv[:2]
    return argv[2:]


@pytest.fixture(scope='module')
def command_lines(tmp_path_factory) -> dict[str, dict]:
    """Every case through OpenRLHF's real ``train_ppo_ray`` main block (one interpreter, the activation route),
    stopped where it would start Ray; see tests/openrlhf_cpu/openrlhf_cli.py. The last one is the GPU recipe."""
    folder = tmp_path_factory.mktemp('openrlhf_cli')
    cases = [BASE_ARGV + argv for argv in CASES.values()] + [_recipe_argv(folder)]
    (folder / 'cases.json').write_text(json.dumps(cases))
    result = subprocess.run([sys.executable, str(CPU_HELPERS / 'openrlhf_cli.py'), 'activation', '--cases',
                             str(folder / 'cases.json'), '--out', str(folder / 'out.json')],
                            capture_output=True, text=True, env=_env(), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(zip([*CASES, 'recipe'], json.loads((folder / 'out.json').read_text()), strict=False))


def test_the_gpu_recipe_parses_with_openrlhfs_parser_and_carries_the_paper_settings(command_lines):
    recipe = command_lines['recipe']
    assert recipe['status'] == 0 and recipe['warnings'] == [], recipe  # off-policy: 8 optimizer steps per rollout
    assert recipe['values']['settings'] == dataclasses.asdict(PRESETS['paper-7b'])
    assert recipe['values']['dual_clip'] == 10.0 and recipe['values']['eps_clip_low_high'] == [0.2, 0.28]
    text = RECIPE.read_text()
    assert text.startswith('#!/usr/bin/env bash') and 'set -euo pipefail' in text


def test_a_fipo_command_line_resolves_the_default_preset(command_lines):
    found = command_lines['default']
    assert found['status'] == 0 and found['values']['policy_loss_type'] == 'fipo'
    assert found['values']['settings'] == dataclasses.asdict(FIPOConfig())
    # The resolved values travel on the arguments as plain data (pickled to every Ray actor).
    assert found['values']['fipo'] == {'preset': 'swift', **{name: getattr(FIPOConfig(), name)
                                                            for name in fipo_arguments.OPTION_FIELDS}}


def test_presets_fill_what_was_not_given_and_explicit_options_win(command_lines):
    paper_7b = command_lines['preset']['values']
    assert paper_7b['settings'] == dataclasses.asdict(dataclasses.replace(PRESETS['paper-7b'], safety_threshold=5.0))
    assert paper_7b['dual_clip'] == 10.0  # the preset's dual clip c, on OpenRLHF's own option
    own = command_lines['preset_own_dual_clip']['values']
    assert own['dual_clip'] == 4.0 and own['settings']['delta'] == 4.0
    unclipped = command_lines['unclipped']['values']['settings']
    assert unclipped['clip_range'] is None and unclipped['clip_high_only'] is False
    assert unclipped['unclipped_weight_cap'] == 8.0


@pytest.mark.parametrize('case', sorted(REFUSALS))
def test_a_bad_command_line_is_refused_naming_the_option_and_its_range(command_lines, case):
    found = command_lines[case]
    assert found['status'] == 2 and found['values'] is None, found
    error = found['stderr'].strip().splitlines()[-1]
    assert error.startswith('train_ppo_ray.py: error: ') and REFUSALS[case] in error, error
    assert 'Traceback' not in found['stderr'] and not found['warnings']  # nothing else said about a refused run


def test_the_dual_clip_is_the_sequence_drops_c(command_lines):
    # Before: refused with "sequence_drop must be False unless delta or filter_threshold is set", although the
    # dual clip is that c here, and the delta the message named is itself refused under OpenRLHF.
    found = command_lines['dual_clip_as_drop_c']
    assert found['status'] == 0, found
    assert found['values']['settings'] == dataclasses.asdict(FIPOConfig(delta=5.0, sequence_drop=True))


def test_refusals_name_only_options_openrlhf_has(command_lines):
    for case in REFUSALS:
        error = command_lines[case]['stderr'].strip().splitlines()[-1]
        bare = [word for word in error.replace(',', ' ').split() if word in ('delta', 'filter_threshold')]
        assert not bare, (case, error)


def test_a_schedule_without_off_policy_updates_warns(command_lines):
    [warning] = command_lines['default']['warnings']
    assert 'FIPO is a no-op here: --train.max_epochs=1 and one optimizer step per rollout' in warning
    assert '--rollout.batch_size x --rollout.n_samples_per_prompt = 8 samples, --train.batch_size=8)' in warning
    assert command_lines['epochs']['warnings'] == [] and command_lines['mini_batches']['warnings'] == []


def test_fipo_options_with_another_loss_type_warn_and_change_nothing(command_lines):
    [warning] = command_lines['gspo_with_options']['warnings']
    assert "--actor.fipo.decay_rate set, but --actor.policy_loss_type is 'gspo': the FIPO options do nothing" in warning
    assert command_lines['gspo_with_options']['values']['settings'] is None
    ppo = command_lines['ppo']
    assert ppo['status'] == 0 and ppo['warnings'] == [] and ppo['values']['fipo'] is None
    assert ppo['values']['settings'] is None


@pytest.mark.parametrize('started', ['module', 'path', 'copy'])
def test_the_real_program_refuses_a_bad_value_without_a_traceback(started, tmp_path):
    """A fresh OpenRLHF process hooked by the .pth activation alone, as a user runs it: ``python -m``, the
    installed train_ppo_ray.py by its path, or a copy of it elsewhere. The FIPO refusal (not argparse's "invalid
    choice: 'fipo'") shows the hook was in; argparse's exit status and its two lines, no traceback."""
    program = Path(importlib.util.find_spec(layout.CLI_MODULE).origin)
    if started == 'copy':
        program = Path(shutil.copy(program, tmp_path / 'my_train_ppo_ray.py'))
    command = [sys.executable, '-m', layout.CLI_MODULE] if started == 'module' else [sys.executable, str(program)]
    result = subprocess.run(command + BASE_ARGV + FIPO + ['--actor.fipo.log_ratio_clamp', '100'],
                            capture_output=True, text=True, env=_env(), timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f'{program.name}: error: openrlhf: --actor.fipo.log_ratio_clamp must be None, or a number in (0, 88]')


def test_help_lists_the_fipo_options():
    result = subprocess.run([sys.executable, str(CPU_HELPERS / 'openrlhf_cli.py'), 'install', '--', '--help'],
                            capture_output=True, text=True, env=_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert '--actor.fipo.preset NAME' in result.stdout and '--actor.fipo.decay_rate X' in result.stdout
    assert '{ppo,gspo,fipo}' in result.stdout and '--actor.fipo.delta' not in result.stdout


# ----------------------------------------------------------------------------------------------------------
# OpenRLHF's actor, training on CPU
# ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def actor_runs(tmp_path_factory) -> dict[str, dict]:
    """The stock ppo loss and fipo, each through OpenRLHF's PolicyModelActor and ppo_train (two epochs over one
    rollout of 8 samples, 2 optimizer steps of 2 micro-batches per epoch), from the same weights and order."""
    folder = tmp_path_factory.mktemp('openrlhf_actor')
    subprocess.run([sys.executable, str(TINY_BUILDER), str(folder)], check=True, capture_output=True,
                   env={**os.environ, 'SWIFT_FIPO_DISABLE': '1'})
    runs = {}
    extensions = os.environ.get('TORCH_EXTENSIONS_DIR') or str(Path(sys.prefix) / 'torch_extensions')
    for loss_type, extra in (('ppo', []), ('fipo', ['--actor.fipo.preset', 'swift', '--actor.fipo.decay_rate', '16'])):
        out = folder / f'{loss_type}.json'
        result = subprocess.run([sys.executable, str(CPU_HELPERS / 'actor_step.py'), str(folder / 'model'), str(out),
                                 loss_type, *extra], capture_output=True, text=True, timeout=900, cwd=folder,
                                env=_env(DS_ACCELERATOR='cpu', TORCH_EXTENSIONS_DIR=extensions))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
        runs[loss_type] = json.loads(out.read_text())
    return runs


def test_the_actor_trains_with_fipo_in_bf16(actor_runs):
    fipo = actor_runs['fipo']
    # The settings the driver's command line resolved reached the actor's loss.
    assert fipo['loss_class'] == 'PolicyLoss' and fipo['fipo_config'] == repr(FIPOConfig(decay_rate=16.0))
    assert fipo['param_dtype'] == 'torch.bfloat16'
    assert len(fipo['steps']) == 8 and fipo['changed'] == fipo['parameters']  # every parameter trained
    assert 'fipo_influence_weight_mean' in fipo['status'] and 'fipo_dropped_response_ratio' in fipo['status']
    assert all(math.isfinite(value) for value in fipo['status'].values())


def test_the_actors_first_pass_is_ppo_and_later_steps_are_reweighted(actor_runs):
    ppo, fipo = actor_runs['ppo']['steps'], actor_runs['fipo']['steps']
    # Micro-batches 1 and 2 come before the first optimizer step: on-policy up to bf16 noise (the old log-probs
    # were scored in a batch of another shape, as OpenRLHF's experience maker does). The high-only weight clip
    # [1, 1.2] absorbs the negative part of that noise, not the positive part: weights within bf16 noise of 1 (never
    # below), and OpenRLHF's ppo loss to the same relative noise (docs/openrlhf.md says so).
    for step in (0, 1):
        assert abs(fipo[step]['fipo_future_kl_mean']) < 0.01
        assert 1.0 <= fipo[step]['fipo_influence_weight_mean'] < 1.0 + 1e-3
        assert fipo[step]['policy_loss'] == pytest.approx(ppo[step]['policy_loss'], rel=1e-2, abs=1e-6)
    # After it the policy has moved: Future-KL is non-zero, the weights and hence the losses differ.
    later = fipo[2:]
    assert any(abs(step['fipo_future_kl_mean']) > 0.1 for step in later)
    assert any(step['fipo_influence_weight_mean'] > 1.0 for step in later)
    assert any(mine['policy_loss'] != theirs['policy_loss'] for mine, theirs in zip(later, ppo[2:], strict=False))
    assert 'fipo_influence_weight_mean' not in ppo[0]  # the stock loss logs nothing of FIPO


# ----------------------------------------------------------------------------------------------------------
# The activation: every process OpenRLHF starts
# ----------------------------------------------------------------------------------------------------------

def test_a_ray_worker_gets_fipo_from_the_pth_activation():
    """OpenRLHF's actors are Ray workers, fresh interpreters: the .pth activation alone hooks them."""
    code = """
import json, sys
import ray
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)

@ray.remote
def probe():
    from openrlhf.models.loss import PolicyLoss
    from openrlhf.trainer.ray import ppo_actor
    from swift_fipo.integrations.patches import is_patch
    return [is_patch(vars(PolicyLoss)['forward']), is_patch(vars(ppo_actor.ActorPPOTrainer)['training_step'])]

print(json.dumps({'worker': ray.get(probe.remote()), 'driver_imported_openrlhf': 'openrlhf' in sys.modules}))
ray.shutdown()
"""
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {'worker': [True, True], 'driver_imported_openrlhf': False}


def test_the_refusals_docs_openrlhf_md_quotes_are_the_programs(command_lines):
    """docs/openrlhf.md quotes argparse's error lines (with ``...`` where it shortens one): each is the start of
    what the command line really printed for one of the cases."""
    page = (REPO / 'docs' / 'openrlhf.md').read_text().split('```')
    quoted = [line for block in page[1::2] for line in block.splitlines()
              if line.startswith('train_ppo_ray.py: error:')]
    printed = [found['stderr'].strip().splitlines()[-1] for found in command_lines.values() if found['status'] == 2]
    assert len(quoted) >= 3
    for line in quoted:
        head = line.split('(...)')[0].split('...')[0].rstrip()
        assert any(error.startswith(head) for error in printed), line


def test_install_hooks_the_loss_where_the_actor_module_cannot_be_imported(monkeypatch):
    """OpenRLHF's actor module imports vLLM at module level; without it the loss is still hooked."""
    hooks.uninstall()
    real_import = hooks.importlib.import_module

    def import_module(name: str, *args, **kwargs):
        if name == layout.ACTOR_MODULE:
            raise ModuleNotFoundError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(hooks.importlib, 'import_module', import_module)
    report = hooks.install()
    assert report == {layout.LOSS_MODULE: True,
                      layout.ACTOR_MODULE: "not imported (ModuleNotFoundError: No module named 'vllm')",
                      'argparse': True}
    assert is_patch(vars(PolicyLoss)['forward']) and not is_patch(vars(ppo_actor.ActorPPOTrainer)['training_step'])
