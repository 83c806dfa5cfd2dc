"""Property-based tests (hypothesis): the maths searched, not enumerated.

- ``discounted_future_sum`` and ``compute_fipo_influence`` against the float64 brute force of
  ``reference.py``, over shapes (0 included), masks, advantage and ratio shapes and every config field;
- the same functions on hostile inputs (NaN, +-inf, float32 extremes, every float dtype) against their
  invariants: finite, detached, right shape, inside the clip or safety interval, 0 where dropped;
- ``FIPOConfig`` on hostile values for every field: refused with a ValueError naming the field, or
  accepted and then computing finite weights on those hostile inputs.

The number of examples per property comes from the hypothesis profile (tests/conftest.py): bounded and
derandomized in CI; ``HYPOTHESIS_PROFILE=search`` runs a longer random search.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from conftest import need

hypothesis = need('hypothesis')
from hypothesis import assume, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from reference import brute_fipo_weight, brute_future_kl, is_close  # noqa: E402

from swift_fipo import FIPOConfig, compute_fipo_influence  # noqa: E402
from swift_fipo.config import FLOAT32_MAX, FLOAT32_TINY, MAX_DECAY_RATE, MAX_LOG_RATIO_CLAMP, MIN_DECAY_RATE  # noqa: E402
from swift_fipo.ops.future_kl import discounted_future_sum  # noqa: E402
from swift_fipo.ops.influence import SAFETY_WEIGHT_BOUNDS  # noqa: E402

# numpy's float32(1e39) warns; that value is meant.
pytestmark = pytest.mark.filterwarnings('ignore:overflow encountered in cast:RuntimeWarning')
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FIELDS = ('decay_rate', 'clip_range', 'clip_high_only', 'safety_threshold', 'delta', 'filter_threshold',
          'log_ratio_clamp', 'sequence_drop', 'unclipped_weight_cap')
# Values that break naive float32 maths: overflow of exp and of sums, underflow, the signed zeros.
NASTY = (math.nan, math.inf, -math.inf, 3.4e38, -3.4e38, 1e30, -1e30, 88.8, -88.8, 104.0, -104.0, 1e-45,
         -0.0, 0.0, 1.0, -1.0, 20.0, -20.0)


def f32(value: float) -> float:
    """``value`` rounded to float32, as the library's comparisons see a threshold."""
    return float(torch.tensor(value, dtype=torch.float32))


