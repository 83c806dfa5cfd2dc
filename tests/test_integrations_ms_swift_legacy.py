"""FIPO on an ms-swift without native FIPO (3.11 - 4.2.1): the installed trainer's own loss, in-process.

The trainer object is made with ``__new__`` (``__init__`` needs a model and a dataset) and given the
attributes its ``_compute_loss_and_metrics`` reads; the model forward is replaced by fixed log-probs
that require grad (a subclass overriding ``_get_per_token_logps_and_entropies``, hooked by the plugin
as the real class is). Everything else -- the clipped surrogate, KL term, entropy mask, dual clip,
rollout importance sampling, overlong filter, DAPO normalisation -- is the installed ms-swift's code.

The reference for "DAPO with A replaced by A x w" is ms-swift's own DAPO loss, with plugin off, on an
expanded batch: one row per completion token (b, t), carrying row b's log-probs, the advantage
A_b * w_bt and a completion mask that keeps only token t. DAPO's loss is a sum over tokens divided by
the step's token count (given), so the expanded batch's loss is exactly the DAPO loss with per-token
advantages A x w; the entropy threshold (a quantile over the batch's completion tokens) sees the same
tokens. The weights w come from ``tests/reference.py`` (float64, written from the definition).
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import need, not_applicable_here, only_where
from reference import brute_fipo_weight, is_close, random_inputs

from swift_fipo.integrations.interception import existing_interception
from swift_fipo.integrations.ms_swift import hooks as ms_swift
from swift_fipo.integrations.ms_swift import layout as ms_swift_layout
from swift_fipo.integrations.ms_swift import legacy as ms_swift_legacy
from swift_fipo.integrations.patches import PatchSet

pytestmark = pytest.mark.ms_swift
need('swift', 'ms-swift')
trainer_module = need(ms_swift_layout.module_path('swift.rlhf_trainers.grpo_trainer'), 'ms-swift')
GRPOTrainer = trainer_module.GRPOTrainer
if hasattr(GRPOTrainer, '_compute_fipo_influence'):
    not_applicable_here('this ms-swift has native FIPO (tested by test_integrations_ms_swift.py)')

BATCH, LENGTH = 4, 12


class _Accelerator:
    """One process: gathers return their input (accelerate's own helpers need no set-up for this)."""

    num_processes = 1
    device = torch.device('cpu')

    @staticmethod
    def gather(value: Any) -> Any:
        return value

    gather_for_metrics = gather


class FixedLogpsTrainer(GRPOTrainer):
    """ms-swift's GRPOTrainer whose forward pass returns fixed log-probs (and entropies)."""

    def _get_per_token_logps_and_entropies(self, model: Any, inputs: dict, compute_entropy: bool = False,
                                           **kwargs: Any) -> tuple[torch.Tensor, Any]:
        rows = inputs['row_of']
        return self.fixed_logps[rows], (self.fixed_entropies[rows] if compute_entropy else None)


def make_trainer(loss_type: str, logps: torch.Tensor, entropies: torch.Tensor, **settings: Any) -> FixedLogpsTrainer:
    ms_swift.install()
    ms_swift.patch_trainer_class(FixedLogpsTrainer)
    trainer = FixedLogpsTrainer.__new__(FixedLogpsTrainer)
    quantile = settings.pop('top_entropy_quantile', 1.0)
    delta = settings.pop('delta', None)
    fipo = {'fipo_clip_high_only': settings.pop('fipo_clip_high_only', True),
            'fipo_safety_threshold': settings.pop('fipo_safety_threshold', 4.0)}
    attributes = dict(
        model=SimpleNamespace(training=True), accelerator=_Accelerator(),
        args=SimpleNamespace(loss_type=loss_type, delta=delta, log_entropy=False, top_entropy_quantile=quantile,
                             fipo_decay_rate=32.0, fipo_clip_range=0.2, **fipo),
        loss_type=loss_type, compute_entropy=quantile < 1.0, top_entropy_quantile=quantile, overlong_filter=False,
        beta=0.0, kl_in_reward=False, rollout_importance_sampling_mode=None, rollout_importance_sampling_threshold=2.0,
        log_rollout_offpolicy_metrics=False, disable_rollout_importance_sampling=False,
        importance_sampling_level='token', epsilon_low=0.2, epsilon_high=0.28, off_policy_sequence_mask_delta=None,
        chord_sft_iterator=None,
        _metrics={'train': defaultdict(list), 'eval': defaultdict(list)},
        fixed_logps=logps, fixed_entropies=entropies)
    attributes.update(settings)
    for name, value in attributes.items():
        setattr(trainer, name, value)
    if loss_type == 'fipo':
        ms_swift_legacy.serve_fipo(trainer)
    return trainer


def make_batch(seed: int, truncated: bool = False) -> dict[str, Any]:
    log_ratio, mask, advantages = random_inputs(BATCH, LENGTH, seed=seed, scale=0.6)
    generator = torch.Generator().manual_seed(seed + 100)
    logps = -torch.rand(BATCH, LENGTH, generator=generator) * 3
    old = logps - log_ratio
    return {
        'logps': logps, 'entropies': torch.rand(BATCH, LENGTH, generator=generator) * 2,
        'completion_mask': mask, 'advantages': advantages, 'old_per_token_logps': old,
        'ref_per_token_logps': logps - torch.randn(BATCH, LENGTH, generator=generator) * 0.3,
        'rollout_per_token_logps': old - torch.randn(BATCH, LENGTH, generator=generator) * 0.4,
        'truncated_mask': torch.tensor([truncated, False, False, False]),
        'num_items_in_batch': mask.sum().float() + 5,  # the whole step's token count, beyond this micro-batch
        'row_of': torch.arange(BATCH),
    }


def loss_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in batch.items() if key not in ('logps', 'entropies')}


