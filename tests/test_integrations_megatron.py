"""swift-fipo on ms-swift's Megatron GRPO trainer (and the Ray Megatron trainer, whose workers reuse it).

The real ``MegatronGRPOTrainer`` runs in tests/test_integrations_megatron_real.py, where megatron-core and
mcore-bridge are installed (the Megatron suite; CPU, with test-only stand-ins for Transformer Engine). Every other
ms-swift suite has no Megatron stack, so here:

* CPU, always: the installed trainer's *source file* is read (never imported). Its
  ``_compute_fipo_influence`` signature, the call in ``loss_func`` and the keys ``loss_func`` reads from the
  returned dict are checked against the shared adapter.
* A stand-in class built from the installed methods' own source (``_setup_teacher``, ``_init_grpo_params``,
  ``_compute_fipo_influence``, ``loss_func``), with ``megatron.core.mpu`` and the cross-rank gathers stubbed for
  a single rank, patched by the plugin exactly as the real class would be: ms-swift's real Megatron loss code on
  CPU for the ms-swift lines the Megatron suite does not install (4.2.3 - 4.5.3, and 4.6.0 in its plain suite).
  Where the real class runs, the stand-in tests it duplicates are left out (``STAND_IN_DUPLICATE``); what it
  does not cover stays: a sequence-level ratio with both thresholds set, and the guard that the stand-in
  compiled the installed source.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import inspect
import logging
import math
import textwrap
import typing
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ms_swift_version, need, not_applicable_here, only_where
from megatron_cpu import real_trainer_runs_here

from swift_fipo.integrations.patches import is_patch

pytestmark = [pytest.mark.ms_swift]
need('swift', 'ms-swift')

from swift_fipo.integrations.ms_swift import layout as ms_swift_layout  # noqa: E402

if 'def _compute_fipo_influence' not in ms_swift_layout.trainer_source(megatron=True):
    not_applicable_here("this ms-swift's Megatron GRPO trainer predates native FIPO (4.2.2): megatron rlhf "
                        '--loss_type fipo is refused at start-up (tests/test_integrations_ms_swift_cli.py)')

from swift_fipo.integrations.ms_swift import hooks as integration  # noqa: E402

SWIFT_DIR = Path(importlib.util.find_spec('swift').origin).parent
MEGATRON_TRAINER_FILE = SWIFT_DIR / 'megatron' / 'trainers' / 'grpo_trainer.py'
MEGATRON_MIXIN_FILE = SWIFT_DIR / 'megatron' / 'trainers' / 'rollout_mixin.py'
RAY_GRPO_LOSS_FILE = SWIFT_DIR / 'ray' / 'megatron' / 'loss' / 'grpo.py'
NATIVE_KEYS = ('fipo/future_kl_mean', 'fipo/influence_weight_mean', 'fipo/safety_keep_ratio')
# A stand-in test the real trainer's file (tests/test_integrations_megatron_real.py) repeats on the real class.
STAND_IN_DUPLICATE = only_where(not real_trainer_runs_here(), 'the real MegatronGRPOTrainer runs here: '
                                'tests/test_integrations_megatron_real.py checks this on it instead of a stand-in')


# ----------------------------------------------------------------------------------------------------------
# Reading the installed source
# ----------------------------------------------------------------------------------------------------------

def _class_methods(path: Path, class_name: str) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {item.name: item for item in node.body if isinstance(item, ast.FunctionDef)}
    raise AssertionError(f'class {class_name} not found in {path}')


def _megatron_methods() -> dict[str, ast.FunctionDef]:
    if not MEGATRON_TRAINER_FILE.is_file():
        pytest.skip(f'this ms-swift has no Megatron GRPO trainer ({MEGATRON_TRAINER_FILE} missing)')
    return _class_methods(MEGATRON_TRAINER_FILE, 'MegatronGRPOTrainer')


def _calls_to(function: ast.FunctionDef, method: str) -> list[ast.Call]:
    return [node for node in ast.walk(function) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == method
            and isinstance(node.func.value, ast.Name) and node.func.value.id == 'self']


def _parameter_names(function: ast.FunctionDef) -> list[str]:
    return [argument.arg for argument in function.args.args]


# ----------------------------------------------------------------------------------------------------------
# Source checks: the Megatron trainer calls and reads what the shared adapter provides
# ----------------------------------------------------------------------------------------------------------

def test_megatron_compute_fipo_influence_signature_matches_the_adapter():
    native = _megatron_methods()['_compute_fipo_influence']
    adapter = list(inspect.signature(integration.fipo_influence_adapter).parameters)
    # The adapter is installed as a method: its first parameter is the trainer (self).
    assert _parameter_names(native) == ['self', *adapter[1:]]
    # And it is the same hook the HF trainer has (one adapter serves both).
    from swift.rlhf_trainers.grpo_trainer import GRPOTrainer
    hf = inspect.signature(integration.native_fipo_influence(GRPOTrainer))
    assert list(hf.parameters) == _parameter_names(native)


def test_megatron_loss_func_calls_the_hook_with_the_adapter_arguments():
    loss_func = _megatron_methods()['loss_func']
    calls = _calls_to(loss_func, '_compute_fipo_influence')
    assert len(calls) == 1, 'loss_func should call self._compute_fipo_influence exactly once'
    assert [ast.unparse(argument) for argument in calls[0].args] == [
        'log_ratio', 'coef_1', 'advantages', 'completion_mask']
    assert not calls[0].keywords


def test_megatron_loss_func_reads_only_keys_the_adapter_returns():
    loss_func = _megatron_methods()['loss_func']
    # Which name receives the hook's dict: `weight, <name> = self._compute_fipo_influence(...)`.
    targets = [node.targets[0] for node in ast.walk(loss_func) if isinstance(node, ast.Assign)
               and isinstance(node.value, ast.Call) and node.value in _calls_to(loss_func, '_compute_fipo_influence')]
    assert len(targets) == 1 and isinstance(targets[0], ast.Tuple)
    metrics_name = targets[0].elts[1].id
    read = {node.slice.value for node in ast.walk(loss_func) if isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name) and node.value.id == metrics_name
            and isinstance(node.slice, ast.Constant)}
    assert read, f'loss_func reads nothing from {metrics_name}'
    trainer = SimpleNamespace(args=SimpleNamespace(loss_type='fipo'))
    log_ratio = torch.randn(2, 5) * 0.1
    mask = torch.ones(2, 5, dtype=torch.bool)
    _, returned = integration.fipo_influence_adapter(trainer, log_ratio, log_ratio.exp(), torch.tensor([1.0, -1.0]),
                                                     mask)
    assert read <= set(returned), f'Megatron reads {sorted(read)}; the adapter returns {sorted(returned)}'
    # The native metric names the Megatron logger receives.
    logged = {node.slice.value for node in ast.walk(loss_func) if isinstance(node, ast.Subscript)
              and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)
              and node.slice.value.startswith('fipo/')}
    assert logged == set(NATIVE_KEYS)


def test_megatron_teacher_mixin_uses_an_attribute_the_teacher_wrapper_understands():
    loss_func = _megatron_methods()['loss_func']
    rejects = 'OPD-RL (teacher) does not support' in ast.unparse(loss_func)
    if not MEGATRON_MIXIN_FILE.is_file() or '_setup_teacher' not in _class_methods(MEGATRON_MIXIN_FILE,
                                                                                     'MegatronRolloutMixin'):
        # Before OPD-RL (ms-swift 4.4) there is no teacher on Megatron and nothing to fix.
        assert not rejects and ms_swift_version() < (4, 4)
        return
    assert rejects, 'the Megatron loss no longer rejects fipo with a teacher: the teacher fix may be obsolete'
    setup = _class_methods(MEGATRON_MIXIN_FILE, 'MegatronRolloutMixin')['_setup_teacher']
    assigned = {target.attr for node in ast.walk(setup) if isinstance(node, ast.Assign) for target in node.targets
                if isinstance(target, ast.Attribute)}
    # The wrapper reads _has_teacher_explicit (attribute here, method on the HF mixin) and clears these two.
    assert {'_has_teacher_explicit', '_has_teacher', '_is_dynamic_self_distillation'} <= assigned


@only_where(RAY_GRPO_LOSS_FILE.is_file(),
            'this ms-swift has no Ray Megatron GRPO loss (swift/ray/megatron/loss/grpo.py)')
def test_ray_megatron_loss_reuses_the_megatron_trainer_class():
    """The Ray pipeline's GRPO loss instantiates MegatronGRPOTrainer (``__new__``) and calls its methods, so
    patching that class covers Ray workers; the Ray driver class (``swift.ray.megatron.grpo_trainer``) has
    no FIPO code and must not be patched (it would be refused as 'no hook')."""
    source = RAY_GRPO_LOSS_FILE.read_text()
    assert 'from swift.megatron.trainers.grpo_trainer import MegatronGRPOTrainer' in source
    create = _class_methods(RAY_GRPO_LOSS_FILE, 'GRPOLoss')['_create_dummy_trainer']
    text = ast.unparse(create)
    assert 'cls.__new__(cls)' in text and '_init_grpo_params()' in text
    loss = ast.unparse(_class_methods(RAY_GRPO_LOSS_FILE, 'GRPOLoss')['loss_func'])
    assert 'self._dummy.loss_func(' in loss
    driver = SWIFT_DIR / 'ray' / 'megatron' / 'grpo_trainer.py'
    assert '_compute_fipo_influence' not in driver.read_text()
    from swift_fipo import activation
    assert 'swift.ray.megatron.grpo_trainer' not in activation.WATCHED_MODULES


# ----------------------------------------------------------------------------------------------------------
# A stand-in MegatronGRPOTrainer built from the installed methods' source, run on CPU
# ----------------------------------------------------------------------------------------------------------

class _FakeMpu:
    """``megatron.core.mpu`` for one rank with no model parallelism."""

    @staticmethod
    def get_data_parallel_group(with_context_parallel: bool = False) -> None:
        return None

    @staticmethod
    def get_data_parallel_world_size(with_context_parallel: bool = False) -> int:
        return 1


@functools.cache
def _megatron_argument_names() -> frozenset[str]:
    """Every field of ms-swift's Megatron argument classes, read from their source (not importable here)."""
    names = set()
    for path in (SWIFT_DIR / 'megatron' / 'arguments').glob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                names.update(item.target.id for item in node.body
                             if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name))
    from swift.arguments import BaseArguments
    names.update(field.name for field in dataclasses.fields(BaseArguments))
    return frozenset(names)


