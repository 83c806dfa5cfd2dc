"""FIPO in upstream verl: the registered policy loss, its options in verl's Hydra config, and how the
registration reaches verl's processes. Runs against the installed verl (scripts/suites/verl.sh);
skipped where verl is not installed, except that SWIFT_FIPO_REQUIRE_VERL=1 (the verl suite) turns a
missing or broken verl into a failure."""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import need, only_where

verl = need('verl')  # not collected without verl; where verl is installed, an import error fails

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.trainer.ppo.utils import need_critic, need_reference_policy  # noqa: E402
from verl.utils.config import omega_conf_to_dataclass, validate_config  # noqa: E402
from verl.workers.config import ActorConfig, PolicyLossConfig  # noqa: E402

# verl 0.7 moved the loss call into ppo_loss (the engines' entry) and validate_config onto the driver;
# the oldest served release, 0.6.1, has neither, so the tests of those layers need 0.7+.
VERL_07 = tuple(int(part) for part in verl.__version__.split('.')[:2]) >= (0, 7)
if VERL_07:
    from tensordict import TensorDict  # noqa: E402
    from verl.utils import tensordict_utils as tu  # noqa: E402
    from verl.workers.utils.losses import ppo_loss  # noqa: E402
    from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding  # noqa: E402
needs_verl_07 = only_where(VERL_07, 'verl < 0.7: no ppo_loss, and validate_config runs in the TaskRunner')

from reference import authors_weight, brute_fipo_weight, random_inputs  # noqa: E402

from swift_fipo import FIPOConfig, compute_fipo_influence  # noqa: E402
from swift_fipo.integrations.messages import FIPOWarning  # noqa: E402
from swift_fipo.integrations.verl import hooks as fipo_verl  # noqa: E402

pytestmark = pytest.mark.verl

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / 'examples' / 'verl' / 'run_grpo_fipo.sh'
VERL_CONFIG_DIR = str(Path(core_algos.__file__).resolve().parents[1] / 'config')
# The aggregation modes verl's ActorConfig accepts, read from its source (token-sum arrived after 0.6.1).
_ACTOR_CONFIG_SOURCE = Path(inspect.getsourcefile(ActorConfig)).read_text()
AGG_MODES = [pytest.param(mode, marks=only_where(re.search(f'[\'"]{mode}[\'"]', _ACTOR_CONFIG_SOURCE) is not None,
                                                 f'verl {verl.__version__} has no loss_agg_mode {mode}'))
             for mode in ('token-mean', 'token-sum', 'seq-mean-token-sum', 'seq-mean-token-mean',
                          'seq-mean-token-sum-norm')]


def actor(loss_mode: str = 'fipo', fipo: dict | None = None, clip_ratio_c: float = 3.0,
          loss_agg_mode: str = 'token-mean', **extra) -> ActorConfig:
    extra.setdefault('ppo_mini_batch_size', 4)
    return ActorConfig(strategy='fsdp', rollout_n=1, ppo_micro_batch_size_per_gpu=2, clip_ratio_low=0.2,
                       clip_ratio_high=0.28, clip_ratio_c=clip_ratio_c, loss_agg_mode=loss_agg_mode,
                       policy_loss=PolicyLossConfig(loss_mode=loss_mode, fipo=fipo or {}), **extra)


def batch(seed: int, off_policy: bool, batch_size: int = 6, length: int = 48, spikes: bool = False,
          dtype: torch.dtype = torch.float32):
    """(old_log_prob, log_prob leaf, token advantages [B, T], response mask, rollout IS weights)."""
    log_ratio, mask, advantages = random_inputs(batch_size, length, seed=seed, scale=0.3)
    generator = torch.Generator().manual_seed(seed + 100)
    if spikes:  # ratios past the dual clip c = 10 and the safety thresholds, so every safeguard fires
        draw = torch.rand(batch_size, length, generator=generator)
        log_ratio = torch.where(draw < 0.04, log_ratio + 3.0, log_ratio)
        advantages[0] = -abs(float(advantages[0])) - 0.1
        mask[0, :4] = True
        log_ratio[0, 1:3] = 3.0
    old = -torch.rand(batch_size, length, generator=generator) * 3
    new = (old + log_ratio) if off_policy else old.clone()
    is_weights = 0.5 + torch.rand(batch_size, length, generator=generator)
    token_advantages = advantages[:, None].expand(batch_size, length).contiguous()
    return (old.to(dtype), new.to(dtype).requires_grad_(), token_advantages.to(dtype), mask, is_weights.to(dtype))


def loss_and_grad(loss_fn, old, new, advantages, mask, config, is_weights, agg: str = 'token-mean'):
    new = new.detach().clone().requires_grad_()
    loss, metrics = loss_fn(old_log_prob=old, log_prob=new, advantages=advantages, response_mask=mask,
                            loss_agg_mode=agg, config=config, rollout_is_weights=is_weights)
    loss.backward()
    return loss.detach(), new.grad, metrics


# ---------------------------------------------------------------------------------------------------
# Registration


