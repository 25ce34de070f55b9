"""Running mean and variance of a stream of values, merged batch by batch (PPO-max reward scaling).

The statistics are a pytree of arrays, `RunningStats(count, mean, m2)` with m2 = Σ (x − mean)² over
every value seen, so they live in a train state, are checkpointed with it and update under jit.
Two sets of statistics merge exactly by Chan, Golub & LeVeque's parallel algorithm (1979):

    n = n_a + n_b,   δ = μ_b − μ_a,   μ = μ_a + δ·n_b/n,   M2 = M2_a + M2_b + δ²·n_a·n_b/n

which, unlike accumulating Σx and Σx², does not cancel catastrophically when the mean is large.
PPO-max (MOSS-RLHF) normalises each reward by the statistics of all rewards so far and clips it:
r ↦ clip((r − μ)/σ, −c, c), c = 10 (`normalise_and_clip`).
"""

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class RunningStats:
    """count: int32 scalar, the number of values seen; mean and m2: float32 of the values' shape."""

    count: jax.Array
    mean: jax.Array
    m2: jax.Array


def init_running_stats(shape: tuple[int, ...] = ()) -> RunningStats:
    """Statistics of nothing yet, for values of `shape` (() for scalar rewards)."""
    return RunningStats(count=jnp.zeros((), jnp.int32), mean=jnp.zeros(shape, jnp.float32),
                        m2=jnp.zeros(shape, jnp.float32))


def merge_running_stats(a: RunningStats, b: RunningStats) -> RunningStats:
    """The statistics of the union of what `a` and `b` saw (Chan et al.'s update, module docstring)."""
    count = a.count + b.count
    n_a, n_b = a.count.astype(jnp.float32), b.count.astype(jnp.float32)
    n = jnp.maximum(n_a + n_b, 1.0)  # both empty: the zeros stay zeros
    delta = b.mean - a.mean
    mean = a.mean + delta * (n_b / n)
    m2 = a.m2 + b.m2 + delta * delta * (n_a * n_b / n)
    return RunningStats(count=count, mean=mean, m2=m2)


def update_running_stats(stats: RunningStats, batch) -> RunningStats:
    """`stats` with the values `batch [n, *shape]` added (merged as a set of n values of `shape`)."""
    batch = batch.astype(jnp.float32)
    mean = jnp.mean(batch, axis=0)
    m2 = jnp.sum(jnp.square(batch - mean), axis=0)
    return merge_running_stats(stats, RunningStats(count=jnp.asarray(batch.shape[0], jnp.int32), mean=mean, m2=m2))


def running_variance(stats: RunningStats):
    """The population variance M2 / n of the values seen (0 before any)."""
    return stats.m2 / jnp.maximum(stats.count.astype(jnp.float32), 1.0)


def normalise_and_clip(values, stats: RunningStats, *, clip: float, eps: float = 1e-8):
    """clip((x − μ) / √(σ² + eps), −clip, clip) with μ, σ² the running mean and variance (PPO-max: the
    statistics updated with the batch first, clip 10)."""
    normalised = (values - stats.mean) * jax.lax.rsqrt(running_variance(stats) + eps)
    return jnp.clip(normalised, -clip, clip)