class _Args(SimpleNamespace):
    """Megatron arguments: the attributes a test sets; None for ms-swift's other (unset optional) fields;
    AttributeError for anything ms-swift's Megatron arguments do not define (as on the real object)."""

    def __getattr__(self, name: str) -> None:
        if name in _megatron_argument_names():
            return None
        raise AttributeError(name)


def _megatron_args(**overrides: typing.Any) -> _Args:
    values = dict(loss_type='fipo', rlhf_type='grpo', beta=0.0, epsilon=0.2, epsilon_high=None, delta=None,
                  importance_sampling_level='token', tau_pos=1.0, tau_neg=1.05, real_tau=0.5, fipo_decay_rate=32.0,
                  fipo_clip_range=0.2, fipo_clip_high_only=True, fipo_safety_threshold=4.0, dynamic_sample=False,
                  max_resample_times=3, overlong_filter=False, scale_rewards='group', advantage_estimator='grpo',
                  kl_in_reward=False, log_entropy=False, top_entropy_quantile=1.0, num_generations=4,
                  generation_batch_size=8, steps_per_generation=2, global_batch_size=4, micro_batch_size=4,
                  per_device_generation_batch_size=8, truncation_strategy='left', num_microbatches=1,
                  max_completion_length=8, temperature=1.0, teacher_model=None, teacher_model_server=None,
                  offload_teacher_model=False, router_replay_mode='disabled', log_rollout_offpolicy_metrics=False)
    values.update(overrides)
    return _Args(**values)


