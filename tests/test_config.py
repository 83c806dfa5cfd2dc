import math

import pytest
from conftest import need

from swift_fipo import FIPOConfig


def test_defaults_equal_ms_swift_native_defaults():
    config = FIPOConfig()
    assert (config.decay_rate, config.clip_range, config.clip_high_only, config.safety_threshold,
            config.delta) == (32.0, 0.2, True, 4.0, None)
    assert config.gamma == pytest.approx(2**(-1 / 32), rel=1e-15)
    assert config.weight_bounds == (1.0, 1.2)


@pytest.mark.parametrize('clip_range, high_only, bounds', [(0.2, False, (0.8, 1.2)), (0.0, True, None),
                                                           (None, False, None), (1.5, True, (1.0, 2.5))])
def test_weight_bounds(clip_range, high_only, bounds):
    assert FIPOConfig(clip_range=clip_range, clip_high_only=high_only).weight_bounds == bounds


@pytest.mark.parametrize('field, value, allowed', [
    ('decay_rate', 0.0, '[1/126, 2**24]'),
    ('decay_rate', -1.0, '[1/126, 2**24]'),
    ('decay_rate', math.inf, '[1/126, 2**24]'),
    ('decay_rate', math.nan, '[1/126, 2**24]'),
    ('decay_rate', '32', 'a number in'),
    ('decay_rate', 0.0079, 'gamma = 2**(-1/decay_rate) must be a float32 number in [2**-126, 1)'),
    ('decay_rate', 2.0**24 + 1, 'round it to 1'),
    ('clip_range', -0.1, '[0, 3.4028234663852886e+38]'),
    ('clip_range', 1e39, '1+clip_range must be a finite float32'),
    ('safety_threshold', 0.0, '(0, 3.4028234663852886e+38]'),
    ('safety_threshold', math.inf, '(0, 3.4028234663852886e+38]'),
    ('delta', 1.0, '(1, 3.4028234663852886e+38]'),
    ('delta', 3.5e38, '(1, 3.4028234663852886e+38]'),
    ('log_ratio_clamp', 100.0, 'exp(+-log_ratio_clamp) must stay finite in float32'),
    ('log_ratio_clamp', 88.5, '(0, 88]'),
    ('unclipped_weight_cap', 1e-300, 'smaller caps round to 0'),
    ('clip_high_only', 1, 'True or False'),
])
def test_invalid_values_name_the_field_and_the_range(field, value, allowed):
    with pytest.raises(ValueError) as error:
        FIPOConfig(**{field: value})
    assert f'FIPOConfig.{field}' in str(error.value)
    assert allowed in str(error.value)


@pytest.mark.parametrize('field, value', [('decay_rate', 1 / 126), ('decay_rate', 2.0**24), ('log_ratio_clamp', 88.0),
                                          ('clip_range', 3.4028234663852886e38), ('delta', 3.4028234663852886e38),
                                          ('safety_threshold', 1e-45), ('unclipped_weight_cap', 2.0**-126)])
def test_every_bound_itself_is_accepted_and_computes_finite_weights(field, value):
    import torch

    from swift_fipo import compute_fipo_influence
    config = FIPOConfig(**{field: value}, clip_range=None if field == 'unclipped_weight_cap' else 0.2) \
        if field != 'clip_range' else FIPOConfig(clip_range=value)
    log_ratio = torch.tensor([[100.0, -100.0, 3e38, -3e38, math.inf, math.nan, 0.5, 88.0]])
    weight, _ = compute_fipo_influence(log_ratio, torch.ones(1, 8, dtype=torch.bool), torch.tensor([-1.0]), config)
    assert bool(torch.isfinite(weight).all())


def test_huge_ints_are_a_value_error_naming_the_field_not_an_overflow():
    for value in (10**400, -10**400, 10**5000):  # repr of 10**5000 itself raises: the message must not
        with pytest.raises(ValueError, match='FIPOConfig.clip_range must be'):
            FIPOConfig(clip_range=value)
    with pytest.raises(ValueError, match=r'got an int of 16610 bits'):
        FIPOConfig(decay_rate=10**5000)