def test_activation_registers_the_loss_and_the_option():
    assert core_algos.get_policy_loss_fn('fipo') is fipo_verl.compute_policy_loss_fipo
    assert fipo_verl.serves(core_algos) is None
    assert PolicyLossConfig(loss_mode='fipo', fipo={'preset': 'paper-7b'}).fipo == {'preset': 'paper-7b'}


def _run(code: str, **env: str) -> str:
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_a_fresh_worker_process_gets_fipo_from_the_pth_activation():
    # Ray starts each worker as a fresh interpreter of this environment that imports verl's modules:
    # only the .pth activation can reach it (nothing of the parent process is inherited).
    code = 'from verl.trainer.ppo import core_algos; print(sorted(core_algos.POLICY_LOSS_REGISTRY))'
    assert 'fipo' in _run(code)
    assert 'fipo' not in _run(code, SWIFT_FIPO_DISABLE='1')


def test_interpreter_start_imports_neither_torch_nor_verl():
    loaded = _run('import sys; print(" ".join(sorted(sys.modules)))').split()
    assert 'swift_fipo.activation' in loaded
    assert not [name for name in loaded if name.split('.')[0] in ('torch', 'verl', 'ray', 'hydra', 'omegaconf')]
    # The host's layout record is read (the table of hosts); its integration loads only when verl is imported.
    assert 'swift_fipo.integrations.verl.layout' in loaded and 'swift_fipo.integrations.verl.hooks' not in loaded


def test_explicit_route_with_the_activation_off():
    code = ('from verl.trainer.ppo import core_algos; from verl.workers.config import PolicyLossConfig; '
            "print('fipo' in core_algos.POLICY_LOSS_REGISTRY, PolicyLossConfig(loss_mode='fipo', "
            "fipo={'preset': 'paper-32b'}).fipo)")
    assert _run(code, SWIFT_FIPO_DISABLE='1', VERL_USE_EXTERNAL_MODULES='swift_fipo.verl_plugin') == \
        "True {'preset': 'paper-32b'}"


def test_uninstall_restores_verl():
    code = ('import dataclasses; from swift_fipo.integrations.verl import hooks as v; '
            'from verl.trainer.ppo import core_algos as c; from verl.workers.config import PolicyLossConfig as P; '
            'init, hints = P.__init__, P.__annotations__; v.uninstall(); '
            "print('fipo' in c.POLICY_LOSS_REGISTRY, 'fipo' in [f.name for f in dataclasses.fields(P)], "
            "P.__init__ is init, 'fipo' in P.__annotations__, 'fipo' in P.__init__.__code__.co_varnames)\n"
            'try:\n    P(fipo={})\nexcept TypeError as e:\n    print("refused")\n'
            "v.install(); print(P(loss_mode='fipo', fipo={'clip_range': 0.1}).fipo)")
    assert _run(code).splitlines() == ['False False False False False', 'refused', "{'clip_range': 0.1}"]