def _source_namespace() -> dict[str, typing.Any]:
    namespace: dict[str, typing.Any] = {name: getattr(typing, name) for name in typing.__all__}
    namespace.update(torch=torch, mpu=_FakeMpu, gather=lambda tensor, group=None: tensor,
                     logger=logging.getLogger('megatron-stand-in'), partial=functools.partial,
                     is_last_rank=lambda: True, defaultdict=defaultdict, MegatronArguments=_Args)
    try:
        from swift.rlhf_trainers import gkd_helpers
        namespace.update(vars(gkd_helpers))
    except ImportError:  # older ms-swift: no teacher helpers, and no _setup_teacher to run either
        pass
    return namespace


def _compile_methods(path: Path, class_name: str, names: typing.Iterable[str],
                     namespace: dict[str, typing.Any]) -> dict[str, typing.Any]:
    nodes = _class_methods(path, class_name)
    source_text = path.read_text()
    methods = {}
    for name in names:
        if name not in nodes:
            continue
        source = textwrap.dedent(ast.get_source_segment(source_text, nodes[name]))  # decorators excluded
        exec(compile(source, f'{path}:{class_name}.{name}', 'exec'), namespace)
        methods[name] = namespace.pop(name)
    return methods


def _stand_in_class() -> type:
    """``MegatronGRPOTrainer`` as far as the FIPO path goes, from the installed methods' own code."""
    namespace = _source_namespace()
    methods = _compile_methods(MEGATRON_TRAINER_FILE, 'MegatronGRPOTrainer',
                               ['_init_grpo_params', '_compute_fipo_influence', 'loss_func'], namespace)
    if MEGATRON_MIXIN_FILE.is_file():
        methods.update(_compile_methods(MEGATRON_MIXIN_FILE, 'MegatronRolloutMixin', ['_setup_teacher'], namespace))

    def _all_reduce_metric(self, metric, reduction=torch.distributed.ReduceOp.AVG, group=None):
        """torch.distributed's all-reduce over this rank and, if ``self.peer`` is set, one more rank whose
        contributions (what the same code computed there) ``self.peer`` holds; else one rank (identity)."""
        self.reductions.append((reduction, tuple(metric)))
        self.contributions.update({key: value.clone() for key, value in metric.items()})
        if self.peer is None:
            return dict(metric)
        ReduceOp = torch.distributed.ReduceOp
        combine = {ReduceOp.MIN: torch.minimum, ReduceOp.MAX: torch.maximum,
                   ReduceOp.AVG: lambda mine, theirs: (mine + theirs) / 2}[reduction]
        return {key: combine(value, self.peer[key].to(value)) for key, value in metric.items()}

    methods.update(_all_reduce_metric=_all_reduce_metric, _flush_log_completions=lambda self: None)
    return type('MegatronGRPOTrainer', (), methods)