def expanded_per_token(batch: dict[str, Any], weighted_advantages: torch.Tensor) -> dict[str, Any]:
    """One row per completion token (b, t): row b's tensors, advantage A_b * w_bt, mask only at t."""
    rows, positions = batch['completion_mask'].nonzero(as_tuple=True)
    expanded = {key: batch[key][rows] for key in ('old_per_token_logps', 'ref_per_token_logps',
                                                  'rollout_per_token_logps', 'truncated_mask')}
    expanded['completion_mask'] = torch.nn.functional.one_hot(positions, LENGTH).bool()
    expanded['advantages'] = weighted_advantages[rows, positions]
    expanded['num_items_in_batch'] = batch['num_items_in_batch']
    expanded['row_of'] = rows
    return expanded


CASES = {
    'defaults': {},
    'kl term (beta 0.04)': {'beta': 0.04},
    'entropy mask (top 50%)': {'top_entropy_quantile': 0.5},
    'dual clip and filter (--delta 1.5), symmetric clip': {'delta': 1.5, 'fipo_clip_high_only': False},
    'safety rule firing (threshold 1.2)': {'fipo_safety_threshold': 1.2},
    'rollout IS weights (token_truncate)': {'rollout_importance_sampling_mode': 'token_truncate'},
    'overlong filter': {'overlong_filter': True},
}


@pytest.mark.parametrize('case', list(CASES))
def test_loss_is_ms_swift_dapo_with_reweighted_advantages(case):
    settings = dict(CASES[case])
    batch = make_batch(seed=len(case), truncated=settings.get('overlong_filter', False))
    logps = batch['logps'].clone().requires_grad_(True)
    fipo = make_trainer('fipo', logps, batch['entropies'], **dict(settings))
    loss, _ = fipo._compute_loss_and_metrics(None, loss_inputs(batch))
    (gradient,) = torch.autograd.grad(loss, logps)

    mask = batch['completion_mask'].clone()
    if settings.get('overlong_filter'):
        mask &= ~batch['truncated_mask'][:, None]
    log_ratio = batch['logps'] - batch['old_per_token_logps']
    weight, _, _ = brute_fipo_weight(log_ratio, mask, batch['advantages'], delta=settings.get('delta'),
                                     clip_high_only=settings.get('fipo_clip_high_only', True),
                                     safety_threshold=settings.get('fipo_safety_threshold', 4.0))
    weighted = (batch['advantages'].double()[:, None] * weight).float()
    reference_logps = batch['logps'].clone().requires_grad_(True)
    dapo = make_trainer('dapo', reference_logps, batch['entropies'], **dict(settings))
    expected, _ = dapo._compute_loss_and_metrics(None, expanded_per_token(batch, weighted))
    (expected_gradient,) = torch.autograd.grad(expected, reference_logps)

    assert expected.abs() > 0 and weight[mask].max() > 1  # the case exercises the weights
    assert is_close(loss.detach(), expected.detach(), tol=1e-5)
    assert is_close(gradient, expected_gradient, tol=1e-5)
    metrics = fipo._metrics['train']
    assert metrics['fipo/influence_weight_mean'] and 'fipo/future_kl_mean' in metrics
    assert is_close(torch.tensor(metrics['fipo/influence_weight_max'][-1]), weight[mask].max(), tol=1e-5)