def test_doctor_reports_the_verl_hooks():
    doctor = Path(sys.executable).parent / 'swift-fipo'
    result = subprocess.run([str(doctor), 'doctor'], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert f'verl          {verl.__version__}' in result.stdout
    assert 'verl.trainer.ppo.core_algos: fipo registered (loss_mode=fipo)' in result.stdout
    assert 'verl.workers.config.actor: PolicyLossConfig takes the fipo options' in result.stdout


def _doctor_in_process(capsys: pytest.CaptureFixture) -> tuple[int, str]:
    from swift_fipo import cli
    capsys.readouterr()
    code = cli.doctor()
    return code, capsys.readouterr().out


def test_doctors_verl_verdict_needs_the_option_hook_and_the_loss(capsys: pytest.CaptureFixture):
    """The verl verdict is "computed by swift-fipo" only when both hooks hold: with the loss registered but
    PolicyLossConfig unpatched, `policy_loss.fipo.*` overrides are refused by verl's schema, so doctor must
    say NOT and exit 1; likewise with the options hooked and the loss unregistered."""
    config_module = sys.modules[fipo_verl.CONFIG_MODULE]
    code, out = _doctor_in_process(capsys)
    assert code == 0 and 'verdict: verl `policy_loss.loss_mode=fipo` is computed by swift-fipo' in out, out
    fipo_verl.config_patches(config_module).revert()
    try:
        assert core_algos.get_policy_loss_fn('fipo') is fipo_verl.compute_policy_loss_fipo
        code, out = _doctor_in_process(capsys)
    finally:
        fipo_verl.install()
    assert 'verl.workers.config.actor: fipo options not hooked' in out, out
    assert 'verdict: verl `policy_loss.loss_mode=fipo` is NOT computed by swift-fipo here' in out, out
    assert code == 1
    del core_algos.POLICY_LOSS_REGISTRY[fipo_verl.LOSS_MODE]
    try:
        code, out = _doctor_in_process(capsys)
    finally:
        fipo_verl.install()
    assert 'verl.workers.config.actor: PolicyLossConfig takes the fipo options' in out, out
    assert 'verdict: verl `policy_loss.loss_mode=fipo` is NOT computed by swift-fipo here' in out and code == 1, out
    assert core_algos.get_policy_loss_fn('fipo') is fipo_verl.compute_policy_loss_fipo


def test_a_fipo_loss_verl_registers_itself_is_left_alone():
    def verls_own(**kwargs):
        raise AssertionError('never called')

    ours = core_algos.POLICY_LOSS_REGISTRY[fipo_verl.LOSS_MODE]
    core_algos.POLICY_LOSS_REGISTRY[fipo_verl.LOSS_MODE] = verls_own
    try:
        report = fipo_verl.patch_core_algos(core_algos)
        assert core_algos.POLICY_LOSS_REGISTRY[fipo_verl.LOSS_MODE] is verls_own
    finally:
        core_algos.POLICY_LOSS_REGISTRY[fipo_verl.LOSS_MODE] = ours
    assert report == {fipo_verl.LOSS_MODE: 'verl registers its own fipo loss; left alone'}
    assert fipo_verl.patch_core_algos(core_algos) == {fipo_verl.LOSS_MODE: True}  # ours again: idempotent


def test_doctor_does_not_credit_swift_fipo_with_a_fipo_loss_verl_registers_itself(capsys: pytest.CaptureFixture):
    """verl's own fipo loss, left alone, is verl's code: doctor says so, its verdict is NOT computed by
    swift-fipo, and it exits 1."""
    def verls_own(**kwargs):
        raise AssertionError('never called')

    ours = core_algos.POLICY_LOSS_REGISTRY[fipo_verl.LOSS_MODE]
    core_algos.POLICY_LOSS_REGISTRY[fipo_verl.LOSS_MODE] = verls_own
    try:
        code, out = _doctor_in_process(capsys)
    finally:
        core_algos.POLICY_LOSS_REGISTRY[fipo_verl.LOSS_MODE] = ours
    assert 'verl.trainer.ppo.core_algos: verl registers its own fipo loss; left alone' in out, out
    assert 'verdict: verl `policy_loss.loss_mode=fipo` is NOT computed by swift-fipo here' in out, out
    assert 'verdict: verl `policy_loss.loss_mode=fipo` is computed by swift-fipo' not in out and code == 1, out


def test_capability_check_refuses_a_registry_without_the_two_value_loss():
    def four_values(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode='token-mean', config=None,
                    rollout_is_weights=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        raise AssertionError('never called')

    class OldRegistry:  # verl 0.6.0's shape: a registry whose losses return four tensors
        __name__ = 'core_algos'
        POLICY_LOSS_REGISTRY = {'vanilla': four_values}
        register_policy_loss = get_policy_loss_fn = staticmethod(lambda name: None)

    assert 'does not return (loss, metrics)' in fipo_verl.serves(OldRegistry)
    assert 'not registered' in str(fipo_verl.patch_core_algos(OldRegistry))
    del OldRegistry.get_policy_loss_fn
    assert 'no get_policy_loss_fn' in fipo_verl.serves(OldRegistry)


# ---------------------------------------------------------------------------------------------------
# The loss


def test_the_agg_mode_probe_finds_what_every_served_verl_accepts():
    """The source probe above leaves a mode out where verl lacks it; it must never leave out them all."""
    found = {param.values[0] for param in AGG_MODES if param.marks[0].args[0]}
    assert {'token-mean', 'seq-mean-token-sum', 'seq-mean-token-mean', 'seq-mean-token-sum-norm'} <= found


@pytest.mark.parametrize('agg', AGG_MODES)
def test_first_pass_equals_vanilla_loss_and_gradient(agg):
    old, new, advantages, mask, is_weights = batch(seed=1, off_policy=False)
    fipo = actor('fipo', loss_agg_mode=agg)
    vanilla = actor('vanilla', loss_agg_mode=agg)
    for config in (fipo, vanilla):  # verl's global-batch normalisation, as its engines set it (0.7+)
        getattr(config, 'global_batch_info', {}).update(dp_size=2, batch_num_tokens=int(mask.sum()) * 2,
                                                        global_batch_size=12)
    loss, grad, metrics = loss_and_grad(core_algos.get_policy_loss_fn('fipo'), old, new, advantages, mask, fipo,
                                        is_weights, agg)
    expected, expected_grad, vanilla_metrics = loss_and_grad(core_algos.get_policy_loss_fn('vanilla'), old, new,
                                                             advantages, mask, vanilla, is_weights, agg)
    assert torch.equal(loss, expected) and torch.equal(grad, expected_grad)
    assert metrics['actor/fipo/influence_weight_mean'] == 1.0 and metrics['actor/fipo/future_kl_mean'] == 0.0
    assert {key: metrics[key] for key in vanilla_metrics} == vanilla_metrics


def _reference_weight(name: str, old, new, advantages, mask, clip_ratio_c: float) -> torch.Tensor:
    """Float64 weights: the brute force for ms-swift's semantics (verl's clip_ratio_c as delta), the
    authors' future_kl re-derivation for the paper presets."""
    if name == 'swift':
        weight, _, _ = brute_fipo_weight(new.detach() - old, mask, advantages, delta=clip_ratio_c)
        return weight
    preset = FIPOConfig.from_preset(name)
    return authors_weight(new.detach(), old, advantages, mask, decay_rate=preset.decay_rate,
                          clip_ratio=preset.clip_range, clip_high_only=preset.clip_high_only,
                          safety_thresh=preset.safety_threshold, clip_ratio_c=clip_ratio_c)


@pytest.mark.parametrize('agg', ['token-mean', 'seq-mean-token-mean'])
@pytest.mark.parametrize('preset', ['swift', 'paper-32b', 'paper-7b'])
def test_off_policy_follows_the_float64_reference(preset, agg):
    old, new, advantages, mask, is_weights = batch(seed=2, off_policy=True, spikes=True)
    config = actor('fipo', {'preset': preset}, clip_ratio_c=10.0, loss_agg_mode=agg)
    loss, grad, metrics = loss_and_grad(core_algos.get_policy_loss_fn('fipo'), old, new, advantages, mask, config,
                                        is_weights, agg)
    # Reference: verl's vanilla loss in float64 with A * (float64 weight).
    weight = _reference_weight(preset, old.double(), new.double(), advantages.double(), mask, 10.0)
    expected, expected_grad, _ = loss_and_grad(
        core_algos.get_policy_loss_fn('vanilla'), old.double(), new.double(), advantages.double() * weight, mask,
        actor('vanilla', clip_ratio_c=10.0, loss_agg_mode=agg), is_weights.double(), agg)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-5, atol=1e-7)
    assert metrics['actor/fipo/influence_weight_max'] > 1.0  # the case is really off-policy
    if preset != 'swift':
        assert metrics['actor/fipo/dropped_response_ratio'] > 0 and metrics['actor/fipo/safety_fired_ratio'] > 0
        assert float(grad[0].abs().sum()) == 0.0  # the dropped response adds nothing


def test_a_dropped_response_still_counts_in_verls_token_count():
    """The authors remove a dropped response from the loss mask before their token mean; verl's
    aggregation divides by the batch's token count, dropped tokens included: the losses differ by
    exactly N_kept / N_all (docs/verl.md)."""
    old, new, advantages, mask, _ = batch(seed=2, off_policy=True, spikes=True)
    config = actor('fipo', {'preset': 'paper-32b'}, clip_ratio_c=10.0)
    loss, _, _ = loss_and_grad(core_algos.get_policy_loss_fn('fipo'), old, new, advantages, mask, config, None)
    weight, stats = compute_fipo_influence(new.detach() - old, mask, advantages, fipo_verl.config_of_actor(config))
    kept = mask & ~stats.dropped[:, None]
    assert 0 < int(kept.sum()) < int(mask.sum())
    authors, _, _ = loss_and_grad(core_algos.get_policy_loss_fn('vanilla'), old, new, advantages * weight, kept,
                                  actor('vanilla', clip_ratio_c=10.0), None)
    assert loss.item() == pytest.approx(authors.item() * int(kept.sum()) / int(mask.sum()), rel=1e-5)


def test_loss_metrics_use_verl_names():
    old, new, advantages, mask, is_weights = batch(seed=3, off_policy=True)
    _, _, metrics = loss_and_grad(core_algos.get_policy_loss_fn('fipo'), old, new, advantages, mask, actor(),
                                  is_weights)
    _, stats = compute_fipo_influence(new.detach() - old, mask, advantages, fipo_verl.config_of_actor(actor()))
    expected = {f'actor/fipo/{key}': float(value) for key, value in stats.summary.items()
                if key != 'neg_adv_ratio_p99'}
    assert {key: value for key, value in metrics.items() if key.startswith('actor/fipo/')} == expected
    assert {'actor/pg_clipfrac', 'actor/ppo_kl', 'actor/pg_clipfrac_lower'} <= set(metrics)
    assert all(isinstance(value, float) and math.isfinite(value) for value in metrics.values())


def _engine_batch(seed: int, off_policy: bool):
    """A micro-batch as verl's engines hand it to ppo_loss: left-right padded prompts and responses
    converted by verl's own left_right_2_no_padding, the model's log-probs as a jagged tensor over all
    tokens, and the global-batch numbers as non-tensor data."""
    generator = torch.Generator().manual_seed(seed)
    rows, prompt, response = 4, 5, 12
    attention = torch.ones(rows, prompt + response, dtype=torch.long)
    attention[0, :2] = 0
    attention[2, :1] = 0
    lengths = torch.tensor([12, 7, 3, 10])
    for row, length in enumerate(lengths):
        attention[row, prompt + int(length):] = 0
    response_mask = attention[:, prompt:].clone()
    data = TensorDict({
        'prompts': torch.randint(0, 50, (rows, prompt), generator=generator),
        'responses': torch.randint(0, 50, (rows, response), generator=generator),
        'input_ids': torch.randint(0, 50, (rows, prompt + response), generator=generator),
        'attention_mask': attention, 'response_mask': response_mask,
        'position_ids': (attention.cumsum(-1) - 1).clamp(min=0),
        'old_log_probs': -torch.rand(rows, response, generator=generator) * 2,
        'advantages': torch.randn(rows, 1, generator=generator).expand(rows, response).contiguous(),
    }, batch_size=[rows])
    data = left_right_2_no_padding(data)
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(response_mask.sum()), global_batch_size=rows)
    padded_old = data['old_log_probs']
    total = int(attention.sum())
    values = torch.randn(total, generator=generator) * 0.3  # stand-in for the policy's log-probs of all tokens
    if not off_policy:  # make the response positions equal the old log-probs exactly
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), attention.sum(-1).cumsum(0)])
        for row, length in enumerate(lengths):
            end = int(offsets[row + 1])
            values[end - int(length) - 1:end - 1] = padded_old[row, :int(length)]
    return data, values


