"""FIPOGRPOTrainer on a real TRL GRPOTrainer, with a tiny local Qwen2 model on CPU."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import need, only_where

need('trl')

import trl  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.state import is_initialized as accelerate_state_initialized  # noqa: E402
from datasets import Dataset  # noqa: E402
from reference import brute_fipo_weight  # noqa: E402
from tiny_trl_model import PROMPTS, build_tiny_model  # noqa: E402
from transformers import AutoTokenizer, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

import swift_fipo.integrations.trl.trainer as fipo_trl  # noqa: E402
import swift_fipo.ops.loss as fipo_loss_module  # noqa: E402
from swift_fipo.config import FIPOConfig  # noqa: E402
from swift_fipo.integrations.trl import FIPOGRPOTrainer, UnsupportedTRLError, check_trl_support  # noqa: E402
from swift_fipo.integrations.versions import installed_version  # noqa: E402
from swift_fipo.ops.influence import compute_fipo_influence  # noqa: E402

MISSING_MODEL = '/nonexistent/model'  # refusals must happen before GRPOTrainer tries to load it
# ms-swift's GRPO trainer module deletes trl.GRPOTrainer.__init__ when another test module imports it;
# scripts/test.sh therefore also runs this file in a process of its own.
OFFERED_LOSS_TYPES = fipo_trl.trl_loss_types(GRPOTrainer) or frozenset()


def accepted(loss_type: str) -> bool:
    """Whether FIPOGRPOTrainer's validation lets ``loss_type`` train on the installed TRL."""
    args = SimpleNamespace(loss_type=loss_type, num_iterations=2, steps_per_generation=1, gradient_accumulation_steps=1)
    try:
        fipo_trl.validate_grpo_args(args, GRPOTrainer)
    except ValueError:
        return False
    return True


# Every loss type validation accepts is tested below; every other one TRL offers must be refused.
TESTED_LOSS_TYPES = [loss_type for loss_type in sorted(OFFERED_LOSS_TYPES) if accepted(loss_type)]


@pytest.fixture(scope='module', autouse=True)
def _trl_intact() -> None:
    if '__init__' not in vars(GRPOTrainer):
        pytest.skip("ms-swift's GRPO trainer was imported in this process and deleted trl.GRPOTrainer.__init__; "
                    'this file runs on its own in scripts/test.sh')


def reward_length(completions: list[str], **_: Any) -> list[float]:
    return [float(len(completion)) for completion in completions]


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp('tiny_trl') / 'model')


def grpo_args(tmp_path: Path, **overrides: Any) -> GRPOConfig:
    values: dict[str, Any] = dict(output_dir=str(tmp_path / 'out'), use_cpu=True, report_to='none', bf16=False,
                                  num_iterations=2, max_completion_length=16, num_generations=4,
                                  per_device_train_batch_size=4, max_steps=4, logging_steps=1, learning_rate=1e-3,
                                  save_strategy='no', seed=0)
    values.update(overrides)
    return GRPOConfig(**values)


def make_trainer(model: str | Path, args: GRPOConfig, cls: type = FIPOGRPOTrainer, **kwargs: Any) -> Any:
    dataset = Dataset.from_dict({'prompt': PROMPTS})
    tokenizer = None if str(model) == MISSING_MODEL else AutoTokenizer.from_pretrained(model)
    return cls(model=str(model), reward_funcs=reward_length, args=args, train_dataset=dataset,
               processing_class=tokenizer, **kwargs)


def loss_mask(inputs: dict[str, Any]) -> torch.Tensor:
    """The tokens TRL's loss counts: completion tokens that are not tool output."""
    mask = inputs['completion_mask'].bool()
    return mask & inputs['tool_mask'].bool() if 'tool_mask' in inputs else mask


def current_logps(trainer: FIPOGRPOTrainer, inputs: dict[str, Any]) -> torch.Tensor:
    """The policy's log-probs of the completion tokens, computed here without TRL's helpers."""
    ids = torch.cat([inputs['prompt_ids'], inputs['completion_ids']], dim=1)
    attention = torch.cat([inputs['prompt_mask'], inputs['completion_mask']], dim=1)
    with torch.no_grad():
        logits = trainer.model(input_ids=ids, attention_mask=attention).logits
    logits = logits[:, -inputs['completion_ids'].shape[1] - 1:-1] / trainer.temperature
    return torch.log_softmax(logits.float(), -1).gather(-1, inputs['completion_ids'].unsqueeze(-1)).squeeze(-1)


def reference_weight(trainer: FIPOGRPOTrainer, inputs: dict[str, Any]) -> torch.Tensor:
    """FIPO weights from the float64 brute force of tests/reference.py, on a log-ratio computed here."""
    config = trainer.fipo_config
    # The brute force knows ms-swift's options; the authors' extras must be off in these tests.
    assert (config.filter_threshold, config.log_ratio_clamp, config.sequence_drop, config.unclipped_weight_cap) \
        == (None, None, False, None)
    old = inputs.get('old_per_token_logps')
    new = current_logps(trainer, inputs).double()
    log_ratio = new - (new if old is None else old.double())
    mask = loss_mask(inputs)
    ratio = None
    if trainer.importance_sampling_level == 'sequence':  # GSPO: one ratio per completion, its mean log-ratio
        ratio = torch.exp(torch.where(mask, log_ratio, 0.0).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True))
    weight, _, _ = brute_fipo_weight(log_ratio, mask, inputs['advantages'], decay_rate=config.decay_rate,
                                     clip_range=config.clip_range, clip_high_only=config.clip_high_only,
                                     safety_threshold=config.safety_threshold, delta=config.delta, ratio=ratio)
    return weight


def trl_loss(trainer: FIPOGRPOTrainer, inputs: dict[str, Any], weight: Any = None) -> torch.Tensor:
    """TRL's own loss on the batch, its advantages multiplied by ``weight`` ([B, T]) when given."""
    batch = dict(inputs)
    if weight is not None:
        advantages = batch['advantages']
        rows = advantages[:, None] if advantages.dim() == 1 else advantages
        batch['advantages'] = rows * weight.to(rows.dtype)
    return GRPOTrainer._compute_loss(trainer, trainer.model, batch)  # the FIPO hook is idle outside its own call