def test_logged_minima_and_maxima_are_extremes_over_accumulation_chunks():
    """Two loss calls of one logging step (gradient-accumulation chunks) whose extremes differ, through the
    installed trainer's loss and its own ``log()``, which averages every ``_metrics`` list: the weights' min /
    max and the p99 must come out as the extremes over the chunks (METRIC_REDUCTIONS, docs/parameters.md),
    the means as the mean of the chunks' means."""
    from transformers import TrainerControl, TrainerState

    from swift_fipo.config import FIPOConfig
    from swift_fipo.integrations.metrics import METRIC_REDUCTIONS
    from swift_fipo.ops.influence import compute_fipo_influence

    batches = [make_batch(seed=11), make_batch(seed=12)]
    batches[0]['old_per_token_logps'] = batches[0]['logps'] - 0.05 * (batches[0]['logps'] -
                                                                      batches[0]['old_per_token_logps'])
    # The symmetric clip [0.8, 1.2]: the minimum moves too (high-only, every minimum is 1).
    trainer = make_trainer('fipo', batches[0]['logps'], batches[0]['entropies'], fipo_clip_high_only=False)
    chunks = []
    for batch in batches:
        trainer.fixed_logps, trainer.fixed_entropies = batch['logps'], batch['entropies']
        trainer._compute_loss_and_metrics(None, loss_inputs(batch))
        # The same summaries computed here, apart from the hook (the options make_trainer sets).
        _, stats = compute_fipo_influence(batch['logps'] - batch['old_per_token_logps'], batch['completion_mask'],
                                          batch['advantages'], FIPOConfig(clip_high_only=False))
        chunks.append({key: float(value) for key, value in stats.summary.items()})
    for key in ('influence_weight_min', 'influence_weight_max', 'neg_adv_ratio_p99'):
        assert chunks[0][key] != chunks[1][key], key  # otherwise a mean of extremes would pass too

    # What ms-swift's and transformers' log() read besides the metrics.
    for name, value in dict(state=TrainerState(), control=TrainerControl(), custom_metrics={'train': {}, 'eval': {}},
                            callback_handler=SimpleNamespace(on_log=lambda args, state, control, logs: control),
                            _logs={'prompt': []}, log_completions=False).items():
        setattr(trainer, name, value)
    trainer.args.include_num_input_tokens_seen = 'no'
    trainer.accelerator.is_main_process = True
    trainer.log({})
    logged = trainer.state.log_history[-1]
    assert not trainer._metrics['train']  # ms-swift's log() consumed the step's lists
    for key, how in METRIC_REDUCTIONS.items():
        values = [chunk[key] for chunk in chunks]
        expected = min(values) if how == 'min' else max(values) if how == 'max' else sum(values) / 2
        assert logged[f'fipo/{key}'] == pytest.approx(expected, rel=1e-5, abs=1e-6), key


def test_first_pass_equals_dapo():
    batch = make_batch(seed=3)
    batch['old_per_token_logps'] = None  # ms-swift's on-policy convention
    fipo = make_trainer('fipo', batch['logps'], batch['entropies'])
    dapo = make_trainer('dapo', batch['logps'], batch['entropies'])
    fipo_loss, _ = fipo._compute_loss_and_metrics(None, loss_inputs(batch))
    dapo_loss, _ = dapo._compute_loss_and_metrics(None, loss_inputs(batch))
    assert torch.equal(fipo_loss, dapo_loss)
    assert fipo._metrics['train']['fipo/influence_weight_mean'] == [1.0]
    assert not dapo._metrics['train']  # a dapo trainer gets no FIPO metrics


