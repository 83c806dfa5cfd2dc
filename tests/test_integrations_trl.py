"""FIPOGRPOTrainer on a real TRL GRPOTrainer, with a tiny local Qwen2 model on CPU."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip('trl')

from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

import swift_fipo.integrations.trl as fipo_trl  # noqa: E402
from swift_fipo.config import FIPOConfig  # noqa: E402
from swift_fipo.integrations.trl import FIPOGRPOTrainer, UnsupportedTRLError, check_trl_support  # noqa: E402
from swift_fipo.ops.influence import compute_fipo_influence  # noqa: E402
import swift_fipo.ops.loss as fipo_loss_module  # noqa: E402

from tiny_trl_model import PROMPTS, build_tiny_model  # noqa: E402

MISSING_MODEL = '/nonexistent/model'  # refusals must happen before GRPOTrainer tries to load it
# ms-swift's GRPO trainer module deletes trl.GRPOTrainer.__init__ when another test module imports it;
# scripts/test.sh therefore also runs this file in a process of its own.


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


class RecordingTrainer(FIPOGRPOTrainer):
    """Also computes TRL's own DAPO loss on every batch, with the same parameters, for comparison."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[dict[str, Any]] = []
        self._seen: set[bytes] = set()

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        fipo_loss = super()._compute_loss(model, inputs)
        weight = self.last_fipo_stats.weight
        dapo_loss = GRPOTrainer._compute_loss(self, model, inputs)  # _fipo_batch is None: no reweighting
        key = inputs['completion_ids'].numpy().tobytes()
        self.records.append({'reuse': key in self._seen, 'fipo': fipo_loss.detach().clone(),
                             'dapo': dapo_loss.detach().clone(), 'weight': weight[inputs['completion_mask'].bool()]})
        self._seen.add(key)
        return fipo_loss


def test_training_applies_fipo_on_reuse_steps_only(model_dir: Path, tmp_path: Path) -> None:
    config = FIPOConfig(decay_rate=8.0)
    trainer = make_trainer(model_dir, grpo_args(tmp_path), cls=RecordingTrainer, fipo=config)
    trainer.train()

    # num_iterations=2, one micro-batch per step: generate, reuse, generate, reuse.
    assert [record['reuse'] for record in trainer.records] == [False, True, False, True]
    for record in trainer.records:
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
    for entry, record in zip(logs, trainer.records):
        assert expected_keys <= set(entry)
        assert all(math.isfinite(entry[key]) for key in expected_keys)
        mean_weight = record['weight'].mean().item()
        assert entry['fipo/influence_weight_mean'] == pytest.approx(mean_weight, rel=1e-5)
        if record['reuse']:
            assert entry['fipo/future_kl_mean'] != 0.0 and entry['fipo/influence_weight_mean'] > 1.0
        else:
            assert entry['fipo/future_kl_mean'] == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope='module')
def offpolicy(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[FIPOGRPOTrainer, dict[str, Any]]:
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


def current_logps(trainer: FIPOGRPOTrainer, inputs: dict[str, Any]) -> torch.Tensor:
    """The policy's log-probs of the completion tokens, computed here without TRL's helpers."""
    ids = torch.cat([inputs['prompt_ids'], inputs['completion_ids']], dim=1)
    attention = torch.cat([inputs['prompt_mask'], inputs['completion_mask']], dim=1)
    with torch.no_grad():
        logits = trainer.model(input_ids=ids, attention_mask=attention).logits
    logits = logits[:, -inputs['completion_ids'].shape[1] - 1:-1] / trainer.temperature
    return torch.log_softmax(logits.float(), -1).gather(-1, inputs['completion_ids'].unsqueeze(-1)).squeeze(-1)


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


@pytest.mark.parametrize('loss_type', fipo_trl.SUPPORTED_LOSS_TYPES)
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


def test_refuses_liger_before_loading_the_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='use_liger_kernel'):
        make_trainer(MISSING_MODEL, grpo_args(tmp_path, use_liger_kernel=True))


@pytest.mark.parametrize('loss_type', ['sapo', 'cispo', 'luspo'])
def test_refuses_losses_that_are_not_the_clipped_surrogate(tmp_path: Path, loss_type: str) -> None:
    extra = {'importance_sampling_level': 'sequence'} if loss_type == 'luspo' else {}
    with pytest.raises(ValueError, match=f"loss_type.*{loss_type}"):
        make_trainer(MISSING_MODEL, grpo_args(tmp_path, loss_type=loss_type, **extra))


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
            return logps, inputs["advantages"].unsqueeze(1)

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


def test_refuses_clearly_when_ms_swift_deleted_trl_init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Reproduces what `import swift.rlhf_trainers.grpo_trainer` does to TRL (`del GRPOTrainer.__init__`).
    if '__init__' in vars(GRPOTrainer):
        monkeypatch.delattr(GRPOTrainer, '__init__')
    with pytest.raises(RuntimeError, match='ms-swift deletes it'):
        FIPOGRPOTrainer(model=MISSING_MODEL, args=grpo_args(tmp_path), reward_funcs=reward_length)
