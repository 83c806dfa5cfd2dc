"""The shared layer every host integration uses: config resolution, refusals, the off-policy test, warnings,
the metric table and its reductions over chunks and ranks, and revertible patches."""

from __future__ import annotations

import math

import pytest
import torch
from reference import brute_fipo_weight, is_close, random_inputs

from swift_fipo import FIPOConfig, compute_fipo_influence
from swift_fipo.config import PRESETS
from swift_fipo.integrations import messages, metrics, patches, ranks, refusals, settings
from swift_fipo.ops.loss import reweight_advantages


def test_resolve_config_applies_the_preset_then_explicit_values():
    config = settings.resolve_config('paper-32b', {'safety_threshold': 5.0}, lambda field: field, 'host')
    assert config == FIPOConfig(decay_rate=32.0, clip_range=0.2, delta=10.0, filter_threshold=10.0,
                                log_ratio_clamp=20.0, sequence_drop=True, unclipped_weight_cap=10.0,
                                clip_high_only=True, safety_threshold=5.0)


@pytest.mark.parametrize('preset, explicit, message', [
    ('paper-70b', {}, r'host: the FIPO preset must be one of swift, paper-32b, paper-7b'),
    ('swift', {'clip_range': -1.0}, r'host: fipo\.clip_range must be None, or a number in \[0, '),
    ('swift', {'gamma': 0.9}, r'host: unknown FIPO option\(s\) fipo\.gamma'),
])
def test_resolve_config_names_the_hosts_option(preset, explicit, message):
    with pytest.raises(ValueError, match=message):
        settings.resolve_config(preset, explicit, lambda field: f'fipo.{field}', 'host')


@pytest.mark.parametrize('iterations, steps, accumulation, off_policy', [
    (1, None, 4, False),  # steps_per_generation defaults to the accumulation window
    (1, 4, 4, False),
    (2, 4, 4, True),
    (1, 8, 4, True),
    (2, 2, 4, False),  # two passes, both inside one optimizer step: still on-policy
    (1, 3, 4, True),  # rollouts straddle optimizer steps
    (None, None, None, False),
    (None, 2, None, True),  # an unset accumulation window is 1 step
])
def test_on_policy_reason(iterations, steps, accumulation, off_policy):
    reason = refusals.on_policy_reason(iterations, steps, accumulation)
    assert (reason is None) is off_policy
    if reason is not None:
        assert 'FIPO is a no-op' in reason and 'nothing is reused off-policy' in reason


def test_every_summary_has_a_reduction():
    log_ratio, mask, advantages = random_inputs(3, 20, seed=0)
    _, stats = compute_fipo_influence(log_ratio, mask, advantages, FIPOConfig())
    assert set(stats.summary) == set(metrics.METRIC_REDUCTIONS)


@pytest.mark.parametrize('key, expected', [('influence_weight_min', 0.5), ('influence_weight_max', 3.0),
                                           ('neg_adv_ratio_p99', 3.0), ('future_kl_mean', 1.75)])
def test_combine_metric_across_disagreeing_ranks(key, expected):
    # Ranks disagree, one has no such tokens (NaN): min, max and mean over the others.
    assert metrics.combine_metric(key, torch.tensor([0.5, 3.0, math.nan])) == expected
    assert math.isnan(metrics.combine_metric(key, torch.tensor([math.nan, math.nan])))


def test_combine_over_ranks_gathers_one_row_and_reduces_each_key_its_way():
    other_rank = torch.tensor([[3.0, 0.5, math.nan]])
    rows = []

    def gather(row: torch.Tensor) -> torch.Tensor:  # a two-rank all-gather, as accelerate returns it
        rows.append(row)
        return torch.cat([row, other_rank])

    summary = {'future_kl_mean': torch.tensor(1.0), 'influence_weight_min': torch.tensor(2.0),
               'influence_weight_max': torch.tensor(4.0)}
    combined = ranks.combine_over_ranks(summary, gather, torch.device('cpu'))
    assert combined == {'future_kl_mean': 2.0, 'influence_weight_min': 0.5, 'influence_weight_max': 4.0}
    assert len(rows) == 1 and rows[0].shape == (1, 3)


def test_combine_over_ranks_gathers_the_row_on_the_given_device():
    seen = []

    def gather(row: torch.Tensor) -> torch.Tensor:  # rank 0's row, then rank 1's: the values it would gather
        seen.append(row.device)
        return torch.tensor([[1.0, 2.0], [3.0, 0.5]])

    summary = {'future_kl_mean': torch.tensor(1.0), 'influence_weight_min': torch.tensor(2.0)}
    assert ranks.combine_over_ranks(summary, gather, torch.device('meta')) == {'future_kl_mean': 2.0,
                                                                                   'influence_weight_min': 0.5}
    ranks.combine_over_ranks(summary, gather)
    assert seen == [torch.device('meta'), torch.device('cpu')]