@needs_verl_07
@pytest.mark.parametrize('off_policy', [False, True])
def test_ppo_loss_with_the_engine_tensordict(off_policy):
    data, values = _engine_batch(seed=4, off_policy=off_policy)
    leaf = values.clone().requires_grad_()
    model_output = {'log_probs': torch.nested.nested_tensor_from_jagged(leaf, offsets=data['input_ids'].offsets())}
    config = actor('fipo', {'preset': 'paper-7b'}, clip_ratio_c=10.0)
    loss, metrics = ppo_loss(config, model_output, data)
    loss.backward()

    # The same loss by hand: vanilla with A * w, w from compute_fipo_influence on the padded batch.
    log_prob = no_padding_2_padding(values.clone().requires_grad_(), data)
    mask = data['response_mask'].bool()
    weight, _ = compute_fipo_influence(log_prob.detach() - data['old_log_probs'], mask, data['advantages'],
                                       FIPOConfig.from_preset('paper-7b', delta=10.0))
    vanilla = actor('vanilla', clip_ratio_c=10.0)
    vanilla.global_batch_info.update(dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=4)
    reference, _ = core_algos.get_policy_loss_fn('vanilla')(data['old_log_probs'], log_prob,
                                                            data['advantages'] * weight, mask, 'token-mean', vanilla)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert metrics['actor/fipo/influence_weight_mean'].aggregate() == pytest.approx(float(weight[mask].mean()))
    if off_policy:
        assert float(weight[mask].max()) > 1.0 and leaf.grad.abs().sum() > 0
    else:
        assert bool((weight[mask] == 1).all())


