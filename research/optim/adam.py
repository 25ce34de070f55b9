"""Adam (Kingma & Ba, 2015) and AdamW (Loshchilov & Hutter, 2019) as optax transformations.

For gradient g_t of parameters θ_{t-1}, step count t = 1, 2, ... and m_0 = v_0 = 0:

    m_t = β1·m_{t-1} + (1 − β1)·g_t             first-moment EMA
    v_t = β2·v_{t-1} + (1 − β2)·g_t²            second-moment EMA
    m̂_t = m_t / (1 − β1^t)                      bias corrections
    v̂_t = v_t / (1 − β2^t)
    θ_t = θ_{t-1} − η_t·m̂_t / (√v̂_t + ε)        ε outside the square root

Adam with weight decay λ is L2 regularisation: g_t ← g_t + λ·θ_{t-1} before the moments,
so the decay is rescaled by 1/(√v̂_t + ε) like the gradient. AdamW differs in one line,
the update, where the decay bypasses the moments:

    θ_t = θ_{t-1} − η_t·(m̂_t / (√v̂_t + ε) + λ·θ_{t-1})

In code the two are the same three stages in a different order: `adam` adds λθ before
`scale_by_adam`, `adamw` after it. As in optax, AdamW's decay is multiplied by η_t.
"""

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class ScaleByAdamState(NamedTuple):
    """Update count t and the moment EMAs m (dtype `mu_dtype` or the parameter's) and v."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                  mu_dtype: Any = None) -> optax.GradientTransformation:
    """Maps gradients g_t to the Adam direction m̂_t / (√v̂_t + ε) (module docstring).

    `mu_dtype` (a dtype or its name, e.g. "bfloat16") stores m in that precision; None keeps
    each parameter's dtype. Arithmetic runs in the promoted dtype of the gradient and the
    moment; the bias corrections 1 − β^t are computed in float32. Moments keep the dtype
    they were initialised with, so the state's structure is fixed (as `jit`, checkpoints
    and `optax.MultiSteps` need).
    """
    check_decay_rate("b1", b1)
    check_decay_rate("b2", b2)
    check_non_negative(eps=eps)
    mu_dtype = canonical_dtype(mu_dtype)

    def init(params):
        return ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(lambda p: jnp.zeros_like(p, dtype=mu_dtype), params),
            nu=jax.tree.map(jnp.zeros_like, params),
        )

    def update(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * jnp.square(g), updates, state.nu)
        mu_correction = 1 - b1 ** count  # float32: β^t would round to 1 in bfloat16
        nu_correction = 1 - b2 ** count

        def direction(m, v):
            m_hat = m / mu_correction.astype(m.dtype)
            v_hat = v / nu_correction.astype(v.dtype)
            return m_hat / (jnp.sqrt(v_hat) + eps)

        directions = jax.tree.map(direction, mu, nu)
        return directions, ScaleByAdamState(
            count=count, mu=cast_like(mu, state.mu), nu=cast_like(nu, state.nu))

    return optax.GradientTransformation(init, update)


def adam(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8, weight_decay: float = 0.0, *, mask: Any = None,
         mu_dtype: Any = None) -> optax.GradientTransformation:
    """Adam with L2 regularisation: λθ joins the gradient before the moments.

    `learning_rate` is a float or a schedule (a function of the update count, from 0).
    `mask` (a pytree of bools like the parameters, or a function params -> that pytree)
    selects the parameters that are decayed; None decays all. `update` needs `params`.
    """
    check_non_negative(learning_rate=learning_rate, weight_decay=weight_decay)
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask),
        scale_by_adam(b1, b2, eps, mu_dtype),
        optax.scale_by_learning_rate(learning_rate),
    )


def adamw(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 1e-4,
          mask: Any = None, *,
          mu_dtype: Any = None) -> optax.GradientTransformation:
    """AdamW, decoupled weight decay: λθ joins the Adam direction, after the moments.

    Arguments as in `adam`; the decay is scaled by the learning rate (as optax.adamw).
    """
    check_non_negative(learning_rate=learning_rate, weight_decay=weight_decay)
    return optax.chain(
        scale_by_adam(b1, b2, eps, mu_dtype),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def cast_like(tree, reference):
    """`tree` with each leaf cast to the dtype of the matching leaf of `reference`."""
    return jax.tree.map(lambda x, r: x.astype(r.dtype), tree, reference)


def canonical_dtype(dtype: Any):
    """None, or the numpy dtype named or given by `dtype`."""
    if dtype is None:
        return None
    try:
        return jnp.dtype(dtype)
    except TypeError:
        raise ValueError(f"mu_dtype {dtype!r} is not a dtype") from None


def check_decay_rate(name: str, value) -> None:
    """Raises ValueError unless a Python number `value` is in [0, 1); arrays are not checked."""
    if isinstance(value, numbers.Real) and not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def check_non_negative(**values) -> None:
    """Raises ValueError naming any Python number below 0. Schedules and arrays (as passed by
    `optax.inject_hyperparams`, possibly traced) are not checked."""
    for name, value in values.items():
        if isinstance(value, numbers.Real) and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