@st.composite
def sparse_values(draw: Any, shape: tuple[int, ...], element: st.SearchStrategy[float],
                  background: st.SearchStrategy[float]) -> torch.Tensor:
    """A float64 tensor: a smooth random background plus up to 12 drawn values at drawn positions
    (cheap for hypothesis even at T = 700, and where the edge cases sit)."""
    numel = math.prod(shape)
    scale = draw(background)
    seed = draw(st.integers(0, 2**16))
    values = torch.randn(numel, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    if numel:
        for _ in range(draw(st.integers(0, 12))):
            values[draw(st.integers(0, numel - 1))] = draw(element)
    return values.reshape(shape)


@st.composite
def batches(draw: Any, moderate: bool, max_length: int = 40) -> dict[str, Any]:
    """log_ratio [B, T], completion mask, advantages ([B], [B, 1] or [B, T]) and an optional ratio."""
    batch = draw(st.integers(0, 3))
    length = draw(st.one_of(st.integers(0, max_length), st.integers(250, 300)) if not moderate
                  else st.integers(0, max_length))
    if moderate:  # every intermediate value stays a normal float32: comparable with float64 exactly
        element = st.floats(-1.0, 1.0, width=32)
        log_ratio = draw(sparse_values((batch, length), element, st.floats(0.0, 0.4))).float()
    else:
        element = st.sampled_from(NASTY) | st.floats(width=32)
        log_ratio = draw(sparse_values((batch, length), element, st.sampled_from([0.0, 0.3, 5.0, 1e3])))
        log_ratio = log_ratio.to(draw(st.sampled_from(FLOAT_DTYPES)))
    mask_kind = draw(st.sampled_from(['random', 'all', 'none', 'right-padded']))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    if mask_kind == 'random':
        mask = torch.rand(batch, length, generator=generator) > draw(st.floats(0.0, 1.0))
    elif mask_kind == 'right-padded':
        lengths = torch.randint(0, length + 1, (batch, ), generator=generator)
        mask = torch.arange(length)[None, :] < lengths[:, None]
    else:
        mask = torch.full((batch, length), mask_kind == 'all')
    mask = mask.to(draw(st.sampled_from([torch.bool, torch.int64, torch.float32])))
    if draw(st.booleans()):  # the same values in a column-major (non-contiguous) layout
        log_ratio, mask = (tensor.t().contiguous().t() for tensor in (log_ratio, mask))
    adv_shape = draw(st.sampled_from([(batch, ), (batch, 1), (batch, length)]))
    adv_element = st.floats(-2.0, 2.0) if moderate else st.sampled_from(NASTY) | st.floats()
    advantages = draw(sparse_values(adv_shape, adv_element, st.floats(0.0, 2.0)))
    ratio = None
    if draw(st.booleans()):
        ratio_shape = draw(st.sampled_from([(batch, length), (batch, 1)]))
        if moderate:
            ratio = draw(sparse_values(ratio_shape, st.floats(0.0, 30.0, width=32), st.floats(0.0, 1.0))).abs() + 0.5
        else:
            ratio = draw(sparse_values(ratio_shape, st.sampled_from(NASTY) | st.floats(), st.floats(0.0, 100.0)))
        ratio = ratio.float()
    return dict(log_ratio=log_ratio, mask=mask, advantages=advantages, ratio=ratio)


def ratio_thresholds() -> st.SearchStrategy[float | None]:
    return st.none() | st.floats(1.0, 40.0, exclude_min=True, width=32)


@st.composite
def valid_configs(draw: Any, moderate: bool) -> FIPOConfig:
    """A config from the whole accepted space (moderate: the part where float32 results can be
    compared with float64 ones decision by decision; thresholds are float32 numbers)."""
    clip_high_only = draw(st.booleans())
    clip_top = 1.0 if not clip_high_only else (5.0 if moderate else FLOAT32_MAX)
    delta, filter_threshold = draw(ratio_thresholds()), draw(ratio_thresholds())
    if not moderate:
        delta = draw(st.just(delta) | st.sampled_from([FLOAT32_MAX, 1.0000001]))
    edge_decay = st.sampled_from([MIN_DECAY_RATE, MAX_DECAY_RATE])
    return FIPOConfig(
        decay_rate=draw(st.floats(0.5 if moderate else MIN_DECAY_RATE, 64.0 if moderate else MAX_DECAY_RATE)
                        | (st.nothing() if moderate else edge_decay)),
        clip_range=draw(st.none() | st.just(0.0) | st.floats(0.0, clip_top, exclude_max=not clip_high_only,
                                                            width=32)),
        clip_high_only=clip_high_only,
        safety_threshold=draw(st.none() | st.floats(0.0625 if moderate else 2.0**-149,
                                                    40.0 if moderate else FLOAT32_MAX,
                                                    width=32).filter(lambda x: x > 0)),
        delta=delta,
        filter_threshold=filter_threshold,
        log_ratio_clamp=draw(st.none() | st.floats(0.0, MAX_LOG_RATIO_CLAMP, exclude_min=True, width=32)),
        sequence_drop=draw(st.booleans()) if (delta is not None or filter_threshold is not None) else False,
        unclipped_weight_cap=draw(st.none() | st.floats(FLOAT32_TINY if not moderate else 0.015625,
                                                        FLOAT32_MAX if not moderate else 1e6, width=32)),
    )


def check_invariants(weight: torch.Tensor, stats: Any, mask: torch.Tensor, config: FIPOConfig) -> None:
    """What holds for every input: finite, detached, [B, T] float32, inside the intervals, 0 if dropped."""
    assert weight.shape == mask.shape and weight.dtype == torch.float32
    assert not weight.requires_grad and weight.grad_fn is None
    assert bool(torch.isfinite(weight).all()), weight
    assert bool(torch.isfinite(stats.future_kl).all()) and bool(torch.isfinite(stats.raw_weight).all())
    assert torch.equal(weight, stats.weight)
    completion = mask.bool()
    assert bool((stats.future_kl[~completion] == 0).all())
    dropped = stats.dropped[:, None].expand_as(completion)
    assert bool((weight[dropped] == 0).all())
    fired = ~stats.safety_mask & ~dropped
    low_safe, high_safe = SAFETY_WEIGHT_BOUNDS
    assert bool(((weight[fired] >= low_safe) & (weight[fired] <= high_safe)).all())
    plain = stats.safety_mask & ~dropped
    if config.weight_bounds is not None:
        low, high = (f32(bound) for bound in config.weight_bounds)
    else:
        low, high = 0.0, f32(config.unclipped_weight_cap or FLOAT32_MAX)
    assert bool(((weight[plain] >= low) & (weight[plain] <= high)).all())
    summary = stats.summary  # never raises, every value a scalar tensor, finite or NaN (none there)
    assert all(value.dim() == 0 for value in summary.values())
    summary.pop('neg_adv_ratio_p99')  # a quantile of the ratios: inf when they are
    assert not any(value.isinf() for value in summary.values()), summary


# --- discounted_future_sum ------------------------------------------------------------------------


@given(shape=st.tuples(st.integers(0, 3), st.integers(0, 2)).map(lambda lead: lead[:1] if lead[1] == 0 else lead)
       | st.just(()),
       length=st.integers(0, 40) | st.integers(250, 700),
       gamma=st.sampled_from([0.0, 1.0, 2.0**-126, 2.0**(-1 / MAX_DECAY_RATE), 0.5]) | st.floats(0.0, 1.0),
       dtype=st.sampled_from([torch.float32, torch.float64]),
       data=st.data())
def test_future_sum_matches_brute_force(shape: tuple[int, ...], length: int, gamma: float, dtype: torch.dtype,
                                        data: Any) -> None:
    values = data.draw(sparse_values((*shape, length), st.floats(-1e3, 1e3), st.floats(0.0, 10.0))).to(dtype)
    out = discounted_future_sum(values, gamma)
    assert out.shape == values.shape and out.dtype == dtype
    expected = brute_future_kl(values, gamma)
    scale = brute_future_kl(values.abs(), gamma)
    assert is_close(out, expected, tol=1e-5 if dtype == torch.float32 else 1e-12, scale=scale)


@given(dtype=st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64]),
       gamma=st.floats(0.0, 1.0))