# ---------------------------------------------------------------------------------------------------
# Options: presets, explicit values, refusals


def test_presets_and_explicit_options():
    assert fipo_verl.fipo_config({}) == FIPOConfig()
    assert fipo_verl.fipo_config({'preset': 'paper-7b', 'safety_threshold': 5.0}) == \
        FIPOConfig.from_preset('paper-7b', safety_threshold=5.0)
    # verl's dual clip is FIPO's delta: the filter and the sequence drop use it.
    assert fipo_verl.config_of_actor(actor(fipo={'preset': 'paper-32b'}, clip_ratio_c=10.0)) == \
        FIPOConfig.from_preset('paper-32b')
    assert fipo_verl.config_of_actor(actor(clip_ratio_c=5.0)).participation_threshold == 5.0


@pytest.mark.parametrize('options, message', [
    ({'clip_range': -1.0}, r'actor_rollout_ref\.actor\.policy_loss\.fipo\.clip_range must be'),
    ({'preset': 'paper-70b'}, r'preset must be one of swift, paper-32b, paper-7b'),
    ({'decay': 32}, r'unknown FIPO option\(s\) actor_rollout_ref\.actor\.policy_loss\.fipo\.decay'),
    ({'delta': 5.0}, r'fipo\.delta is not an option under verl.*actor_rollout_ref\.actor\.clip_ratio_c'),
    ({'preset': 'swift', 'sequence_drop': 'yes'}, r'fipo\.sequence_drop must be True or False'),
])
def test_bad_options_are_refused_naming_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        PolicyLossConfig(loss_mode='fipo', fipo=options)


def test_a_dual_clip_fipo_cannot_use_is_refused_at_validation():
    with pytest.raises(ValueError, match=r'actor_rollout_ref\.actor\.clip_ratio_c must be a number > 1'):
        actor(clip_ratio_c=1.0).validate(n_gpus=1, train_batch_size=8)


# Around the PPO clip 1 + clip_ratio_high = 1.28 of actor(): at or inside it refused, beyond it accepted.
THRESHOLDS_AROUND_THE_CLIP = [1.05, 1.2, 1.28, 1.2800001, 1.3, 3.0]