class RecordingTrainer(FIPOGRPOTrainer):
    """Also computes, on every batch, TRL's own loss (plain, and with advantages times the reference weights)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[dict[str, Any]] = []
        self._seen: set[bytes] = set()

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        fipo_loss = super()._compute_loss(model, inputs)
        weight = self.last_fipo_stats.weight
        dapo_loss = GRPOTrainer._compute_loss(self, model, inputs)  # no FIPO loss call in progress: no reweighting
        reference_loss = trl_loss(self, inputs, reference_weight(self, inputs))
        key = inputs['completion_ids'].numpy().tobytes()
        self.records.append({'reuse': key in self._seen, 'fipo': fipo_loss.detach().clone(),
                             'dapo': dapo_loss.detach().clone(), 'reference': reference_loss.detach().clone(),
                             'weight': weight[inputs['completion_mask'].bool()]})
        self._seen.add(key)
        return fipo_loss


def test_training_applies_fipo_on_reuse_steps_only(model_dir: Path, tmp_path: Path) -> None:
    config = FIPOConfig(decay_rate=8.0)
    trainer = make_trainer(model_dir, grpo_args(tmp_path), cls=RecordingTrainer, fipo=config)
    trainer.train()

    # num_iterations=2, one micro-batch per step: generate, reuse, generate, reuse.
    assert [record['reuse'] for record in trainer.records] == [False, True, False, True]
    for record in trainer.records:
        torch.testing.assert_close(record['fipo'], record['reference'], rtol=1e-4, atol=1e-6)
        if not record['reuse']:  # on-policy: weights are 1, FIPO is DAPO
            torch.testing.assert_close(record['weight'], torch.ones_like(record['weight']))
            torch.testing.assert_close(record['fipo'], record['dapo'])
        else:  # after an optimizer step the log-ratio is non-zero: the weights move and so does the loss
            assert record['weight'].max() > 1.0 and record['weight'].min() >= 1.0
            assert record['weight'].max() <= 1.0 + config.clip_range + 1e-6
            assert abs(record['fipo'] - record['dapo']) > 1e-6 * max(1.0, abs(record['dapo']))

    logs = [entry for entry in trainer.state.log_history if 'loss' in entry]
    assert len(logs) == 4
    expected_keys = {f'fipo/{key}' for key in trainer.last_fipo_stats.summary}
    assert {'fipo/future_kl_mean', 'fipo/influence_weight_mean', 'fipo/safety_keep_ratio'} <= expected_keys
    for entry, record in zip(logs, trainer.records, strict=True):
        assert expected_keys <= set(entry)
        assert all(math.isfinite(entry[key]) for key in expected_keys)
        mean_weight = record['weight'].mean().item()
        assert entry['fipo/influence_weight_mean'] == pytest.approx(mean_weight, rel=1e-5)
        if record['reuse']:
            assert entry['fipo/future_kl_mean'] != 0.0 and entry['fipo/influence_weight_mean'] > 1.0
        else:
            assert entry['fipo/future_kl_mean'] == pytest.approx(0.0, abs=1e-6)


@pytest.fixture
def offpolicy(offpolicy_once: tuple[FIPOGRPOTrainer, dict[str, Any]]) -> tuple[FIPOGRPOTrainer, dict[str, Any]]:
    # Every GRPOConfig (TrainingArguments) built since resets accelerate's process-wide state, which TRL's
    # forward pass reads: set it up again as the trainer's Accelerator(cpu=True) had it.
    if not accelerate_state_initialized():
        Accelerator(cpu=True)
    return offpolicy_once


@pytest.fixture(scope='module')
def offpolicy_once(model_dir: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> tuple[FIPOGRPOTrainer, dict[str, Any]]:
    """A trainer and one generated batch whose stored old log-probs are perturbed: a reuse step."""
    trainer = make_trainer(model_dir, grpo_args(tmp_path_factory.mktemp('offpolicy')),
                           fipo=FIPOConfig(decay_rate=4.0, clip_range=0.5, clip_high_only=False))
    trainer.model.train()
    # Set by Trainer's training loop; some TRL versions' loss normalisation reads it.
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    inputs = trainer._generate_and_score_completions([{'prompt': PROMPTS[1]}] * 4)
    generator = torch.Generator().manual_seed(1)
    noise = 0.3 * torch.randn(inputs['old_per_token_logps'].shape, generator=generator)
    inputs['old_per_token_logps'] = inputs['old_per_token_logps'] + noise
    assert inputs['advantages'].abs().sum() > 0
    return trainer, inputs


def test_loss_is_trl_loss_with_advantages_times_weight(offpolicy: tuple[FIPOGRPOTrainer, dict[str, Any]]) -> None:
    trainer, inputs = offpolicy
    fipo_loss = trainer._compute_loss(trainer.model, dict(inputs))
    weight = trainer.last_fipo_stats.weight

    # The weight is compute_fipo_influence of the batch's log-ratio, recomputed here independently.
    log_ratio = current_logps(trainer, inputs) - inputs['old_per_token_logps']
    expected, _ = compute_fipo_influence(log_ratio, inputs['completion_mask'], inputs['advantages'],
                                         trainer.fipo_config)
    mask = inputs['completion_mask'].bool()
    torch.testing.assert_close(weight[mask], expected[mask], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(weight[mask], torch.ones(()))  # the symmetric clip lets weights go both ways

    # TRL's own loss, fed A * w, is the FIPO loss; fed A, it is not.
    reweighted = dict(inputs, advantages=inputs['advantages'][:, None] * weight)
    torch.testing.assert_close(fipo_loss, GRPOTrainer._compute_loss(trainer, trainer.model, reweighted))
    plain = GRPOTrainer._compute_loss(trainer, trainer.model, dict(inputs))
    assert not torch.allclose(fipo_loss, plain)


def test_logged_minima_and_maxima_are_extremes_over_accumulation_chunks(
        offpolicy: tuple[FIPOGRPOTrainer, dict[str, Any]]) -> None:
    """Two loss calls of one logging step (gradient-accumulation chunks) whose extremes differ, logged by TRL's
    own ``log()``, which averages every metric list: the weights' min / max and the p99 must come out as the
    extremes over the chunks (METRIC_REDUCTIONS, docs/parameters.md), the means as the mean of the chunks'."""
    from swift_fipo.integrations.metrics import METRIC_REDUCTIONS
    trainer, inputs = offpolicy
    trainer._metrics['train'].clear()
    chunks = []
    # Nearly on-policy (weights inside the clip [0.5, 1.5]), then the fixture's batch (weights at its bounds).
    generator = torch.Generator().manual_seed(2)
    near = current_logps(trainer, inputs) + 0.02 * torch.randn(inputs['old_per_token_logps'].shape, generator=generator)
    for old in (near, inputs['old_per_token_logps']):
        trainer._compute_loss(trainer.model, dict(inputs, old_per_token_logps=old))
        chunks.append({key: float(value) for key, value in trainer.last_fipo_stats.summary.items()})
    for key in ('influence_weight_min', 'influence_weight_max', 'neg_adv_ratio_p99'):
        assert chunks[0][key] != chunks[1][key], key  # otherwise a mean of extremes would pass too
    trainer.log({})
    logged = trainer.state.log_history[-1]
    assert not trainer._metrics['train']  # TRL's log() consumed the step's lists
    for key, how in METRIC_REDUCTIONS.items():
        values = [chunk[key] for chunk in chunks]
        expected = min(values) if how == 'min' else max(values) if how == 'max' else sum(values) / 2
        assert logged[f'fipo/{key}'] == pytest.approx(expected, rel=1e-6, abs=1e-7), key


