import math

import pytest

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
    ('decay_rate', 0.0, '> 0'),
    ('decay_rate', -1.0, '> 0'),
    ('decay_rate', math.inf, 'finite'),
    ('decay_rate', math.nan, 'finite'),
    ('decay_rate', '32', '> 0'),
    ('clip_range', -0.1, '>= 0'),
    ('safety_threshold', 0.0, '> 0'),
    ('delta', 1.0, '> 1'),
    ('clip_high_only', 1, 'True or False'),
])
def test_invalid_values_name_the_field_and_the_range(field, value, allowed):
    with pytest.raises(ValueError) as error:
        FIPOConfig(**{field: value})
    assert f'FIPOConfig.{field}' in str(error.value)
    assert allowed in str(error.value)


def test_symmetric_clip_must_keep_a_positive_lower_bound():
    with pytest.raises(ValueError, match=r'clip_range.*\[0, 1\)'):
        FIPOConfig(clip_range=1.0, clip_high_only=False)
    assert FIPOConfig(clip_range=1.0, clip_high_only=True).weight_bounds == (1.0, 2.0)


def test_every_field_has_help_text():
    assert all(len(text) > 20 for text in FIPOConfig.help().values())
    assert set(FIPOConfig.help()) == {'decay_rate', 'clip_range', 'clip_high_only', 'safety_threshold', 'delta',
                                      'filter_threshold', 'log_ratio_clamp', 'sequence_drop', 'unclipped_weight_cap'}


@pytest.mark.parametrize('field, value, allowed', [('filter_threshold', 1.0, '> 1'), ('log_ratio_clamp', 0.0, '> 0'),
                                                   ('unclipped_weight_cap', -1.0, '> 0'),
                                                   ('sequence_drop', True, 'delta or filter_threshold')])
def test_safeguard_values_are_validated(field, value, allowed):
    with pytest.raises(ValueError, match=f'FIPOConfig.{field} .*{allowed}'):
        FIPOConfig(**{field: value})
