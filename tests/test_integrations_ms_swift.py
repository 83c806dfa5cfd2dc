"""The ms-swift hook, in-process, on the installed ms-swift's real trainer classes."""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import ms_swift_version, need, not_applicable_here
from reference import brute_fipo, is_close, random_inputs

from swift_fipo.integrations.ms_swift import hooks as ms_swift
from swift_fipo.integrations.ms_swift import layout as ms_swift_layout
from swift_fipo.integrations.ms_swift.layout import native_fipo_installed
from swift_fipo.integrations.patches import is_patch, original_of

pytestmark = pytest.mark.ms_swift
need('swift', 'ms-swift')
if not native_fipo_installed():  # 3.11 - 4.2.1: tests/test_integrations_ms_swift_legacy.py
    not_applicable_here('this ms-swift predates native FIPO (4.2.2): its trainer has no _compute_fipo_influence '
                        'to adapt')
grpo_trainer = need('swift.rlhf_trainers.grpo_trainer', 'ms-swift')
GRPOTrainer = grpo_trainer.GRPOTrainer


def _args(**overrides):
    values = dict(loss_type='fipo', fipo_decay_rate=32.0, fipo_clip_range=0.2, fipo_clip_high_only=True,
                  fipo_safety_threshold=4.0, delta=None)
    return SimpleNamespace(**{**values, **overrides})


def test_install_hooks_the_hf_trainer_and_is_idempotent():
    first = ms_swift.install()
    methods = {name: GRPOTrainer.__dict__[name] for name in
               ('_compute_fipo_influence', '_compute_loss_and_metrics') if name in GRPOTrainer.__dict__}
    second = ms_swift.install()
    assert first == second == {'swift.pipelines.base': {'SwiftPipeline': True},
                               ms_swift_layout.HF_TRAINER_MODULE: {'GRPOTrainer': True}}
    assert ms_swift.is_patched(GRPOTrainer)
    assert {name: GRPOTrainer.__dict__[name] for name in methods} == methods
    # Wrappers wrap ms-swift's function exactly once.
    for name in ('_compute_loss_and_metrics', '_setup_teacher'):
        wrapper = getattr(GRPOTrainer, name, None)
        if wrapper is not None:
            assert not is_patch(wrapper.__wrapped__)