def _new_trainer(cls: type, args: _Args) -> typing.Any:
    """What the Ray pipeline's GRPOLoss does: ``__new__`` then the set-up methods the loss needs."""
    trainer = cls.__new__(cls)
    trainer.args = args
    if hasattr(cls, '_setup_teacher'):
        trainer._setup_teacher()
    trainer._init_grpo_params()
    trainer._metrics = {'train': defaultdict(list), 'eval': defaultdict(list)}
    trainer.reductions = []
    trainer.contributions, trainer.peer = {}, None
    trainer.disable_rollout_importance_sampling = True
    trainer.micro_batch_size = args.micro_batch_size
    trainer.max_completion_length = args.max_completion_length
    trainer.unwrapped_models = [SimpleNamespace(training=True)]
    trainer._step = 1
    trainer.is_main_process = True
    trainer.log_completions = False  # read by ms-swift 4.3's loss_func (completion logging)
    return trainer


def _batch(seed: int = 0, advantages: typing.Sequence[float] = (1.0, -0.5, 0.25, -1.0), empty: bool = False
           ) -> tuple[torch.Tensor, dict[str, typing.Any]]:
    """One micro-batch in both the 4.3 layout (flat dict) and the 4.4+ layout (``GRPOBatch``)."""
    generator = torch.Generator().manual_seed(seed)
    batch, length = 4, 8
    old = -torch.rand(batch, length, generator=generator) * 3
    new = old + torch.randn(batch, length, generator=generator) * 0.3
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, 6:] = False
    mask[3, 3:] = False
    if empty:  # a rank whose micro-batch holds no completion token
        mask[:] = False
    advantages = torch.tensor(advantages)
    tokens = mask.sum().to(torch.float32)
    grpo_batch = SimpleNamespace(advantages=advantages[:, None].expand(batch, length).clone(), completion_mask=mask,
                                 truncated_mask=torch.zeros(batch, dtype=torch.bool), ref_per_token_logps=None,
                                 old_per_token_logps=old, rollout_per_token_logps=None, num_items_in_batch=tokens,
                                 teacher_per_token_logps=None)
    data = dict(grpo_batch=grpo_batch, advantages=advantages, completion_mask=mask,
                truncated_mask=grpo_batch.truncated_mask, old_per_token_logps=old, num_items_in_batch=tokens)
    return new.requires_grad_(), data


@pytest.fixture()
def stand_in() -> tuple[type, type]:
    """(native, patched): two stand-in classes, one left as ms-swift ships it, one patched by the plugin."""
    native, patched = _stand_in_class(), _stand_in_class()
    assert integration.patch_trainer_class(patched) is True
    assert integration.is_patched(patched) and not integration.is_patched(native)
    return native, patched