def test_record_metric_keeps_one_extreme_entry_and_appends_means():
    """Hosts average each per-step list: a min/max key must hold the extreme over chunks, once."""
    values: dict[str, list[float]] = {key: [] for key in metrics.METRIC_REDUCTIONS}
    chunks = [{'influence_weight_min': 0.9, 'influence_weight_max': 1.1, 'neg_adv_ratio_p99': 2.0,
               'future_kl_mean': 0.1},
              {'influence_weight_min': 0.8, 'influence_weight_max': 1.2, 'neg_adv_ratio_p99': math.nan,
               'future_kl_mean': 0.3},
              {'influence_weight_min': 0.85, 'influence_weight_max': 1.15, 'neg_adv_ratio_p99': 1.5,
               'future_kl_mean': 0.2}]
    for chunk in chunks:
        for key, value in chunk.items():
            metrics.record_metric(values[key], key, value)
    assert values['influence_weight_min'] == [0.8]
    assert values['influence_weight_max'] == [1.2]
    assert values['neg_adv_ratio_p99'] == [2.0]  # a chunk without negative advantages (NaN) is ignored
    assert values['future_kl_mean'] == [0.1, 0.3, 0.2]


def test_record_metric_starts_from_nan_without_losing_the_next_value():
    values: list[float] = []
    metrics.record_metric(values, 'influence_weight_max', math.nan)
    metrics.record_metric(values, 'influence_weight_max', 1.25)
    assert values == [1.25]


@pytest.mark.parametrize('field', settings.RATIO_THRESHOLD_FIELDS)
@pytest.mark.parametrize('value, refused', [(1.05, True), (1.28, True), (1.2800001, False), (10.0, False)])
def test_ratio_thresholds_must_lie_beyond_the_ppo_clip(field, value, refused):
    config = FIPOConfig(**{field: value})

    def check() -> None:
        settings.check_ratio_thresholds(config, 0.28, lambda name: f'--{name}', 'host', 'eps_high')

    if refused:
        message = rf'^host: --{field} must be > 1 \+ eps_high = 1\.28 .*; got {value:g}\.$'
        with pytest.raises(ValueError, match=message):
            check()
    else:
        check()
    settings.check_ratio_thresholds(config, None, str, 'host', 'eps_high')  # no PPO clip known: nothing to check


def test_warn_is_silent_off_rank_zero(monkeypatch, recwarn):
    monkeypatch.setenv('RANK', '3')
    messages.warn('quiet')
    monkeypatch.setenv('RANK', '0')
    messages.warn('loud')
    assert [str(warning.message) for warning in recwarn] == ['[swift-fipo] WARNING: loud']


def test_reweight_advantages_is_advantage_times_weight():
    log_ratio, mask, advantages = random_inputs(4, 30, seed=2, scale=0.4)
    config = PRESETS['paper-7b']
    weighted, stats = reweight_advantages(advantages, log_ratio, mask, config)
    # paper-7b in the float64 brute force's terms: symmetric clip 0.2, safety 3, c = 10 for the filter and
    # the drop, log-ratios clamped to 20, unclipped cap 10.
    weight, _, _ = brute_fipo_weight(log_ratio, mask, advantages, clip_high_only=False, safety_threshold=3.0,
                                     delta=10.0, filter_threshold=10.0, log_ratio_clamp=20.0,
                                     unclipped_weight_cap=10.0, drop_threshold=10.0)
    assert weighted.shape == (4, 30)
    assert is_close(weighted, advantages[:, None] * weight)
    assert torch.equal(weighted, advantages[:, None] * stats.weight)  # exactly the weights it reports
    assert weighted.data_ptr() != advantages.data_ptr()


class _Base:

    def greet(self) -> str:
        return 'base'


class _Owner(_Base):

    def own(self) -> str:
        return 'own'


def _shout(original):
    import functools

    @functools.wraps(original)
    def shout(self) -> str:
        return original(self).upper()

    return shout


def test_patches_apply_once_and_revert_exactly():
    patch_set = patches.PatchSet([patches.Patch(_Owner, 'own', _shout), patches.Patch(_Owner, 'greet', _shout)])
    own_before = vars(_Owner)['own']
    patch_set.apply()
    patch_set.apply()  # idempotent: wrapped once
    assert (_Owner().own(), _Owner().greet()) == ('OWN', 'BASE')
    assert patches.is_patch(_Owner.own) and patches.original_of(_Owner.own) is own_before
    assert patches.original_of(_Owner.greet) is _Base.greet
    patch_set.revert()
    assert vars(_Owner)['own'] is own_before
    assert 'greet' not in vars(_Owner)  # it was inherited: the revert removes ours, not the base's
    assert (_Owner().own(), _Owner().greet()) == ('own', 'base')
    patch_set.revert()  # reverting twice changes nothing
    assert vars(_Owner)['own'] is own_before


def test_a_subclass_of_a_patched_class_is_not_wrapped_twice():
    class Child(_Owner):
        pass

    parent = patches.Patch(_Owner, 'own', _shout)
    parent.apply()
    try:
        patches.Patch(Child, 'own', _shout).apply()
        assert Child().own() == 'OWN' and 'own' not in vars(Child)
    finally:
        parent.revert()
    assert _Owner().own() == 'own'


def test_run_settings_capture_no_tokens_unless_asked():
    # A trainer built without the command-line hook gets these settings: nothing may be written to disk.
    assert settings.RunSettings(config=FIPOConfig()).capture_completions == 0


def test_settings_and_patch_records_are_immutable():
    """Hosts share these objects (the trainer's args, the patch registry): nobody may change them after
    the fact; frozen dataclasses are also hashable."""
    import dataclasses
    patch = patches.Patch(_Owner, 'own', _shout, 'test patch')
    for record in (FIPOConfig(), settings.RunSettings(config=FIPOConfig()), patch, patches.PatchSet([patch])):
        field = dataclasses.fields(record)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, field, getattr(record, field))
    assert hash(FIPOConfig(delta=2.0)) == hash(FIPOConfig(delta=2.0))