def test_sequence_level_importance_sampling_tests_the_sequence_ratio(
        offpolicy: tuple[FIPOGRPOTrainer, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, inputs = offpolicy
    mask = inputs['completion_mask'].bool()
    log_ratio = current_logps(trainer, inputs) - inputs['old_per_token_logps']
    sequence_ratio = torch.exp(torch.where(mask, log_ratio, 0.0).sum(-1) / mask.sum(-1)).unsqueeze(-1)
    # A threshold just under the largest ratio of a negative-advantage row: the safety rule fires there.
    negative = inputs['advantages'] < 0
    assert negative.any() and (~negative).any()
    threshold = 0.999 * sequence_ratio.squeeze(-1)[negative].max().item()
    monkeypatch.setattr(trainer, 'importance_sampling_level', 'sequence')
    monkeypatch.setattr(trainer, 'fipo_config', FIPOConfig(decay_rate=4.0, clip_range=0.5, safety_threshold=threshold))
    trainer._compute_loss(trainer.model, dict(inputs))
    stats = trainer.last_fipo_stats
    expected, expected_stats = compute_fipo_influence(log_ratio, mask, inputs['advantages'], trainer.fipo_config,
                                                      ratio=sequence_ratio)
    torch.testing.assert_close(stats.weight[mask], expected[mask], rtol=1e-4, atol=1e-4)
    assert torch.equal(stats.safety_mask, expected_stats.safety_mask)
    # The rule is decided per sequence: a row is flagged on every token or on none.
    flagged_rows = (~stats.safety_mask).any(-1)
    assert flagged_rows.any() and not flagged_rows.all()
    assert torch.equal(flagged_rows, (~stats.safety_mask).all(-1))
    assert torch.equal(flagged_rows, (inputs['advantages'] < 0) & (sequence_ratio.squeeze(-1) > threshold))


@pytest.mark.parametrize('loss_type', TESTED_LOSS_TYPES)
@pytest.mark.parametrize('scale', [1.0, 2.0])
def test_constant_weights_scale_trl_loss(offpolicy: tuple[FIPOGRPOTrainer, dict[str, Any]],
                                         monkeypatch: pytest.MonkeyPatch, scale: float, loss_type: str) -> None:
    trainer, inputs = offpolicy
    monkeypatch.setattr(trainer, 'loss_type', loss_type)

    def constant_influence(log_ratio: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
                           config: FIPOConfig, ratio: Any = None) -> Any:
        weight, stats = compute_fipo_influence(log_ratio, mask, advantages, config, ratio)
        return torch.full_like(weight, scale), stats

    # The trainer reweights through ops.loss.reweight_advantages, which calls this.
    monkeypatch.setattr(fipo_loss_module, 'compute_fipo_influence', constant_influence)
    fipo_loss = trainer._compute_loss(trainer.model, dict(inputs))
    dapo_loss = GRPOTrainer._compute_loss(trainer, trainer.model, dict(inputs))
    # Weights of 1 reproduce TRL's loss exactly; every supported loss is linear in the weight.
    if scale == 1.0:
        assert torch.equal(fipo_loss, dapo_loss)
    else:
        torch.testing.assert_close(fipo_loss, scale * dapo_loss)


# TRL options that change the loss FIPO reweights, each set on a real trainer and batch. vLLM and tool-calling
# rollouts cannot run here (no CUDA; the tiny model calls no tools), so their outputs are put into the batch
# as TRL's generation would: vLLM's importance-sampling ratio ([B, T] in token modes, [B, 1] in sequence
# modes, 0 where a *_mask mode drops) and a tool_mask with 0 on tool-output tokens.
CONFIG_FIELDS = {field.name for field in dataclasses.fields(GRPOConfig)}
# The options newer TRL releases added run only where this TRL's GRPOConfig has them.
LOSS_OPTIONS = ['token', 'sequence', 'vllm_is_token', 'vllm_is_sequence', 'tool_mask', 'tool_mask_sequence', 'delta',
                'beta', 'top_entropy_quantile'] + [
    pytest.param(option, marks=only_where(option in CONFIG_FIELDS, f'trl {fipo_trl.trl_version()} has no {option}'))
    for option in ('off_policy_mask_threshold', 'entropy_coef')]


def set_loss_option(option: str, trainer: FIPOGRPOTrainer, inputs: dict[str, Any],
                    monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Turn one TRL option on for ``trainer`` (undone by monkeypatch); returns the batch it needs."""
    batch = dict(inputs)
    shape = batch['completion_mask'].shape
    generator = torch.Generator().manual_seed(2)
    if option.endswith('sequence'):
        monkeypatch.setattr(trainer, 'importance_sampling_level', 'sequence')
    if option.startswith('vllm_is'):
        monkeypatch.setattr(trainer, 'use_vllm', True)
        monkeypatch.setattr(trainer, 'vllm_importance_sampling_correction', True)
        rows = (shape[0], 1) if option == 'vllm_is_sequence' else shape
        ratio = 0.5 + torch.rand(rows, generator=generator)
        ratio[0] = 0.0  # a masked-out row (or tokens)
        batch['importance_sampling_ratio'] = ratio
    if option.startswith('tool_mask'):
        tool_mask = torch.ones(shape, dtype=batch['completion_mask'].dtype)
        tool_mask[:, 2:5] = 0  # a tool's output inside every completion
        batch['tool_mask'] = tool_mask
        monkeypatch.setattr(trainer, 'tools', [reward_length], raising=False)  # TRL 0.26 reads tool_mask only then
    if option == 'delta':
        monkeypatch.setattr(trainer.args, 'delta', 1.5)
        monkeypatch.setattr(trainer, 'fipo_config', dataclasses.replace(trainer.fipo_config, delta=1.5))
    if option == 'beta':
        monkeypatch.setattr(trainer, 'beta', 0.1)
        batch['ref_per_token_logps'] = batch['old_per_token_logps'] + 0.2 * torch.randn(shape, generator=generator)
    if option == 'top_entropy_quantile':
        monkeypatch.setattr(trainer, 'top_entropy_quantile', 0.5)
    if option == 'off_policy_mask_threshold':
        monkeypatch.setattr(trainer, 'off_policy_mask_threshold', 0.02)
    if option == 'entropy_coef':  # an entropy bonus added after the policy term
        monkeypatch.setattr(trainer, 'entropy_coef', 0.05)
        monkeypatch.setattr(trainer, '_entropy_bonus_enabled', True)
    return batch


@pytest.mark.parametrize('loss_type', TESTED_LOSS_TYPES)
@pytest.mark.parametrize('option', LOSS_OPTIONS)
def test_each_loss_option_trains_fipo(offpolicy: tuple[FIPOGRPOTrainer, dict[str, Any]],
                                      monkeypatch: pytest.MonkeyPatch, option: str, loss_type: str) -> None:
    trainer, inputs = offpolicy
    monkeypatch.setattr(trainer, 'loss_type', loss_type)
    without_option = trl_loss(trainer, inputs)
    batch = set_loss_option(option, trainer, inputs, monkeypatch)
    fipo_loss = trainer._compute_loss(trainer.model, dict(batch))
    plain = trl_loss(trainer, batch)
    assert option == 'token' or not torch.allclose(plain, without_option)  # the option is on, in TRL's loss

    # Off-policy: TRL's own loss with A * w, w the float64 brute force on a log-ratio computed independently.
    torch.testing.assert_close(fipo_loss, trl_loss(trainer, batch, reference_weight(trainer, batch)),
                               rtol=1e-4, atol=1e-6)
    assert not torch.allclose(fipo_loss, plain)

    # Weights forced to 1: exactly TRL's loss.
    def unit_influence(log_ratio: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, config: FIPOConfig,
                       ratio: Any = None) -> Any:
        weight, stats = compute_fipo_influence(log_ratio, mask, advantages, config, ratio)
        return torch.ones_like(weight), stats

    monkeypatch.setattr(fipo_loss_module, 'compute_fipo_influence', unit_influence)
    assert torch.equal(trainer._compute_loss(trainer.model, dict(batch)), plain)


def test_tool_output_tokens_do_not_enter_future_kl(offpolicy: tuple[FIPOGRPOTrainer, dict[str, Any]],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, inputs = offpolicy
    batch = set_loss_option('tool_mask', trainer, inputs, monkeypatch)
    trainer._compute_loss(trainer.model, dict(batch))
    weight = trainer.last_fipo_stats.weight
    # Other log-probs at the tool tokens change nothing where TRL's loss counts.
    tool = ~batch['tool_mask'].bool()
    moved = dict(batch, old_per_token_logps=torch.where(tool, batch['old_per_token_logps'] - 2.0,
                                                        batch['old_per_token_logps']))
    trainer._compute_loss(trainer.model, moved)
    counted = loss_mask(batch)
    assert torch.equal(trainer.last_fipo_stats.weight[counted], weight[counted])
    # ... while at a model-sampled token they do.
    moved['old_per_token_logps'] = moved['old_per_token_logps'] - 2.0 * counted
    trainer._compute_loss(trainer.model, moved)
    assert not torch.allclose(trainer.last_fipo_stats.weight[counted], weight[counted])


def test_steps_per_generation_trains_its_later_steps_with_fipo(model_dir: Path, tmp_path: Path) -> None:
    # num_iterations=1, but each rollout (8 completions) feeds two optimizer steps of 4: the second step's
    # policy has moved since the rollout, so it is off-policy.
    args = grpo_args(tmp_path, num_iterations=1, steps_per_generation=2)
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)  # off-policy: no "nothing is reused" warning
        # The symmetric clip: Future-KL of either sign moves the weights off 1.
        trainer = make_trainer(model_dir, args, cls=RecordingTrainer,
                               fipo=FIPOConfig(decay_rate=8.0, clip_high_only=False))
    trainer.train()
    assert len(trainer.records) == 4 and not any(record['reuse'] for record in trainer.records)
    for step, record in enumerate(trainer.records):
        torch.testing.assert_close(record['fipo'], record['reference'], rtol=1e-4, atol=1e-6)
        if step % 2 == 0:  # the first step of a rollout: on-policy
            torch.testing.assert_close(record['weight'], torch.ones_like(record['weight']))
            torch.testing.assert_close(record['fipo'], record['dapo'])
        else:
            assert not torch.allclose(record['weight'], torch.ones_like(record['weight']))
            assert abs(record['fipo'] - record['dapo']) > 1e-6 * max(1.0, abs(record['dapo']))


def test_refuses_liger_before_loading_the_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='use_liger_kernel'):
        make_trainer(MISSING_MODEL, grpo_args(tmp_path, use_liger_kernel=True))


@pytest.mark.parametrize('loss_type', sorted(OFFERED_LOSS_TYPES - set(fipo_trl.SUPPORTED_LOSS_TYPES)))
def test_refuses_losses_that_are_not_the_clipped_surrogate(tmp_path: Path, loss_type: str) -> None:
    with pytest.raises(ValueError, match=f"loss_type='{loss_type}' \\({fipo_trl.REFUSED_LOSS_TYPES[loss_type]}"):
        make_trainer(MISSING_MODEL, grpo_args(tmp_path, loss_type=loss_type))


@pytest.mark.parametrize('loss_type',
                         sorted({'no_such_loss'} | set(fipo_trl.SUPPORTED_LOSS_TYPES) - OFFERED_LOSS_TYPES))
def test_refuses_a_loss_type_this_trl_lacks(tmp_path: Path, loss_type: str) -> None:
    # GRPOConfig takes any string; without this check TRL would fail only at the first loss step.
    with pytest.raises(ValueError, match=f"loss_type='{loss_type}'"):
        make_trainer(MISSING_MODEL, grpo_args(tmp_path, loss_type=loss_type))


def test_every_loss_type_trl_offers_is_tested_or_refused(tmp_path: Path) -> None:
    assert set(TESTED_LOSS_TYPES) >= {'dapo', 'grpo', 'bnpo', 'dr_grpo'}
    for loss_type in sorted(OFFERED_LOSS_TYPES - set(TESTED_LOSS_TYPES)):
        with pytest.raises(ValueError, match=f"loss_type='{loss_type}'"):
            make_trainer(MISSING_MODEL, grpo_args(tmp_path, loss_type=loss_type, importance_sampling_level='sequence'))


@only_where('luspo' in OFFERED_LOSS_TYPES, f'trl {fipo_trl.trl_version()} has no luspo loss')
def test_luspo_is_accepted_exactly_where_trl_keeps_padding_out_of_it(
        offpolicy: tuple[FIPOGRPOTrainer, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, inputs = offpolicy
    monkeypatch.setattr(trainer, 'loss_type', 'luspo')
    monkeypatch.setattr(trainer, 'importance_sampling_level', 'sequence')
    # Per-token advantages that differ only at padding positions: a loss that ignores padding cannot tell.
    at_padding = torch.where(inputs['completion_mask'].bool(), 1.0, 3.0)
    ignores_padding = torch.allclose(trl_loss(trainer, inputs, torch.ones_like(at_padding)),
                                     trl_loss(trainer, inputs, at_padding))
    assert fipo_trl.luspo_masks_padding(GRPOTrainer) == ignores_padding == accepted('luspo')


def test_loss_types_read_from_trl_are_the_ones_trl_computes(offpolicy: tuple[FIPOGRPOTrainer, dict[str, Any]],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, inputs = offpolicy
    assert {'grpo', 'dapo', 'bnpo', 'dr_grpo', 'cispo', 'sapo'} <= OFFERED_LOSS_TYPES  # every TRL >= 0.26 has these
    for loss_type in sorted(OFFERED_LOSS_TYPES):
        monkeypatch.setattr(trainer, 'loss_type', loss_type)
        assert torch.isfinite(trl_loss(trainer, inputs)), loss_type
    monkeypatch.setattr(trainer, 'loss_type', 'no_such_loss')
    with pytest.raises(ValueError, match='no_such_loss'):
        trl_loss(trainer, inputs)


def test_refuses_an_unknown_importance_sampling_level(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="importance_sampling_level.*'segment'"):
        make_trainer(MISSING_MODEL, grpo_args(tmp_path, importance_sampling_level='segment'))


def test_refuses_a_fipo_argument_of_the_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match='FIPOConfig'):
        make_trainer(MISSING_MODEL, grpo_args(tmp_path), fipo={'decay_rate': 8})


def test_warns_when_nothing_is_reused_off_policy(model_dir: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match='nothing is reused off-policy'):
        make_trainer(model_dir, grpo_args(tmp_path, num_iterations=1))
    # More optimizer steps than accumulation chunks per rollout is off-policy reuse too: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)
        try:
            make_trainer(MISSING_MODEL, grpo_args(tmp_path, num_iterations=1, steps_per_generation=2))
        except OSError:
            pass  # the validation passed; GRPOTrainer then fails to load the missing model


def test_delta_follows_grpo_config_and_warns_on_mismatch(model_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(model_dir, grpo_args(tmp_path, delta=3.0))
    assert trainer.fipo_config == FIPOConfig(delta=3.0)
    with pytest.warns(UserWarning, match='differs from GRPOConfig.delta'):
        make_trainer(model_dir, grpo_args(tmp_path, delta=3.0), fipo=FIPOConfig(delta=5.0))


def test_capability_check_names_the_trl_version() -> None:
    check_trl_support(GRPOTrainer)  # the installed TRL has the hooks

    class NoLogpsHook:
        def _compute_loss(self, model: Any, inputs: Any) -> None: ...

    class UnsqueezesAdvantages:
        def _get_per_token_logps_and_entropies(self) -> None: ...

        def _compute_loss(self, model: Any, inputs: Any) -> Any:  # the TRL < 0.26 shape handling
            logps = self._get_per_token_logps_and_entropies()
            return logps, inputs["advantages"].unsqueeze(1)  # noqa: Q000 - TRL's spelling, which the check reads

    for cls, reason in ((NoLogpsHook, '_get_per_token_logps_and_entropies'), (UnsqueezesAdvantages, r'\[B, T\]')):
        with pytest.raises(UnsupportedTRLError, match=reason) as error:
            check_trl_support(cls)
        assert f'trl {fipo_trl.trl_version()}' in str(error.value)


def test_runtime_guard_when_trl_reads_advantages_first(offpolicy: tuple[FIPOGRPOTrainer, dict[str, Any]],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, inputs = offpolicy
    original = GRPOTrainer._compute_loss

    def reads_advantages_first(self: Any, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        batch['advantages']  # a TRL that uses the advantages before the log-probs exist
        return original(self, model, batch)

    monkeypatch.setattr(GRPOTrainer, '_compute_loss', reads_advantages_first)
    with pytest.raises(UnsupportedTRLError, match='without passing through the FIPO hook'):
        trainer._compute_loss(trainer.model, dict(inputs))


def test_a_deleted_trl_init_is_blamed_on_ms_swift_only_where_ms_swift_deleted_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What `import swift.rlhf_trainers.grpo_trainer` does to TRL (`del GRPOTrainer.__init__`), here without
    # ms-swift: the refusal names the class and does not blame a package that is not loaded.
    monkeypatch.delattr(GRPOTrainer, '__init__')
    with pytest.raises(RuntimeError, match=f'{GRPOTrainer.__module__}.GRPOTrainer has no __init__') as error:
        FIPOGRPOTrainer(model=MISSING_MODEL, args=grpo_args(tmp_path), reward_funcs=reward_length)
    assert 'ms-swift' not in str(error.value)
    monkeypatch.undo()
    if installed_version('ms-swift') is None:
        return
    # With ms-swift's real GRPO trainer module imported (in a process of its own: the deletion is for good).
    script = ('import importlib, sys\n'
              'from swift_fipo.integrations.trl import FIPOGRPOTrainer\n'
              'for name in ("swift.rlhf_trainers.grpo_trainer", "swift.trainers.rlhf_trainer.grpo_trainer"):\n'
              '    try:\n        importlib.import_module(name); break\n'
              '    except ModuleNotFoundError:\n        pass\n'
              'try:\n    FIPOGRPOTrainer(model="/nonexistent/model", reward_funcs=len)\n'
              'except RuntimeError as error:\n    print(error)\n')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, SWIFT_FIPO_DISABLE='1'))
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'has lost its __init__: ms-swift deletes it when swift.' in result.stdout, result.stdout[-3000:]


# Classes standing in for trl.GRPOTrainer: what Unsloth does (its import rebinds trl.GRPOTrainer, so a later
# `import swift_fipo...` builds FIPOGRPOTrainer on top of the stand-in), and what a user can do.
def fipo_trl_over(stand_in: type, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fresh copy of swift_fipo.integrations.trl, imported while ``trl.GRPOTrainer`` is ``stand_in``."""
    monkeypatch.setattr(trl, 'GRPOTrainer', stand_in)
    spec = importlib.util.spec_from_file_location(f'fipo_trl_over_{stand_in.__name__}', fipo_trl.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.FIPOGRPOTrainer.__bases__ == (stand_in, )
    return module


def own_policy_loss(trainer: Any, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """A loss of the trainer's own, as Unsloth's compute_loss computes one: it never goes through _compute_loss."""
    ids = torch.cat([inputs['prompt_ids'], inputs['completion_ids']], dim=1)
    logits = model(input_ids=ids).logits[:, -inputs['completion_ids'].shape[1] - 1:-1]
    logps = torch.log_softmax(logits.float(), -1).gather(-1, inputs['completion_ids'].unsqueeze(-1)).squeeze(-1)
    return -(logps * inputs['advantages'][:, None] * inputs['completion_mask']).sum() / inputs['completion_mask'].sum()


class StandInCountingLoss(GRPOTrainer):
    """Stands in for trl.GRPOTrainer with no __init__ of its own; its compute_loss goes through TRL's."""

    calls = 0

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor:
        StandInCountingLoss.calls += 1  # on this class: type(self) is the FIPO trainer built on it
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class StandInOwnLoss(GRPOTrainer):
    """Stands in for trl.GRPOTrainer with no __init__ of its own and a compute_loss of its own."""

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor:
        return own_policy_loss(self, model, inputs)


def test_a_stand_in_without_its_own_init_trains_fipo(model_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Inheriting TRL's __init__ is not ms-swift's deletion: the trainer builds and trains with FIPO.
    module = fipo_trl_over(StandInCountingLoss, monkeypatch)
    StandInCountingLoss.calls = 0
    trainer = make_trainer(model_dir, grpo_args(tmp_path, max_steps=2), cls=module.FIPOGRPOTrainer,
                           fipo=FIPOConfig(decay_rate=8.0))
    trainer.train()
    assert StandInCountingLoss.calls == 2 and trainer.state.global_step == 2
    logs = [entry for entry in trainer.state.log_history if 'loss' in entry]
    assert [entry['fipo/future_kl_mean'] == pytest.approx(0.0, abs=1e-6) for entry in logs] == [True, False]
    assert logs[1]['fipo/influence_weight_mean'] > 1.0  # the reuse step was reweighted


class OwnLossSubclass(FIPOGRPOTrainer):
    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor:
        # A comment naming self._compute_loss(model, inputs) does not count as a call.
        return GRPOTrainer._compute_loss(self, model, inputs)  # TRL's loss around FIPO's hook


class DelegatingSubclass(FIPOGRPOTrainer):
    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor:
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


@pytest.mark.parametrize('where', ['subclass', 'stand_in'])
def test_refuses_a_compute_loss_that_never_calls_compute_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              where: str) -> None:
    # A compute_loss that reaches _compute_loss through super() passes (the missing model then fails to load).
    with pytest.raises(OSError):
        make_trainer(MISSING_MODEL, grpo_args(tmp_path), cls=DelegatingSubclass)
    if where == 'subclass':
        cls, error_cls, owner = OwnLossSubclass, UnsupportedTRLError, OwnLossSubclass
    else:
        module = fipo_trl_over(StandInOwnLoss, monkeypatch)
        cls, error_cls, owner = module.FIPOGRPOTrainer, module.UnsupportedTRLError, StandInOwnLoss
    # Refused before the model loads, naming the compute_loss that bypasses FIPO; the stand-in has no
    # __init__ of its own, and that is not blamed on ms-swift.
    with pytest.raises(error_cls, match=f'{owner.__qualname__}.compute_loss\\) never calls self._compute_loss') \
            as error:
        make_trainer(MISSING_MODEL, grpo_args(tmp_path), cls=cls)
    assert 'ms-swift' not in str(error.value) and 'would train without FIPO' in str(error.value)


def generated_compute_loss() -> Any:
    """A compute_loss compiled from a string, as code generators make them: inspect finds no source."""
    namespace: dict[str, Any] = {'GRPOTrainer': GRPOTrainer}
    exec(compile('def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):\n'
                 '    return GRPOTrainer._compute_loss(self, model, inputs)\n', '<generated>', 'exec'), namespace)
    return namespace['compute_loss']


class SkipsFIPOLoss(FIPOGRPOTrainer):
    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        return GRPOTrainer._compute_loss(self, model, inputs)  # not super(): FIPO's hook is skipped


@pytest.mark.parametrize('how', ['generated_compute_loss', 'override_skips_super'])
def test_first_step_refuses_a_step_that_bypassed_fipo(model_dir: Path, tmp_path: Path, how: str) -> None:
    if how == 'generated_compute_loss':
        cls = type('GeneratedLossTrainer', (FIPOGRPOTrainer, ), {'compute_loss': generated_compute_loss()})
        assert fipo_trl.compute_loss_reaches_hook(cls) == (None, cls)  # the source scan cannot decide
    else:
        cls = SkipsFIPOLoss
        assert fipo_trl.compute_loss_reaches_hook(cls)[0] is True  # compute_loss is TRL's
    trainer = make_trainer(model_dir, grpo_args(tmp_path, max_steps=2), cls=cls)
    before = [parameter.detach().clone() for parameter in trainer.model.parameters()]
    with pytest.raises(UnsupportedTRLError, match=f'{cls.__qualname__} trained a step without FIPO'):
        trainer.train()
    # Refused inside the first step, before the optimizer moved anything.
    assert trainer.state.global_step == 0
    assert all(torch.equal(old, new) for old, new in zip(before, trainer.model.parameters(), strict=True))


def unsloth_shaped(name: str, module: str, mark_train: bool) -> type:
    """A trainer shaped as unsloth/models/rl.py generates UnslothGRPOTrainer: a _Unsloth class with its own
    compute_loss (never calling _compute_loss), under a subclass with its own __init__, whose train() Unsloth
    wraps with a resume guard marked ``_unsloth_resume_guard``."""
    def compute_loss(self: Any, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor:
        return own_policy_loss(self, model, inputs)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        super(outer, self).__init__(*args, **kwargs)

    inner = type(f'_{name}', (GRPOTrainer, ), {'compute_loss': compute_loss, '__module__': module})
    outer = type(name, (inner, ), {'__init__': __init__, '__module__': module})
    if mark_train:
        original_train = outer.train

        def train(self: Any, *args: Any, **kwargs: Any) -> Any:
            return original_train(self, *args, **kwargs)

        train._unsloth_resume_guard = True  # type: ignore[attr-defined]
        outer.train = train  # type: ignore[method-assign]
    return outer


@pytest.mark.parametrize('shape', ['marked_methods', 'compiled_cache_module'])
def test_refuses_unsloth_patched_trainer_naming_unsloth(model_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, shape: str) -> None:
    if shape == 'marked_methods':  # found by the mark alone: a neutral name, in this test module
        stand_in = unsloth_shaped('PatchedGRPOTrainer', __name__, mark_train=True)
    else:  # found by where Unsloth compiles it (unsloth_zoo's create_new_function)
        stand_in = unsloth_shaped('UnslothGRPOTrainer', 'unsloth_compiled_cache.UnslothGRPOTrainer', mark_train=False)
    module = fipo_trl_over(stand_in, monkeypatch)
    with pytest.raises(module.UnsupportedTRLError, match='does not serve Unsloth yet') as error:
        make_trainer(model_dir, grpo_args(tmp_path), cls=module.FIPOGRPOTrainer)
    assert f'{stand_in.__module__}.{stand_in.__qualname__}' in str(error.value)
    assert 'never calls _compute_loss' in str(error.value)


def test_doctor_says_whether_the_installed_trl_serves_fipogrpotrainer(monkeypatch):
    from swift_fipo.integrations.trl import hooks
    diagnosis = hooks.diagnose()
    assert len(diagnosis.lines) == 1 and 'served by swift_fipo.FIPOGRPOTrainer' in diagnosis.lines[0], diagnosis.lines
    # A verdict, as every host gives one: doctor's exit status counts it.
    assert diagnosis.verdicts == [('swift_fipo.FIPOGRPOTrainer (trl)', True)]
    monkeypatch.setattr(fipo_trl, 'lost_init_refusal', lambda cls: 'its __init__ was deleted')
    diagnosis = hooks.diagnose()
    assert 'not in this process: its __init__ was deleted' in diagnosis.lines[0]
    assert diagnosis.verdicts == [('swift_fipo.FIPOGRPOTrainer (trl)', False)]


# --- one message per refusal that says what is true (issue 29 item 8) ---------------------------------------


def listed_loss_types(message: str) -> list[str]:
    """The loss types a refusal offers: 'one of A, B on the installed trl'."""
    return message.split('normalised, one of ')[1].split(' on the installed trl')[0].split(', ')


@pytest.mark.parametrize('loss_type', [
    pytest.param(loss_type, marks=only_where(not accepted(loss_type),
                                             f'trl {fipo_trl.trl_version()} trains {loss_type}'))
    for loss_type in ('fipo', 'cispo', 'no_such_loss', 'luspo')])
def test_a_refused_loss_type_says_fipo_always_applies_and_lists_only_what_this_trl_trains(tmp_path: Path,
                                                                                         loss_type: str) -> None:
    with pytest.raises(ValueError) as refused:
        make_trainer(MISSING_MODEL, grpo_args(tmp_path, loss_type=loss_type))
    message = str(refused.value)
    assert 'FIPOGRPOTrainer always trains with FIPO; GRPOConfig.loss_type only chooses how its clipped loss is ' \
        'normalised' in message, message
    assert f'got loss_type={loss_type!r} (' in message
    # Only what the installed TRL trains with FIPO, each checked by the validation itself.
    listed = listed_loss_types(message)
    assert listed and all(accepted(each) for each in listed), listed
    assert set(listed) == {each for each in fipo_trl.SUPPORTED_LOSS_TYPES if accepted(each)}
    assert f'trl {fipo_trl.trl_version()}' in message


# --- one rule on every host: a dual clip or filter inside the PPO clip (issue 27 item 3) -------------------

RATIO_RULE_REFUSALS = [
    (dict(delta=1.1, epsilon_high=0.28), None, 'GRPOConfig.delta must be > 1 + GRPOConfig.epsilon_high = 1.28'),
    (dict(delta=1.2), None, 'GRPOConfig.delta must be > 1 + GRPOConfig.epsilon = 1.2'),
    (dict(epsilon_high=0.28), FIPOConfig(filter_threshold=1.05),
     'FIPOConfig.filter_threshold must be > 1 + GRPOConfig.epsilon_high = 1.28'),
    (dict(delta=3.0, epsilon_high=0.28), FIPOConfig(delta=1.28),
     'FIPOConfig.delta must be > 1 + GRPOConfig.epsilon_high = 1.28'),
    (dict(delta=1.25, epsilon_high=0.28), FIPOConfig(delta=3.0),  # TRL's own dual clip, whatever FIPO's is
     'GRPOConfig.delta must be > 1 + GRPOConfig.epsilon_high = 1.28'),
]


@pytest.mark.parametrize('values, fipo, message', RATIO_RULE_REFUSALS)
def test_a_dual_clip_or_filter_inside_the_ppo_clip_is_refused_before_the_model_loads(
        tmp_path: Path, values: dict[str, Any], fipo: Any, message: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # the delta mismatch warning is not what is tested
        with pytest.raises(ValueError, match=re.escape(message)):
            make_trainer(MISSING_MODEL, grpo_args(tmp_path, **values), fipo=fipo)


def test_a_dual_clip_and_filter_beyond_the_ppo_clip_are_accepted(tmp_path: Path) -> None:
    with pytest.raises(OSError):  # validation passed; the missing model then fails to load
        make_trainer(MISSING_MODEL, grpo_args(tmp_path, delta=1.3, epsilon_high=0.28),
                     fipo=FIPOConfig(delta=1.3, filter_threshold=1.29))


# --- a log-prob override that skips FIPO's hook (issue 27 item 5) ------------------------------------------


class LogpsWithoutSuper(FIPOGRPOTrainer):
    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        return GRPOTrainer._get_per_token_logps_and_entropies(self, *args, **kwargs)  # not super(): skips FIPO


class LogpsWithSuper(FIPOGRPOTrainer):
    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        return super()._get_per_token_logps_and_entropies(*args, **kwargs)


def test_a_logps_override_without_super_is_refused_at_construction_naming_the_subclass(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedTRLError) as refused:
        make_trainer(MISSING_MODEL, grpo_args(tmp_path), cls=LogpsWithoutSuper)
    message = str(refused.value)
    assert f"LogpsWithoutSuper.{fipo_trl.layout.LOGPS_METHOD}) overrides FIPOGRPOTrainer's and never calls super()" \
        in message, message
    assert 'would train without FIPO' in message
    assert 'pip install' not in message and 'cannot hook this TRL' not in message  # the TRL version is not to blame
    with pytest.raises(OSError):  # calling super() passes; the missing model then fails to load
        make_trainer(MISSING_MODEL, grpo_args(tmp_path), cls=LogpsWithSuper)


def generated_logps_without_super() -> Any:
    """A log-prob override compiled from a string (no source to read), which skips FIPO's hook."""
    namespace: dict[str, Any] = {'GRPOTrainer': GRPOTrainer}
    exec(compile('def _get_per_token_logps_and_entropies(self, *args, **kwargs):\n'
                 '    return GRPOTrainer._get_per_token_logps_and_entropies(self, *args, **kwargs)\n',
                 '<generated>', 'exec'), namespace)
    return namespace['_get_per_token_logps_and_entropies']


def test_a_logps_override_without_source_is_refused_at_the_first_loss_naming_the_subclass(
        model_dir: Path, tmp_path: Path) -> None:
    cls = type('GeneratedLogps', (FIPOGRPOTrainer, ), {fipo_trl.layout.LOGPS_METHOD: generated_logps_without_super()})
    trainer = make_trainer(model_dir, grpo_args(tmp_path, max_steps=1), cls=cls)  # the source scan cannot decide
    with pytest.raises(UnsupportedTRLError) as refused:
        trainer.train()
    message = str(refused.value)
    assert "GeneratedLogps._get_per_token_logps_and_entropies) overrides FIPOGRPOTrainer's" in message, message
    assert 'pip install' not in message and 'cannot hook this TRL' not in message
    assert trainer.state.global_step == 0


# --- every training step goes through FIPO; evaluation metrics are eval's (issue 29 item 5) -----------------


def compute_loss_bypassing_after_warm_up() -> Any:
    """A compute_loss compiled from a string (the construction check cannot read it) that goes through
    _compute_loss for the first optimizer step, then computes TRL's plain loss, bypassing FIPO."""
    namespace: dict[str, Any] = {'GRPOTrainer': GRPOTrainer}
    exec(compile('def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):\n'
                 '    if self.state.global_step >= 1:\n'
                 '        return GRPOTrainer._compute_loss(self, model, inputs)\n'
                 '    return self._compute_loss(model, inputs)\n', '<generated>', 'exec'), namespace)
    return namespace['compute_loss']


class ParameterSnapshots(TrainerCallback):
    """The model's parameters after every optimizer step."""

    def __init__(self) -> None:
        self.after_step: list[list[torch.Tensor]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.after_step.append([parameter.detach().clone() for parameter in model.parameters()])


def test_a_step_that_bypasses_fipo_after_a_warm_up_is_refused_before_its_optimizer_step(
        model_dir: Path, tmp_path: Path) -> None:
    cls = type('WarmUpThenBypass', (FIPOGRPOTrainer, ), {'compute_loss': compute_loss_bypassing_after_warm_up()})
    assert fipo_trl.compute_loss_reaches_hook(cls) == (None, cls)
    snapshots = ParameterSnapshots()
    trainer = make_trainer(model_dir, grpo_args(tmp_path, max_steps=3), cls=cls, callbacks=[snapshots])
    with pytest.raises(UnsupportedTRLError, match='WarmUpThenBypass trained a step without FIPO'):
        trainer.train()
    # The first step trained (with FIPO); the second was refused before its optimizer step.
    assert trainer.state.global_step == 1 and len(snapshots.after_step) == 1
    assert all(torch.equal(old, new) for old, new in zip(snapshots.after_step[0], trainer.model.parameters(),
                                                         strict=True))


def test_fipo_metrics_of_evaluation_are_logged_under_eval_not_train(model_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(model_dir, grpo_args(tmp_path, per_device_eval_batch_size=4),
                           eval_dataset=Dataset.from_dict({'prompt': PROMPTS[:4]}))
    trainer._metrics['train'].clear()
    trainer.evaluate()
    logged = trainer.state.log_history[-1]  # what TRL's log() wrote for the evaluation: its eval metric lists
    assert 'eval_loss' in logged and 'eval_fipo/influence_weight_mean' in logged, sorted(logged)
    assert logged['eval_fipo/influence_weight_mean'] == pytest.approx(1.0)  # on-policy: weights of 1
    assert not any(key.startswith('fipo/') for key in logged)
    # Nothing of the evaluation waits in the training step's lists, to be averaged into its fipo/* values.
    assert not any(key.startswith('fipo/') and values for key, values in trainer._metrics['train'].items())


# Not marked ms_swift: the ms-swift suites that select by that mark run in one process, where ms-swift's import has
# deleted TRL's GRPOTrainer.__init__ and this file is skipped; it runs where this file runs on its own (4.6.0's suite).
@only_where(installed_version('ms-swift') is not None, 'ms-swift is not installed')
def test_doctor_serves_trl_where_its_own_ms_swift_check_deleted_trls_init() -> None:
    """Doctor imports ms-swift's GRPO trainer for ms-swift's verdict, which deletes TRL's GRPOTrainer.__init__ in
    doctor's process: TRL's verdict must still be about a TRL program (served), saying so (a process of its own:
    the deletion is for good)."""
    script = ('import importlib\n'
              'from swift_fipo.integrations.ms_swift import layout\n'
              'importlib.import_module(layout.module_path(layout.HF_TRAINER_MODULE))\n'
              'from swift_fipo.integrations.trl import hooks\n'
              'diagnosis = hooks.diagnose()\n'
              'print(diagnosis.verdicts)\n'
              'print(diagnosis.lines)\n')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[('swift_fipo.FIPOGRPOTrainer (trl)', True)]" in result.stdout, result.stdout[-3000:]
    assert "in a process that does not import ms-swift's GRPO trainer" in result.stdout
