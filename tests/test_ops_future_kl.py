import pytest
import torch
from reference import brute_future_kl, is_close

from swift_fipo import discounted_future_sum


@pytest.mark.parametrize('length', [1, 2, 63, 64, 65, 130, 4096 + 7])
@pytest.mark.parametrize('gamma', [2**(-1 / 32), 0.5, 1.0, 0.0])
def test_matches_float64_brute_force(length, gamma):
    values = torch.randn(3, length, generator=torch.Generator().manual_seed(length))
    expected = brute_future_kl(values, gamma)
    scale = brute_future_kl(values.abs(), gamma)
    assert is_close(discounted_future_sum(values, gamma), expected, tol=1e-6, scale=scale)


@pytest.mark.parametrize('block_size', [2, 3, 16, 200, 256])
def test_block_size_does_not_change_the_result(block_size):
    values = torch.randn(2, 777, generator=torch.Generator().manual_seed(1))
    expected = brute_future_kl(values, 0.97)
    assert is_close(discounted_future_sum(values, 0.97, block_size=block_size), expected, tol=2e-5)


def test_long_sequence_keeps_float32_accuracy_and_shape():
    # Several levels of carry (T / 64**2 > 1): each level must stay exact.
    values = torch.randn(2, 20_000, generator=torch.Generator().manual_seed(2)).double()
    gamma = 2**(-1 / 32)
    # Reference by the recurrence F_t = x_t + gamma * F_{t+1}, in float64.
    expected = torch.zeros_like(values)
    running = torch.zeros(2, dtype=torch.float64)
    for t in range(values.shape[1] - 1, -1, -1):
        running = values[:, t] + gamma * running
        expected[:, t] = running
    actual = discounted_future_sum(values.float(), gamma)
    assert actual.shape == values.shape and actual.dtype == torch.float32
    assert is_close(actual, expected, tol=2e-5)


def test_leading_dimensions_are_kept():
    values = torch.randn(2, 3, 100)
    flat = discounted_future_sum(values.reshape(6, 100), 0.9)
    assert torch.equal(discounted_future_sum(values, 0.9), flat.reshape(2, 3, 100))


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match='gamma'):
        discounted_future_sum(torch.zeros(1, 4), 1.5)
    with pytest.raises(ValueError, match='block_size'):
        discounted_future_sum(torch.zeros(1, 4), 0.5, block_size=1)