@pytest.mark.parametrize('level', ['sequence', 'sequence_token'])
def test_sequence_level_importance_sampling_gives_the_sequence_ratio_to_filter_and_safety_rule(level):
    """GSPO (`sequence`) and GSPO-token (`sequence_token`) clip the sequence ratio: FIPO's filter and safety
    rule must test that ratio, not the per-token ones."""
    batch = make_batch(seed=5)
    fipo = make_trainer('fipo', batch['logps'], batch['entropies'], importance_sampling_level=level,
                        fipo_safety_threshold=1.05)
    fipo._compute_loss_and_metrics(None, loss_inputs(batch))
    mask = batch['completion_mask']
    log_ratio = batch['logps'] - batch['old_per_token_logps']
    ratio = torch.exp((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1))[:, None]
    sequence, _, safety = brute_fipo_weight(log_ratio, mask, batch['advantages'], safety_threshold=1.05, ratio=ratio)
    token, _, _ = brute_fipo_weight(log_ratio, mask, batch['advantages'], safety_threshold=1.05)
    assert not safety[mask].all()  # the sequence ratio fired the safety rule somewhere
    assert not is_close(sequence[mask].mean(), token[mask].mean(), tol=1e-3)  # the per-token ratio would differ
    assert is_close(_logged_mean(fipo, 'influence_weight_mean'), sequence[mask].mean(), tol=1e-5)


def test_the_caller_keeps_its_plain_advantages():
    batch = make_batch(seed=7)
    inputs = loss_inputs(batch)
    fipo = make_trainer('fipo', batch['logps'], batch['entropies'])
    fipo._compute_loss_and_metrics(None, inputs)
    assert type(inputs['advantages']) is torch.Tensor and inputs['advantages'] is batch['advantages']


def test_a_loss_that_bypasses_the_reweighted_advantages_is_refused():

    class Bypassing(FixedLogpsTrainer):

        def _compute_loss_and_metrics(self, model: Any, inputs: dict) -> Any:
            # What a changed ms-swift could do: read the advantages without advantages.unsqueeze(1).
            per_token_logps, _ = self._get_per_token_logps_and_entropies(model, inputs)
            return (per_token_logps * inputs['advantages'][:, None]).sum(), {}

    PatchSet(ms_swift_legacy.trainer_patches(Bypassing)).apply()  # its source would not pass the capability check
    batch = make_batch(seed=9)
    trainer = make_trainer('fipo', batch['logps'], batch['entropies'])
    trainer.__class__ = Bypassing
    with pytest.raises(ms_swift_legacy.LegacyHookError, match='did not build its clipped surrogate'):
        trainer._compute_loss_and_metrics(None, loss_inputs(batch))


def test_installed_trainer_is_served_by_capability():
    assert ms_swift_legacy.class_is_servable(GRPOTrainer)
    report = ms_swift.install()
    assert report[trainer_module.__name__] == {'GRPOTrainer': True}
    assert ms_swift_legacy.is_patched(GRPOTrainer)
    line = ms_swift_layout.doctor_line('GRPOTrainer', True)
    assert ('refused with this TRL' if ms_swift_layout.rollout_reuse_broken() else 'reweighted advantages') in line
    assert ms_swift_layout.doctor_line('GRPOTrainer', False) is None


# --- What users see on this path, pinned (issue 20) ----------------------------------------------------------------


def _logged_mean(trainer: FixedLogpsTrainer, key: str, mode: str = 'train') -> torch.Tensor:
    return torch.tensor(trainer._metrics[mode][f'fipo/{key}'][0], dtype=torch.float64)