@pytest.mark.parametrize('value', THRESHOLDS_AROUND_THE_CLIP)
@pytest.mark.parametrize('option', ['clip_ratio_c', 'filter_threshold'])
def test_a_dual_clip_or_filter_inside_the_ppo_clip_is_refused_as_ms_swift_refuses_it(option, value):
    """One rule for every host: verl refuses clip_ratio_c (its delta) and fipo.filter_threshold where
    ms-swift refuses --delta and --fipo_filter_threshold, i.e. at or below 1 + epsilon_high."""
    from swift_fipo.integrations.ms_swift import arguments as ms_swift_cli
    config = actor(clip_ratio_c=value) if option == 'clip_ratio_c' else actor(fipo={'filter_threshold': value})
    swift_field = 'delta' if option == 'clip_ratio_c' else 'filter_threshold'
    swift_args = SimpleNamespace(epsilon=0.2, epsilon_high=config.clip_ratio_high, num_iterations=2)
    try:
        ms_swift_cli.validate_run(swift_args, FIPOConfig(**{swift_field: value}))
        swift_refuses = False
    except ValueError:
        swift_refuses = True
    assert swift_refuses == (value <= 1.28)
    name = fipo_verl.DUAL_CLIP_OPTION if option == 'clip_ratio_c' else fipo_verl.option_name(option)
    if swift_refuses:
        expected = (f'verl: {name} must be > 1 + actor_rollout_ref.actor.clip_ratio_high = 1.28 (the PPO clip '
                    f'already bounds ratios up to there); got {value:g}.')
        with pytest.raises(ValueError) as refused:
            config.validate(n_gpus=1, train_batch_size=8)
        assert str(refused.value) == expected
        old, new, advantages, mask, _ = batch(seed=2, off_policy=True)
        with pytest.raises(ValueError, match=re.escape(expected)):  # and the loss never runs with it
            core_algos.get_policy_loss_fn('fipo')(old_log_prob=old, log_prob=new, advantages=advantages,
                                                  response_mask=mask, config=config)
    else:
        config.validate(n_gpus=1, train_batch_size=8)


def test_the_ppo_clip_bound_falls_back_to_clip_ratio_as_vanilla_does():
    """vanilla clips at 1 + clip_ratio when clip_ratio_high is None; the rule reads the same value."""
    config = actor(clip_ratio_c=1.25)
    object.__setattr__(config, 'clip_ratio_high', None)
    object.__setattr__(config, 'clip_ratio', 0.3)
    with pytest.raises(ValueError, match=r'clip_ratio_high = 1\.3 .*got 1\.25\.'):
        fipo_verl.config_of_actor(config)
    object.__setattr__(config, 'clip_ratio', 0.2)
    assert fipo_verl.config_of_actor(config).delta == 1.25


def test_a_fully_masked_micro_batch_keeps_the_fipo_metrics_finite():
    """No response token in a micro-batch: vanilla's metrics stay finite (0), and so must FIPO's, or verl's
    mean over the step's micro-batches (reduce_metrics, np.mean) turns NaN."""
    from verl.utils.metric import reduce_metrics
    old, new, advantages, mask, is_weights = batch(seed=4, off_policy=True)
    empty = torch.zeros_like(mask)
    _, vanilla_metrics = core_algos.get_policy_loss_fn('vanilla')(
        old_log_prob=old, log_prob=new, advantages=advantages, response_mask=empty, config=actor('vanilla'),
        rollout_is_weights=is_weights)
    assert all(math.isfinite(value) for value in vanilla_metrics.values())
    _, empty_metrics = core_algos.get_policy_loss_fn('fipo')(
        old_log_prob=old, log_prob=new, advantages=advantages, response_mask=empty, config=actor(),
        rollout_is_weights=is_weights)
    fipo_keys = {key for key in empty_metrics if key.startswith('actor/fipo/')}
    assert all(math.isfinite(empty_metrics[key]) for key in fipo_keys), empty_metrics
    assert fipo_keys == {f'actor/fipo/{key}' for key in fipo_verl.EMPTY_MICRO_BATCH_METRICS}
    assert {key: empty_metrics[key] for key in fipo_keys} == {
        f'actor/fipo/{key}': value for key, value in fipo_verl.EMPTY_MICRO_BATCH_METRICS.items()}
    # FIPO did nothing there: Future-KL 0, every weight 1, nothing clipped, filtered or fired.
    assert empty_metrics['actor/fipo/future_kl_mean'] == 0.0
    assert empty_metrics['actor/fipo/influence_weight_min'] == empty_metrics['actor/fipo/influence_weight_max'] == 1.0
    _, full_metrics = core_algos.get_policy_loss_fn('fipo')(
        old_log_prob=old, log_prob=new, advantages=advantages, response_mask=mask, config=actor(),
        rollout_is_weights=is_weights)
    step = reduce_metrics({key: [full_metrics[key], empty_metrics[key]] for key in fipo_keys})
    assert all(math.isfinite(value) for value in step.values()), step
    assert step['actor/fipo/future_kl_mean'] == pytest.approx(full_metrics['actor/fipo/future_kl_mean'] / 2)


def test_fipo_options_without_the_fipo_loss_warn():
    with pytest.warns(FIPOWarning, match='loss_mode is .vanilla.: the FIPO options do nothing'):
        PolicyLossConfig(loss_mode='vanilla', fipo={'preset': 'paper-7b', 'clip_range': -1})