def test_future_sum_refuses_non_floating_values(dtype: torch.dtype, gamma: float) -> None:
    with pytest.raises(TypeError, match='values must be a floating-point tensor'):
        discounted_future_sum(torch.ones(2, 5).to(dtype), gamma)


@given(gamma=st.one_of(st.floats().filter(lambda g: not 0.0 <= g <= 1.0), st.booleans(), st.text(max_size=3),
                       st.just(None)))
def test_future_sum_refuses_a_gamma_that_is_not_a_decay(gamma: Any) -> None:
    with pytest.raises(ValueError, match=r'gamma must be a number in \[0, 1\]'):
        discounted_future_sum(torch.ones(2, 5), gamma)


# --- compute_fipo_influence ------------------------------------------------------------------------


@given(inputs=batches(moderate=True), config=valid_configs(moderate=True))
def test_influence_matches_float64_reference(inputs: dict[str, Any], config: FIPOConfig) -> None:
    log_ratio, mask, advantages, ratio = inputs['log_ratio'], inputs['mask'], inputs['advantages'], inputs['ratio']
    weight, stats = compute_fipo_influence(log_ratio, mask, advantages, config, ratio=ratio)
    check_invariants(weight, stats, mask, config)
    # The library tests float32 ratios: give the reference the same float32 numbers to compare.
    reference_ratio = torch.exp(log_ratio) if ratio is None else ratio
    expected, expected_future_kl, expected_safety = brute_fipo_weight(
        log_ratio, mask, advantages, decay_rate=config.decay_rate, clip_range=config.clip_range,
        clip_high_only=config.clip_high_only, safety_threshold=config.safety_threshold, delta=config.delta,
        ratio=reference_ratio, filter_threshold=config.filter_threshold, log_ratio_clamp=config.log_ratio_clamp,
        unclipped_weight_cap=config.unclipped_weight_cap, sequence_drop=config.sequence_drop)
    assume(weight.numel() > 0)
    assert torch.equal(stats.safety_mask, expected_safety)
    terms = brute_fipo_weight(log_ratio.abs(), mask, advantages, decay_rate=config.decay_rate, clip_range=None,
                              safety_threshold=None)[1]
    assert is_close(stats.future_kl, expected_future_kl, tol=1e-5, scale=terms)
    assert is_close(weight, expected, tol=1e-4)