def test_overlong_filter_removes_truncated_completions_from_fipo():
    """--overlong_filter: ms-swift drops a truncated completion from its loss, and FIPO's weights and metrics
    must be computed over the same tokens (a truncated row's Future-KL in the logged means is a silent error)."""
    batch = make_batch(seed=21, truncated=True)
    batch['old_per_token_logps'][0] = batch['logps'][0] - 1.5  # the truncated row has a large log-ratio
    fipo = make_trainer('fipo', batch['logps'], batch['entropies'], overlong_filter=True)
    fipo._compute_loss_and_metrics(None, loss_inputs(batch))
    log_ratio = batch['logps'] - batch['old_per_token_logps']
    kept = batch['completion_mask'] & ~batch['truncated_mask'][:, None]
    expected = {}
    for name, mask in (('filtered', kept), ('unfiltered', batch['completion_mask'])):
        weight, future_kl, _ = brute_fipo_weight(log_ratio, mask, batch['advantages'])
        expected[name] = (weight[mask].mean(), future_kl[mask].mean())
    assert not is_close(expected['filtered'][1], expected['unfiltered'][1], tol=1e-3)  # the case tells them apart
    assert is_close(_logged_mean(fipo, 'influence_weight_mean'), expected['filtered'][0], tol=1e-5)
    assert is_close(_logged_mean(fipo, 'future_kl_mean'), expected['filtered'][1], tol=1e-5)


def test_a_loss_that_reads_the_advantages_early_through_get_is_refused():
    """ms-swift's own loss, preceded by an `inputs.get('advantages')` before the log-probs exist (what a
    changed ms-swift could do): that read sees the plain [B] advantages, so the step is refused even though
    the surrogate later reads the reweighted ones."""
    original = inspect.unwrap(GRPOTrainer._compute_loss_and_metrics)

    class EarlyGet(FixedLogpsTrainer):

        def _compute_loss_and_metrics(self, model: Any, inputs: dict) -> Any:
            self.early = inputs.get('advantages')
            return original(self, model, inputs)

    PatchSet([patch for patch in ms_swift_legacy.trainer_patches(EarlyGet)
              if patch.attribute == ms_swift_layout.LOSS_METHOD]).apply()
    batch = make_batch(seed=9)
    trainer = make_trainer('fipo', batch['logps'], batch['entropies'])
    trainer.__class__ = EarlyGet
    with pytest.raises(ms_swift_legacy.LegacyHookError, match=r'advantages read before it: True'):
        trainer._compute_loss_and_metrics(None, loss_inputs(batch))
    assert torch.equal(trainer.early, batch['advantages'])  # the early read saw the plain advantages
    # The same loss without the early read is served: only the .get made the difference.
    trainer.__class__ = FixedLogpsTrainer
    trainer._compute_loss_and_metrics(None, loss_inputs(batch))
    assert trainer._metrics['train']['fipo/influence_weight_mean']


def test_eval_metrics_are_logged_under_eval():
    batch = make_batch(seed=13)
    fipo = make_trainer('fipo', batch['logps'], batch['entropies'])
    fipo.model.training = False
    fipo._compute_loss_and_metrics(None, loss_inputs(batch))
    assert not [key for key in fipo._metrics['train'] if key.startswith('fipo/')]
    mask = batch['completion_mask']
    weight, _, _ = brute_fipo_weight(batch['logps'] - batch['old_per_token_logps'], mask, batch['advantages'])
    assert is_close(_logged_mean(fipo, 'influence_weight_mean', 'eval'), weight[mask].mean(), tol=1e-5)


@only_where(trainer_module.__name__ == 'swift.trainers.rlhf_trainer.grpo_trainer',
            "the parts of __init__ left out here are ms-swift 3.x's (4.0 / 4.1 build theirs differently)")