@STAND_IN_DUPLICATE
def test_stand_in_teacher_flag_is_cleared_for_fipo_and_kept_for_an_explicit_teacher(stand_in):
    native, patched = stand_in
    if not hasattr(native, '_setup_teacher'):  # before OPD-RL (4.4): no teacher flag, nothing to clear
        assert ms_swift_version() < (4, 4) and not hasattr(patched, '_setup_teacher')
        return
    # ms-swift as shipped: no teacher configured still means "dynamic self-distillation".
    assert _new_trainer(native, _megatron_args())._has_teacher is True
    trainer = _new_trainer(patched, _megatron_args())
    assert trainer._has_teacher is False and trainer._is_dynamic_self_distillation is False
    assert _new_trainer(patched, _megatron_args(loss_type='dapo'))._has_teacher is True
    explicit = _new_trainer(patched, _megatron_args(teacher_model='/some/teacher'))
    assert explicit._has_teacher is True and explicit._has_teacher_explicit is True


@STAND_IN_DUPLICATE
def test_stand_in_native_loss_rejects_fipo_and_the_patched_one_trains(stand_in):
    native, patched = stand_in
    logps, data = _batch()
    if hasattr(native, '_setup_teacher'):
        with pytest.raises(ValueError, match="OPD-RL \\(teacher\\) does not support loss_type='fipo'"):
            native.loss_func(_new_trainer(native, _megatron_args()), logps, data=data)
    loss, metrics = patched.loss_func(_new_trainer(patched, _megatron_args()), logps, data=data)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logps.grad).all() and logps.grad.abs().sum() > 0
    for key in NATIVE_KEYS:
        assert key in metrics and math.isfinite(float(metrics[key])), key


@pytest.mark.parametrize('overrides', [
    pytest.param({}, id='defaults', marks=STAND_IN_DUPLICATE),
    pytest.param({'fipo_clip_high_only': False}, id='symmetric-clip', marks=STAND_IN_DUPLICATE),
    pytest.param({'delta': 1.5}, id='delta', marks=STAND_IN_DUPLICATE),
    pytest.param({'fipo_safety_threshold': 1.05}, id='safety-fires', marks=STAND_IN_DUPLICATE),
    pytest.param({'importance_sampling_level': 'sequence'}, id='sequence-is', marks=STAND_IN_DUPLICATE),
    # coef_1 is then one ratio per sequence: filter and safety rule test it (not in the real trainer's file)
    pytest.param({'importance_sampling_level': 'sequence', 'delta': 1.02, 'fipo_safety_threshold': 1.01,
                  'fipo_clip_high_only': False}, id='sequence-is-thresholds')])
def test_stand_in_loss_and_native_metrics_match_ms_swift(stand_in, overrides):
    """Patched vs native Megatron loss: same loss, gradient and fipo/* values (flags where ms-swift agrees)."""
    native, patched = stand_in
    results = []
    for cls in (native, patched):
        trainer = _new_trainer(cls, _megatron_args(**overrides))
        trainer._has_teacher = False  # ms-swift's own dynamic-teacher flag would reject the native run
        logps, data = _batch(seed=3)
        loss, metrics = cls.loss_func(trainer, logps, data=data)
        loss.backward()
        results.append((loss.detach(), logps.grad, {key: float(metrics[key]) for key in NATIVE_KEYS}, trainer))
    (native_loss, native_grad, native_metrics, _), (loss, grad, metrics, trainer) = results
    torch.testing.assert_close(loss, native_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, native_grad, rtol=1e-5, atol=1e-6)
    for key in NATIVE_KEYS:
        assert metrics[key] == pytest.approx(native_metrics[key], rel=1e-5, abs=1e-6), key
    # The native keys reach Megatron's logger through ms-swift's own data-parallel all-reduce (AVG).
    assert any(set(NATIVE_KEYS) <= set(keys) for _, keys in trainer.reductions)