def test_a_schedule_without_off_policy_updates_warns():
    config = actor(ppo_mini_batch_size=8)
    with pytest.warns(FIPOWarning, match='FIPO is a no-op here'):
        config.validate(n_gpus=1, train_batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter('error', FIPOWarning)
        actor(ppo_mini_batch_size=4).validate(n_gpus=1, train_batch_size=8)
        actor(ppo_mini_batch_size=8, ppo_epochs=2).validate(n_gpus=1, train_batch_size=8)


# ---------------------------------------------------------------------------------------------------
# A verl command line: Hydra composition, the driver's validation, the loss


BASE_OVERRIDES = [
    'algorithm.adv_estimator=grpo', 'data.train_batch_size=8', 'actor_rollout_ref.rollout.n=2',
    'actor_rollout_ref.actor.ppo_mini_batch_size=4', 'actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2',
    'actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2',
    'actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2', 'trainer.n_gpus_per_node=1',
]


def compose_and_validate(overrides: list[str], config_name: str = 'ppo_trainer'):
    """What verl's main_ppo does on the driver before Ray starts: compose, then validate_config."""
    with initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
        config = compose(config_name, overrides=overrides)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Disabled critic')
        validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    return config


@needs_verl_07
def test_a_command_line_with_a_preset_composes_validates_and_reaches_the_loss():
    config = compose_and_validate(BASE_OVERRIDES + [
        'actor_rollout_ref.actor.policy_loss.loss_mode=fipo', 'actor_rollout_ref.actor.clip_ratio_c=10',
        '+actor_rollout_ref.actor.policy_loss.fipo.preset=paper-32b',
        '+actor_rollout_ref.actor.policy_loss.fipo.clip_range=0.25'])
    # A worker builds its actor config from the same DictConfig, and ppo_loss picks the loss by name.
    actor_config = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    loss_fn = core_algos.get_policy_loss_fn(actor_config.policy_loss.loss_mode)
    assert loss_fn is fipo_verl.compute_policy_loss_fipo
    assert fipo_verl.config_of_actor(actor_config) == FIPOConfig.from_preset('paper-32b', clip_range=0.25)
    old, new, advantages, mask, _ = batch(seed=5, off_policy=True, spikes=True)
    _, _, metrics = loss_and_grad(loss_fn, old, new, advantages, mask, actor_config, None)
    assert 1.0 < metrics['actor/fipo/influence_weight_max'] <= 1.25


@pytest.mark.parametrize('override, message', [
    ('+actor_rollout_ref.actor.policy_loss.fipo.clip_range=-0.5',
     r'actor_rollout_ref\.actor\.policy_loss\.fipo\.clip_range must be'),
    ('+actor_rollout_ref.actor.policy_loss.fipo.preset=paper',
     r'preset must be one of swift, paper-32b, paper-7b'),
    ('actor_rollout_ref.actor.clip_ratio_c=0.5', r'actor_rollout_ref\.actor\.clip_ratio_c must be a number > 1'),
    # verl's default clip_ratio_high is 0.2: the rule ms-swift applies against epsilon_high.
    ('actor_rollout_ref.actor.clip_ratio_c=1.05',
     r'actor_rollout_ref\.actor\.clip_ratio_c must be > 1 \+ actor_rollout_ref\.actor\.clip_ratio_high = 1\.2 '),
    ('+actor_rollout_ref.actor.policy_loss.fipo.filter_threshold=1.1',
     r'fipo\.filter_threshold must be > 1 \+ actor_rollout_ref\.actor\.clip_ratio_high = 1\.2 '),
])
@needs_verl_07
def test_a_bad_command_line_is_refused_by_the_driver_check(override, message):
    with pytest.raises(Exception, match=message):
        compose_and_validate(BASE_OVERRIDES + ['actor_rollout_ref.actor.policy_loss.loss_mode=fipo', override])


@needs_verl_07
def test_verls_dual_clip_is_the_sequence_drops_c():
    # Before: refused with "sequence_drop must be False unless delta or filter_threshold is set", although
    # clip_ratio_c is that c under verl, and the delta the message named is itself refused here.
    config = compose_and_validate(BASE_OVERRIDES + [
        'actor_rollout_ref.actor.policy_loss.loss_mode=fipo', 'actor_rollout_ref.actor.clip_ratio_c=10',
        '+actor_rollout_ref.actor.policy_loss.fipo.sequence_drop=true'])
    actor_config = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    assert fipo_verl.config_of_actor(actor_config) == FIPOConfig(delta=10.0, sequence_drop=True)


def test_a_refusal_names_only_options_verl_has():
    with pytest.raises(ValueError) as refused:
        fipo_verl.fipo_config({'sequence_drop': True})  # no dual clip known (clip_ratio_c None)
    message = str(refused.value)
    assert message == ('verl: actor_rollout_ref.actor.policy_loss.fipo.sequence_drop must be False unless '
                       'actor_rollout_ref.actor.clip_ratio_c or '
                       'actor_rollout_ref.actor.policy_loss.fipo.filter_threshold is set (it needs a dual-clip '
                       'threshold); got True.')


@needs_verl_07
@pytest.mark.parametrize('mini_batch, warns', [(4, False), (8, True)])
def test_the_no_op_warning_counts_prompts_as_verls_validation_does(mini_batch, warns):
    """data.train_batch_size and ppo_mini_batch_size count prompts on the driver (verl's own check compares
    them so); rollout.n = 4 must not enter: 8 prompts in mini-batches of 4 are two optimizer steps per rollout,
    off-policy, while counting the mini-batch in responses (16) would call it a no-op."""
    overrides = [override for override in BASE_OVERRIDES if not override.startswith(
        ('actor_rollout_ref.rollout.n=', 'actor_rollout_ref.actor.ppo_mini_batch_size='))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        compose_and_validate(overrides + ['actor_rollout_ref.rollout.n=4',
                                          'actor_rollout_ref.actor.policy_loss.loss_mode=fipo',
                                          f'actor_rollout_ref.actor.ppo_mini_batch_size={mini_batch}'])
    no_op = [str(warning.message) for warning in caught if 'FIPO is a no-op' in str(warning.message)]
    assert len(no_op) == int(warns), no_op
    if warns:
        assert 'data.train_batch_size=8, actor_rollout_ref.actor.ppo_mini_batch_size=8' in no_op[0]


RAY_WORKER = """
import json, os, sys
import ray
from omegaconf import OmegaConf
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)

@ray.remote
def train_step_loss(actor_yaml):
    import torch
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.utils.config import omega_conf_to_dataclass
    config = omega_conf_to_dataclass(OmegaConf.create(actor_yaml))  # what a verl worker does
    loss_fn = get_policy_loss_fn(config.policy_loss.loss_mode)
    old = torch.zeros(2, 6)
    new = torch.linspace(-0.5, 0.5, 12).reshape(2, 6).requires_grad_()
    loss, metrics = loss_fn(old_log_prob=old, log_prob=new, advantages=torch.tensor([[1.0], [-1.0]]).expand(2, 6),
                            response_mask=torch.ones(2, 6, dtype=torch.bool), loss_agg_mode='token-mean',
                            config=config, rollout_is_weights=None)
    loss.backward()
    return {'pid': os.getpid(), 'loss_fn': loss_fn.__module__ + '.' + loss_fn.__name__,
            'fipo_metrics': sorted(key for key in metrics if key.startswith('actor/fipo/')),
            'weight_max': metrics['actor/fipo/influence_weight_max'], 'grad': float(new.grad.abs().sum())}

print(json.dumps(ray.get(train_step_loss.remote(sys.argv[1]))))
ray.shutdown()
"""


@needs_verl_07
def test_a_ray_worker_reaches_the_fipo_loss_of_a_composed_command_line():
    config = compose_and_validate(BASE_OVERRIDES + ['actor_rollout_ref.actor.policy_loss.loss_mode=fipo',
                                                    '+actor_rollout_ref.actor.policy_loss.fipo.preset=paper-7b'])
    actor_yaml = OmegaConf.to_yaml(config.actor_rollout_ref.actor)
    result = subprocess.run([sys.executable, '-c', RAY_WORKER, actor_yaml], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reply = json.loads(result.stdout.strip().splitlines()[-1])
    assert reply['pid'] != os.getpid()
    assert reply['loss_fn'] == 'swift_fipo.integrations.verl.hooks.compute_policy_loss_fipo'
    assert 'actor/fipo/influence_weight_mean' in reply['fipo_metrics']
    assert 1.0 < reply['weight_max'] <= 1.2 + 1e-6 and reply['grad'] > 0  # paper-7b's clip [0.8, 1.2], off-policy


@needs_verl_07
def test_verls_own_entry_point_refuses_a_bad_option_before_ray_starts(tmp_path):
    overrides = BASE_OVERRIDES + ['actor_rollout_ref.actor.policy_loss.loss_mode=fipo',
                                  '+actor_rollout_ref.actor.policy_loss.fipo.decay_rate=0']
    result = subprocess.run([sys.executable, '-m', 'verl.trainer.main_ppo', *overrides], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)  # Hydra writes outputs/ into the cwd
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert 'actor_rollout_ref.actor.policy_loss.fipo.decay_rate must be a number in [1/126, 2**24]' in output
    assert 'got 0.' in output
    assert 'ray init' not in output and 'Traceback' not in output


def recipe_overrides() -> list[str]:
    """The Hydra overrides of the GPU recipe, read from the script (its shell variables expanded)."""
    text = RECIPE.read_text()
    variables = dict(re.findall(r'^(\w+)="\$\{\w+:-([^}]*)\}"$', text, flags=re.M))
    command = text[text.index('python3 -m verl.trainer.main_ppo'):].replace('\\\n', ' ')
    words = shlex.split(command.splitlines()[0])[3:]
    words = [word for word in words if word != '$@']
    return [re.sub(r'\$\{?(\w+)\}?', lambda m: variables.get(m.group(1), os.environ.get(m.group(1), '')), word)
            for word in words]


@needs_verl_07
def test_the_gpu_recipe_overrides_fit_verls_schema():
    overrides = recipe_overrides()
    assert 'actor_rollout_ref.actor.policy_loss.loss_mode=fipo' in overrides
    config = compose_and_validate(overrides)
    actor_config = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    fipo = fipo_verl.config_of_actor(actor_config)
    assert fipo == FIPOConfig.from_preset('paper-7b')
    assert actor_config.clip_ratio_c == 10.0 and actor_config.loss_agg_mode == 'token-mean'
