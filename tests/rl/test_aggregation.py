"""research/rl/aggregation.py: each loss aggregation mode against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.rl.aggregation import aggregate

PER_TOKEN = jnp.array([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0], [5.0, 5.0, 5.0, 5.0]])
MASK = jnp.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize("mode, expected", [
    ("seq_mean_token_mean", ((1 + 2) / 2 + (10 + 20 + 30) / 3 + 0) / 3),  # 7.1666...
    ("token_mean", (1 + 2 + 10 + 20 + 30) / 5),                          # 12.6
    ("seq_mean_token_sum_norm", ((1 + 2) + (10 + 20 + 30) + 0) / 3 / 4),  # C = 4: 5.25
])
def test_aggregation_by_hand(mode, expected):
    result = jax.jit(aggregate, static_argnames=("mode", "constant_normaliser"))(
        PER_TOKEN, MASK, mode=mode, constant_normaliser=4.0)
    np.testing.assert_allclose(result, expected, rtol=1e-6)


def test_token_mean_weighs_tokens_and_seq_mean_weighs_sequences():
    grads = {mode: jax.grad(lambda x, mode=mode: aggregate(x, MASK, mode, constant_normaliser=4.0))(PER_TOKEN)
             for mode in ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")}
    np.testing.assert_allclose(grads["token_mean"], MASK / 5)
    np.testing.assert_allclose(grads["seq_mean_token_mean"][:2], [[1 / 6, 1 / 6, 0, 0], [1 / 9, 1 / 9, 1 / 9, 0]])
    np.testing.assert_allclose(grads["seq_mean_token_sum_norm"], MASK / 12)


def test_bad_modes_and_a_missing_normaliser_are_refused():
    with pytest.raises(ValueError, match="mode='sum'"):
        aggregate(PER_TOKEN, MASK, "sum")
    with pytest.raises(ValueError, match="constant_normaliser"):
        aggregate(PER_TOKEN, MASK, "seq_mean_token_sum_norm")