def _offset_rows(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-ratios whose rows sit at different levels, so that per-row (sequence-level) ratios straddle
    the thresholds; advantages of both signs."""
    log_ratio, mask, _ = random_inputs(4, 50, seed=seed, scale=0.5)
    log_ratio = log_ratio + torch.tensor([[-0.3], [0.2], [0.6], [0.9]])
    return log_ratio, mask, torch.tensor([-1.0, 0.5, -0.7, 1.2])


@pytest.mark.parametrize('level', ['token', 'sequence'])
def test_adapter_weights_use_ms_swifts_coef_1(level):
    """ms-swift hands the adapter its importance ratio coef_1; with importance_sampling_level sequence
    (GSPO) that is one ratio per row, not exp(log_ratio), and the filter (--delta) and the safety rule
    must test it. Checked against the float64 brute force fed the same coef_1."""
    ms_swift.install()
    log_ratio, mask, advantages = _offset_rows(seed=1)
    if level == 'sequence':  # ms-swift's coef_1 for sequence-level importance sampling: [B, 1]
        coef_1 = torch.exp((log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1))
    else:
        coef_1 = torch.exp(log_ratio)
    trainer = SimpleNamespace(args=_args(fipo_clip_high_only=False, delta=1.5, fipo_safety_threshold=1.3))
    weight, metrics = GRPOTrainer._compute_fipo_influence(trainer, log_ratio, coef_1, advantages[:, None], mask)
    expected = brute_fipo(log_ratio, mask, advantages, clip_high_only=False, delta=1.5, safety_threshold=1.3,
                          ratio=coef_1)
    assert is_close(weight, expected['weight'])
    assert is_close(metrics['influence_weight'], expected['weight'])
    assert is_close(metrics['future_kl'], expected['future_kl'])
    assert torch.equal(metrics['safety_mask'].expand_as(mask), expected['safety'])
    if level == 'sequence':
        # The inputs are such that the token-level ratio would give other weights: the test can fail.
        token_level = brute_fipo(log_ratio, mask, advantages, clip_high_only=False, delta=1.5, safety_threshold=1.3)
        assert not is_close(weight, token_level['weight'])
        assert not torch.equal(expected['safety'], token_level['safety'])


def _has_teacher_set_up() -> bool:
    """ms-swift 4.4 brought OPD-RL and with it the implicit teacher that stops fipo runs; before it there
    is nothing for the plugin to fix (and the fix must then find nothing to wrap)."""
    if hasattr(GRPOTrainer, '_setup_teacher'):
        return True
    assert ms_swift_version() < (4, 4), 'ms-swift >= 4.4 without _setup_teacher: the teacher fix lost its hook'
    return False


@pytest.mark.parametrize('loss_type, has_teacher', [('fipo', False), ('dapo', True)])
def test_no_implicit_teacher_for_fipo(loss_type, has_teacher):
    ms_swift.install()
    if not _has_teacher_set_up():
        return
    # ms-swift's real _setup_teacher on a trainer with no teacher configured (__init__ skipped: it
    # needs a model; _setup_teacher reads only args and the teacher attributes).
    trainer = GRPOTrainer.__new__(GRPOTrainer)
    trainer.args = _args(loss_type=loss_type)
    trainer._setup_teacher()
    assert trainer._has_teacher is has_teacher
    assert trainer._is_dynamic_self_distillation is has_teacher


def test_explicit_teacher_is_kept_for_fipo():
    ms_swift.install()
    if not _has_teacher_set_up():
        return
    trainer = GRPOTrainer.__new__(GRPOTrainer)
    trainer.args, trainer._teacher_use_disable_adapter = _args(), True
    trainer._setup_teacher()
    assert trainer._has_teacher is True  # ms-swift then rejects fipo, as upstream intends


def test_trainer_without_the_hook_fails_at_start_up_for_fipo_only():
    # Stands in for ms-swift < 4.2.2, whose trainers have no _compute_fipo_influence; those releases
    # import vLLM eagerly and cannot be installed on this CPU machine.
    class OldGRPOTrainer:

        def __init__(self, model=None, args=None):
            self.args = args

    assert ms_swift.patch_trainer_class(OldGRPOTrainer) is False
    assert OldGRPOTrainer(args=_args(loss_type='dapo')).args.loss_type == 'dapo'
    with pytest.raises(RuntimeError, match=r'needs ms-swift >= 3\.11 .*installed: ms-swift \d'):
        OldGRPOTrainer(args=_args(loss_type='fipo'))
    assert ms_swift.patch_trainer_class(OldGRPOTrainer) is False  # idempotent: wrapped once
    assert not is_patch(OldGRPOTrainer.__init__.__wrapped__)


def test_module_without_trainer_classes_is_reported():
    import types
    with pytest.raises(RuntimeError, match='no GRPO trainer class'):
        ms_swift.patch_module(types.ModuleType('swift.rlhf_trainers.grpo_trainer'))


def test_uninstall_restores_every_patched_attribute():
    """install() then uninstall() leaves ms-swift's classes exactly as they were before the plugin."""
    import importlib
    import sys

    from swift_fipo.integrations.ms_swift.layout import module_path
    importlib.import_module(module_path(ms_swift_layout.PIPELINE_MODULE))  # whether or not another test did
    watched = [sys.modules[name] for name in ms_swift_layout.WATCHED if name in sys.modules]
    classes = [cls for module in watched for cls in (ms_swift.trainer_classes(module) if module.__name__ !=
                                                     ms_swift_layout.PIPELINE_MODULE else [module.SwiftPipeline])]
    ms_swift.install()
    patched = {(cls, name): value for cls in classes for name, value in vars(cls).items() if is_patch(value)}
    assert {name for _, name in patched} >= {'_compute_fipo_influence', '_parse_args'}
    ms_swift.uninstall()
    try:
        for (cls, name), value in patched.items():
            mark = vars(getattr(value, '__func__', value)).get('__swift_fipo_patch__')  # a staticmethod's function
            original = getattr(mark, 'original', None)
            assert not is_patch(vars(cls).get(name)), (cls, name)
            # ms-swift's own function is back where it was, or the attribute is inherited again.
            assert vars(cls).get(name, None) is (None if original is None or not callable(original) else original)
        assert not ms_swift.is_patched(GRPOTrainer)
    finally:
        ms_swift.install()  # the activation hook had patched this process: leave it so for other tests
    assert ms_swift.is_patched(GRPOTrainer)


# --- the extra fipo/* metrics on the HF trainer: across ranks and gradient-accumulation chunks ----------


class _Accelerator:
    """accelerate's ``gather_for_metrics`` for this rank plus, optionally, one more rank: every call is
    recorded (what this rank contributed), and with ``peer`` (the other rank's recorded calls, in the
    same order) the result stacks both ranks' tensors along dim 0, as a 2-process gather does."""

    def __init__(self, peer: list[torch.Tensor] | None = None) -> None:
        self.calls: list[torch.Tensor] = []
        self.peer = peer

    def gather_for_metrics(self, tensor: torch.Tensor) -> torch.Tensor:
        theirs = self.peer[len(self.calls)] if self.peer is not None else None
        self.calls.append(tensor.clone())
        rows = [tensor] if theirs is None else [tensor, theirs]
        return torch.stack(rows) if tensor.dim() == 0 else torch.cat(rows)


def _hf_stand_in() -> type:
    """The HF GRPOTrainer as far as the plugin's metric wrappers reach: ms-swift's own
    ``_aggregate_and_update_metrics`` and ``_update_metrics`` (unwrapped), and a loss that does what
    ms-swift's ``_compute_loss_and_metrics`` does around FIPO: call the hook, gather the 3 native
    means, return ``(loss, metrics_data)`` with ``metrics_data['fipo']``."""

    def compute_loss_and_metrics(self, model, inputs):
        log_ratio, mask = inputs['log_ratio'], inputs['completion_mask']
        weight, fipo = self._compute_fipo_influence(log_ratio, torch.exp(log_ratio), inputs['advantages'], mask)
        count = mask.sum().clamp(min=1)

        def mean(values):
            return (values.float() * mask).sum() / count

        native = {'future_kl_mean': fipo['future_kl'], 'influence_weight_mean': fipo['influence_weight'],
                  'safety_keep_ratio': fipo['safety_mask']}
        metrics_data = {'mode': 'train', 'entropy': {}, 'completion_mask': mask, 'completion_token_count': count,
                        'fipo': {key: self.accelerator.gather_for_metrics(mean(value)).nanmean().item()
                                 for key, value in native.items()}}
        return (weight * mask).sum(), metrics_data

    methods = {name: getattr(GRPOTrainer, name) for name in ('_aggregate_and_update_metrics', '_update_metrics')}
    methods = {name: original_of(method) for name, method in methods.items()}
    cls = type('GRPOTrainer', (), dict(methods, _compute_fipo_influence=ms_swift.native_fipo_influence(GRPOTrainer),
                                       _compute_loss_and_metrics=compute_loss_and_metrics))
    assert ms_swift.patch_trainer_class(cls) is True
    return cls


def _hf_trainer(cls: type, peer: list[torch.Tensor] | None = None):
    from collections import defaultdict
    trainer = cls()
    trainer.args = _args(fipo_clip_range=0.0, fipo_safety_threshold=None)  # unclipped: extremes differ
    trainer.accelerator = _Accelerator(peer)
    trainer._metrics = {'train': defaultdict(list), 'eval': defaultdict(list)}
    trainer._logs = defaultdict(list)
    return trainer


def _hf_inputs(seed: int, advantages: list[float]) -> dict:
    log_ratio, mask, _ = random_inputs(4, 30, seed=seed, scale=0.4)
    return {'log_ratio': log_ratio, 'completion_mask': mask, 'advantages': torch.tensor(advantages)[:, None]}


LOW, HIGH, P99 = 'influence_weight_min', 'influence_weight_max', 'neg_adv_ratio_p99'


def test_hf_extra_metrics_combine_across_disagreeing_ranks():
    cls = _hf_stand_in()
    mine_inputs, their_inputs = _hf_inputs(1, [1.0, -0.5, 0.3, -1.0]), _hf_inputs(2, [1.0, 0.5, 0.3, 2.0])
    _, mine = cls._compute_loss_and_metrics(_hf_trainer(cls), None, mine_inputs)  # each rank alone
    other = _hf_trainer(cls)
    _, theirs = cls._compute_loss_and_metrics(other, None, their_inputs)
    _, both = cls._compute_loss_and_metrics(_hf_trainer(cls, peer=other.accelerator.calls), None, mine_inputs)
    mine, theirs, both = mine['fipo'], theirs['fipo'], both['fipo']
    assert mine[LOW] != theirs[LOW] and mine[HIGH] != theirs[HIGH]  # the ranks disagree
    assert math.isnan(theirs[P99]) and math.isfinite(mine[P99])  # no negative advantage on the other rank
    assert both[LOW] == pytest.approx(min(mine[LOW], theirs[LOW]), rel=1e-6)
    assert both[HIGH] == pytest.approx(max(mine[HIGH], theirs[HIGH]), rel=1e-6)
    assert both[P99] == pytest.approx(mine[P99], rel=1e-6)
    for key in ('raw_weight_mean', 'future_kl_mean', 'influence_weight_mean'):
        assert mine[key] != theirs[key]
        assert both[key] == pytest.approx((mine[key] + theirs[key]) / 2, rel=1e-5), key


def test_hf_extra_metrics_combine_across_gradient_accumulation_chunks():
    cls = _hf_stand_in()
    trainer = _hf_trainer(cls)
    chunks = [cls._compute_loss_and_metrics(trainer, None, _hf_inputs(seed, advantages))[1]
              for seed, advantages in ((3, [1.0, -0.5, 0.3, -1.0]), (4, [-1.0, 0.5, -0.3, 2.0]))]
    first, second = (chunk['fipo'].copy() for chunk in chunks)
    tokens = [float(chunk['completion_token_count']) for chunk in chunks]
    cls._aggregate_and_update_metrics(trainer, [(chunk, tokens[index]) for index, chunk in enumerate(chunks)],
                                      'train')
    logged = {key.removeprefix('fipo/'): values[-1] for key, values in trainer._metrics['train'].items()}
    assert first[LOW] != second[LOW] and first[HIGH] != second[HIGH] and first[P99] != second[P99]
    assert logged[LOW] == pytest.approx(min(first[LOW], second[LOW]), rel=1e-6)
    assert logged[HIGH] == pytest.approx(max(first[HIGH], second[HIGH]), rel=1e-6)
    assert logged[P99] == pytest.approx(max(first[P99], second[P99]), rel=1e-6)
    # Means: ms-swift's own token-weighted average over chunks.
    for key in ('raw_weight_mean', 'future_kl_mean'):
        expected = (first[key] * tokens[0] + second[key] * tokens[1]) / sum(tokens)
        assert logged[key] == pytest.approx(expected, rel=1e-5), key


@pytest.mark.parametrize('megatron, patched', [(None, True), (True, True), (False, False)])
def test_install_patches_megatron_only_when_already_imported_or_asked(monkeypatch, megatron, patched):
    """install() must not import swift.megatron unasked, but must hook it when ms-swift already did."""
    import types
    module = types.ModuleType(ms_swift_layout.MEGATRON_TRAINER_MODULE)

    class MegatronGRPOTrainer:
        __module__ = module.__name__

        def _compute_fipo_influence(self, log_ratio, coef_1, advantages, completion_mask):
            raise AssertionError('ms-swift native: the plugin should have replaced it')

    module.MegatronGRPOTrainer = MegatronGRPOTrainer
    monkeypatch.setitem(sys.modules, module.__name__, module)
    report = ms_swift.install(megatron=megatron)
    assert (report.get(module.__name__) == {'MegatronGRPOTrainer': True}) is patched
    assert ms_swift.is_patched(MegatronGRPOTrainer) is patched
