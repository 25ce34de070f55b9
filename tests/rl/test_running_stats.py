"""research/rl/running_stats.py: merged statistics equal NumPy's over the concatenation, under jit."""

import jax
import jax.numpy as jnp
import numpy as np

from research.rl.running_stats import (init_running_stats, merge_running_stats, normalise_and_clip,
                                       running_variance, update_running_stats)


def test_batch_by_batch_statistics_equal_numpy_over_the_concatenation():
    rng = np.random.default_rng(0)
    batches = [1e4 + rng.normal(size=(n, 2)) * [1.0, 3.0] for n in (5, 1, 8, 3)]  # a large mean: no cancellation
    update = jax.jit(update_running_stats)
    stats = init_running_stats((2,))
    for batch in batches:
        stats = update(stats, jnp.asarray(batch, jnp.float32))
    everything = np.concatenate(batches).astype(np.float32).astype(np.float64)
    assert int(stats.count) == len(everything)
    np.testing.assert_allclose(stats.mean, everything.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(running_variance(stats), everything.var(axis=0), rtol=1e-3)


def test_merging_with_nothing_changes_nothing():
    stats = update_running_stats(init_running_stats(), jnp.array([1.0, 2.0, 4.0]))
    for merged in (merge_running_stats(stats, init_running_stats()), merge_running_stats(init_running_stats(), stats)):
        np.testing.assert_allclose(merged.mean, stats.mean)
        np.testing.assert_allclose(merged.m2, stats.m2)
    empty = merge_running_stats(init_running_stats(), init_running_stats())
    assert int(empty.count) == 0 and float(running_variance(empty)) == 0


def test_rewards_are_normalised_by_the_running_statistics_then_clipped():
    history = np.array([0.0, 1.0, 2.0, 3.0, 4.0], np.float32)
    stats = update_running_stats(init_running_stats(), jnp.asarray(history))
    rewards = jnp.array([2.0, 4.0, 100.0, -100.0])
    expected = np.clip((np.asarray(rewards) - 2.0) / history.std(), -10, 10)
    np.testing.assert_allclose(normalise_and_clip(rewards, stats, clip=10.0), expected, rtol=1e-5)