def test_numpy_and_tensor_scalars_are_numbers_and_stored_as_floats():
    numpy = need('numpy')
    import torch
    config = FIPOConfig(decay_rate=numpy.float32(16.0), clip_range=torch.tensor(0.25), safety_threshold=numpy.int64(3),
                        delta=numpy.array(5.0), clip_high_only=numpy.bool_(False), sequence_drop=torch.tensor(True))
    assert config == FIPOConfig(decay_rate=16.0, clip_range=0.25, safety_threshold=3.0, delta=5.0,
                                clip_high_only=False, sequence_drop=True)
    assert type(config.decay_rate) is float and type(config.clip_range) is float and type(config.clip_high_only) is bool
    assert 'np.' not in repr(config) and 'tensor' not in repr(config)


@pytest.mark.parametrize('value', [True, 'numpy-bool', 'tensor-1d', 'complex', 'list'])
def test_non_numbers_are_refused_even_when_they_convert(value):
    numpy = need('numpy')
    import torch
    given = {'numpy-bool': numpy.bool_(True), 'tensor-1d': torch.tensor([16.0]), 'complex': 16 + 0j,
             'list': [16.0]}.get(value, value)
    with pytest.raises(ValueError, match='FIPOConfig.decay_rate must be a number'):
        FIPOConfig(decay_rate=given)


@pytest.mark.parametrize('field', ['decay_rate', 'clip_range', 'delta', 'clip_high_only', 'sequence_drop'])
def test_a_meta_tensor_is_refused_naming_the_field(field):
    # Before: torch's own RuntimeError ("Tensor.item() cannot be called on meta tensors"), no field named.
    import torch
    with pytest.raises(ValueError, match=f'FIPOConfig.{field} must be'):
        FIPOConfig(**{field: torch.tensor(16.0 if field != 'clip_range' else 0.2, device='meta')})


def test_a_message_names_the_other_fields_by_the_hosts_option_names():
    # Under verl and OpenRLHF, delta is the host's own dual clip: the message must name that option.
    with pytest.raises(ValueError) as error:
        FIPOConfig(sequence_drop=True)
    assert 'unless delta or filter_threshold is set' in str(error.value)
    names = {'sequence_drop': '--fipo.sequence_drop', 'delta': '--dual_clip', 'filter_threshold': '--fipo.filter'}
    assert error.value.describe(names['sequence_drop'], names.__getitem__) == (
        '--fipo.sequence_drop must be False unless --dual_clip or --fipo.filter is set (it needs a dual-clip '
        'threshold); got True.')


def test_a_hostile_string_is_shown_shortened():
    with pytest.raises(ValueError) as error:
        FIPOConfig(delta='x' * 10_000)
    assert len(str(error.value)) < 400 and '(10002 characters)' in str(error.value)


def test_symmetric_clip_must_keep_a_positive_lower_bound():
    with pytest.raises(ValueError, match=r'clip_range.*\[0, 1\)'):
        FIPOConfig(clip_range=1.0, clip_high_only=False)
    assert FIPOConfig(clip_range=1.0, clip_high_only=True).weight_bounds == (1.0, 2.0)


def test_every_field_has_help_text():
    assert all(len(text) > 20 for text in FIPOConfig.help().values())
    assert set(FIPOConfig.help()) == {'decay_rate', 'clip_range', 'clip_high_only', 'safety_threshold', 'delta',
                                      'filter_threshold', 'log_ratio_clamp', 'sequence_drop', 'unclipped_weight_cap'}


@pytest.mark.parametrize('field, value, allowed', [('filter_threshold', 1.0, r'\(1, '),
                                                   ('log_ratio_clamp', 0.0, r'\(0, 88\]'),
                                                   ('unclipped_weight_cap', -1.0, r'\[2\*\*-126, '),
                                                   ('sequence_drop', True, 'delta or filter_threshold')])
def test_safeguard_values_are_validated(field, value, allowed):
    with pytest.raises(ValueError, match=f'FIPOConfig.{field} .*{allowed}'):
        FIPOConfig(**{field: value})


@pytest.mark.parametrize('field, value', [('decay_rate', 0.25), ('clip_range', 0.0), ('safety_threshold', 0.5),
                                          ('delta', 1.01), ('filter_threshold', 1.01), ('log_ratio_clamp', 0.5),
                                          ('unclipped_weight_cap', 0.5)])
def test_values_just_inside_the_documented_ranges_are_accepted(field, value):
    assert getattr(FIPOConfig(**{field: value}), field) == value