@STAND_IN_DUPLICATE
def test_stand_in_plugin_metrics_reach_megatron_reduced_across_ranks(stand_in):
    """The plugin's extra diagnostics (weight min/max, raw weight, clip fractions) on the Megatron path.

    ms-swift's Megatron loss only logs the 3 native keys; extra keys need a wrapper around ``loss_func``
    that reduces them across data-parallel ranks (``_all_reduce_metric``: MIN for *_min, MAX for *_max,
    AVG otherwise) and adds them to the returned metrics."""
    _, patched = stand_in
    assert is_patch(patched.loss_func)
    trainer = _new_trainer(patched, _megatron_args())
    logps, data = _batch(seed=5)
    _, metrics = patched.loss_func(trainer, logps, data=data)
    extra = [key for key in metrics if key.startswith('fipo/') and key not in NATIVE_KEYS]
    assert {'fipo/influence_weight_min', 'fipo/influence_weight_max', 'fipo/raw_weight_mean'} <= set(extra)
    for key in extra:
        assert math.isfinite(float(metrics[key])), key
    ops = {key: op for op, keys in trainer.reductions for key in keys}
    ReduceOp = torch.distributed.ReduceOp
    # Extremes combine as extremes (the p99 as a maximum: an upper tail); everything else is a mean.
    extremes = {'influence_weight_min': ReduceOp.MIN, 'influence_weight_max': ReduceOp.MAX,
                'neg_adv_ratio_p99': ReduceOp.MAX}
    for key in extra:
        short = key.removeprefix('fipo/')
        assert ops.get(short, ops.get(key)) == extremes.get(short, ReduceOp.AVG), (key, ops)


@STAND_IN_DUPLICATE
def test_stand_in_extremes_and_means_combine_across_disagreeing_ranks(stand_in):
    """Two data-parallel ranks with different batches: the logged minimum is the smaller of the two
    ranks' minima, the maximum the larger maximum, the p99 of negative-advantage ratios the larger one
    (a rank without negative advantages has none and is ignored), and the other diagnostics the mean."""
    _, patched = stand_in
    args = dict(fipo_clip_range=0.0, fipo_safety_threshold=None)  # unclipped: extremes differ per rank

    def run(seed, advantages, peer=None, empty=False):
        trainer = _new_trainer(patched, _megatron_args(**args))
        trainer.peer = peer
        logps, data = _batch(seed=seed, advantages=advantages, empty=empty)
        _, metrics = patched.loss_func(trainer, logps, data=data)
        return {key: float(value) for key, value in metrics.items()}, trainer.contributions

    mine, _ = run(5, (1.0, -0.5, 0.25, -1.0))  # alone, as a one-rank run logs it
    theirs, their_contributions = run(8, (1.0, 0.5, 0.25, 2.0))  # no negative advantage on this rank
    combined, _ = run(5, (1.0, -0.5, 0.25, -1.0), peer=their_contributions)
    low, high, p99 = 'fipo/influence_weight_min', 'fipo/influence_weight_max', 'fipo/neg_adv_ratio_p99'
    assert mine[low] != theirs[low] and mine[high] != theirs[high]  # the ranks disagree
    assert math.isnan(theirs[p99]) and math.isfinite(mine[p99])
    assert combined[low] == pytest.approx(min(mine[low], theirs[low]), rel=1e-6)
    assert combined[high] == pytest.approx(max(mine[high], theirs[high]), rel=1e-6)
    assert combined[p99] == pytest.approx(mine[p99], rel=1e-6)
    for key in ('fipo/raw_weight_mean', 'fipo/filtered_ratio', 'fipo/dropped_response_ratio'):
        assert combined[key] == pytest.approx((mine[key] + theirs[key]) / 2, rel=1e-6, abs=1e-7), key
    assert mine['fipo/raw_weight_mean'] != theirs['fipo/raw_weight_mean']
    # A rank without completion tokens: nothing to the extremes, 0 to the means (as ms-swift's own keys).
    _, empty_contributions = run(8, (1.0, 0.5, 0.25, 2.0), empty=True)
    with_empty, _ = run(5, (1.0, -0.5, 0.25, -1.0), peer=empty_contributions)
    for key in (low, high, p99):
        assert with_empty[key] == pytest.approx(mine[key], rel=1e-6), key
    assert with_empty['fipo/raw_weight_mean'] == pytest.approx(mine['fipo/raw_weight_mean'] / 2, rel=1e-6)


def test_stand_in_source_is_this_ms_swift():
    """Guard: the stand-in really compiled the installed methods (not an empty class)."""
    cls = _stand_in_class()
    for name in ('_init_grpo_params', '_compute_fipo_influence', 'loss_func'):
        assert getattr(cls, name).__code__.co_filename.startswith(str(MEGATRON_TRAINER_FILE))
    if MEGATRON_MIXIN_FILE.is_file() and hasattr(cls, '_setup_teacher'):
        assert cls._setup_teacher.__code__.co_filename.startswith(str(MEGATRON_MIXIN_FILE))