def test_the_real_init_keeps_args_loss_type_fipo(tmp_path, monkeypatch):
    """ms-swift's own GRPOTrainer.__init__, as the plugin patched it, on ms-swift's GRPOConfig: the loss takes
    the dapo branch, while the arguments ms-swift and transformers log (args.json, the parameters line)
    still say fipo. Only what needs a model, a dataset or a rollout engine is left out."""
    import json

    from swift.trainers.rlhf_arguments import GRPOConfig
    ms_swift.install()
    parent = GRPOTrainer.__mro__[1]
    monkeypatch.setattr(parent, '__init__', lambda self, *args, **kwargs: setattr(
        self, 'template', SimpleNamespace(truncation_strategy='delete', sequence_parallel_size=1)))
    monkeypatch.setattr(trainer_module, 'set_seed', lambda *args, **kwargs: None)  # needs accelerate's state
    for name in ('_prepare_chord_dataset', 'prepare_rollout', '_prepare_liger_loss'):
        monkeypatch.setattr(GRPOTrainer, name, lambda self: setattr(self, 'use_liger_loss', False))
    monkeypatch.setattr(GRPOTrainer, '_prepare_rewards', lambda self, *args: (setattr(self, 'reward_funcs', [len]),
                                                                              setattr(self, 'use_gym_env', False)))

    def config(loss_type: str) -> Any:
        args = GRPOConfig(output_dir=str(tmp_path), loss_type=loss_type, report_to=[], bf16=False, use_cpu=True,
                          eval_strategy='no')
        args.use_vllm = True  # skips building the local rollout engine (it needs the model)
        return args

    args = config('fipo')
    model = SimpleNamespace(model_meta=SimpleNamespace(is_multimodal=False), warnings_issued={},
                            forward=lambda input_ids=None: None)
    trainer = GRPOTrainer(model, args=args)
    assert trainer.loss_type == ms_swift_legacy.SERVING_LOSS_TYPE  # the loss runs the dapo branch
    assert trainer.args is args and args.loss_type == 'fipo'
    assert json.loads(args.to_json_string())['loss_type'] == 'fipo'
    dapo = GRPOTrainer(model, args=config('dapo'))
    assert dapo.loss_type == 'dapo' and existing_interception(dapo) is None  # not served by FIPO
    assert existing_interception(trainer) is not None


def test_only_unsqueeze_1_of_the_advantages_gives_the_weighted_ones():
    """ReweightedAdvantages: `.unsqueeze(1)` (or -1) is the [B, T] A x w and counts one read; every other
    operation, including ones whose second argument is 1, sees the plain [B] advantages and counts none."""
    advantages = torch.tensor([0.5, -1.0, 2.0])
    weighted = torch.arange(6, dtype=torch.float32).reshape(3, 2) + 1
    wrapped = ms_swift_legacy.ReweightedAdvantages.wrap(advantages, weighted)
    for result in (wrapped * 1, wrapped + 1 - 1, torch.mul(wrapped, 1), wrapped.clamp(min=-5), wrapped[[0, 1, 2]]):
        assert type(result) is torch.Tensor and torch.equal(result, advantages)
    assert torch.equal(wrapped.unsqueeze(0), advantages[None, :])
    assert wrapped.weighted_reads == 0
    assert wrapped.unsqueeze(1) is weighted and wrapped.weighted_reads == 1
    assert wrapped.unsqueeze(-1) is weighted and wrapped.weighted_reads == 2


def test_sequence_level_ratio_is_the_mean_log_ratio_of_each_completion():
    """--importance_sampling_level sequence with the dual clip: tokens whose sequence ratio exp(mean log-ratio)
    exceeds --delta stay out of the Future-KL; exp(sum) (or a per-token ratio) would filter other rows."""
    batch = make_batch(seed=33)
    batch['old_per_token_logps'] = batch['logps'] - 0.4 * (batch['logps'] - batch['old_per_token_logps']) - 0.05
    fipo = make_trainer('fipo', batch['logps'], batch['entropies'], importance_sampling_level='sequence', delta=1.3)
    fipo._compute_loss_and_metrics(None, loss_inputs(batch))
    mask = batch['completion_mask']
    log_ratio = batch['logps'] - batch['old_per_token_logps']
    summed = (log_ratio * mask).sum(-1)
    ratios = {'mean': torch.exp(summed / mask.sum(-1).clamp(min=1))[:, None], 'sum': torch.exp(summed)[:, None]}
    means = {name: brute_fipo_weight(log_ratio, mask, batch['advantages'], delta=1.3, ratio=ratio)[0][mask].mean()
             for name, ratio in ratios.items()}
    means['token'] = brute_fipo_weight(log_ratio, mask, batch['advantages'], delta=1.3)[0][mask].mean()
    assert not is_close(means['mean'], means['sum'], tol=1e-3) and not is_close(means['mean'], means['token'], tol=1e-3)
    assert is_close(_logged_mean(fipo, 'influence_weight_mean'), means['mean'], tol=1e-5)