@given(inputs=batches(moderate=False), config=valid_configs(moderate=False), grad=st.booleans())
def test_influence_invariants_on_hostile_inputs(inputs: dict[str, Any], config: FIPOConfig, grad: bool) -> None:
    log_ratio = inputs['log_ratio']
    if grad:
        log_ratio = log_ratio.clone().requires_grad_(True)
    weight, stats = compute_fipo_influence(log_ratio, inputs['mask'], inputs['advantages'], config,
                                           ratio=inputs['ratio'])
    check_invariants(weight, stats, inputs['mask'], config)


# --- FIPOConfig: every field, hostile values ---------------------------------------------------------


def _numpy_scalars(value: float) -> list[Any]:
    numpy = need('numpy')
    return [numpy.float32(value), numpy.float64(value), numpy.array(value)]


HOSTILE_SCALAR = st.one_of(
    st.none(), st.booleans(), st.floats(), st.integers(-10**400, 10**400), st.integers(-3, 100),
    st.sampled_from([MIN_DECAY_RATE, MAX_DECAY_RATE, MAX_DECAY_RATE * 1.0001, MIN_DECAY_RATE * 0.999,
                     MAX_LOG_RATIO_CLAMP, 88.5, FLOAT32_MAX, 3.4028235e38, FLOAT32_TINY, 5e-324, 1.0,
                     1.0000001, 0.0, -0.0, 0.2, 0.999999, 10**5000]),
    st.text(max_size=4), st.complex_numbers(max_magnitude=10), st.just([1.0]), st.just({'value': 1.0}),
)


@st.composite
def hostile_values(draw: Any) -> Any:
    """A plain scalar, or the same number as a numpy scalar / 0-dim array / 0-dim or 1-dim tensor."""
    value = draw(HOSTILE_SCALAR)
    wrap = draw(st.sampled_from(['plain', 'numpy', 'tensor0', 'tensor1']))
    if wrap == 'plain' or isinstance(value, (str, list, dict, complex)) or value is None:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63:
        return value
    if wrap == 'numpy':
        return draw(st.sampled_from(_numpy_scalars(value)))
    tensor = torch.tensor(value, dtype=torch.float64 if isinstance(value, float) else None)
    return tensor if wrap == 'tensor0' else tensor.reshape(1)


@given(overrides=st.dictionaries(st.sampled_from(FIELDS), hostile_values(), min_size=1, max_size=4),
       inputs=batches(moderate=False, max_length=24))
def test_every_config_value_is_refused_by_name_or_computes_finite_weights(overrides: dict[str, Any],
                                                                         inputs: dict[str, Any]) -> None:
    try:
        config = FIPOConfig(**overrides)
    except ValueError as error:
        named = [name for name in FIELDS if f'FIPOConfig.{name} ' in str(error)]
        assert len(named) == 1 and named[0] in overrides, str(error)
        assert 'must be' in str(error) and len(str(error)) < 600
        return
    for name in FIELDS:  # accepted: stored as plain Python values, whatever arrived
        value = getattr(config, name)
        assert value is None or type(value) in (float, bool), (name, value)
    weight, stats = compute_fipo_influence(inputs['log_ratio'], inputs['mask'], inputs['advantages'], config,
                                           ratio=inputs['ratio'])
    check_invariants(weight, stats, inputs['mask'], config)


@given(inputs=batches(moderate=False), config=valid_configs(moderate=False),
       dtype=st.sampled_from([torch.bfloat16, torch.float16]))
def test_autocast_never_changes_a_weight(inputs: dict[str, Any], config: FIPOConfig, dtype: torch.dtype) -> None:
    """Under CPU autocast (bf16, fp16), over the whole hostile input space: the same weights and
    Future-KL as without it, bit for bit (the guard leaves the float32 maths untouched)."""
    args = (inputs['log_ratio'], inputs['mask'], inputs['advantages'], config)
    expected, expected_stats = compute_fipo_influence(*args, ratio=inputs['ratio'])
    with torch.autocast('cpu', dtype=dtype):
        weight, stats = compute_fipo_influence(*args, ratio=inputs['ratio'])
    assert torch.isfinite(weight).all()
    assert torch.equal(weight, expected)
    assert torch.equal(stats.future_kl, expected_stats.future_kl)
