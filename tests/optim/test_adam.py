"""research/optim/adam.py: the Adam equations, agreement with optax, masks, jit, sharding, MultiSteps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research.optim import adam, adamw, scale_by_adam

STEPS = 200
# float32 round-off: both sides run the same float32 (bfloat16) operations, possibly fused or
# ordered differently by XLA, so the 200-step trajectories may differ by a few ulps.
TOLERANCE = {jnp.dtype(jnp.float32): dict(rtol=1e-5, atol=1e-6),
             jnp.dtype(jnp.bfloat16): dict(rtol=2**-7, atol=2**-7),  # one bfloat16 ulp
             jnp.dtype(jnp.int32): dict(rtol=0, atol=0)}  # update counts
SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 1e-2, warmup_steps=20, decay_steps=STEPS, end_value=1e-3)


def random_params(seed=0):
    """A pytree of mixed shapes (scalar to 4-D) and dtypes (float32 and bfloat16)."""
    rng = np.random.default_rng(seed)

    def normal(shape, dtype=jnp.float32):
        return jnp.asarray(rng.normal(size=shape), dtype)

    return {
        "dense": {"kernel": normal((16, 8)), "bias": normal((8,))},
        "scalar": normal(()),
        "half": {"kernel": normal((8, 4), jnp.bfloat16)},
        "stack": [normal((3, 3, 2, 4))],
    }


def noise_sequence(params, steps, seed=1):
    """Gradient noise for `steps` steps: each leaf gets a leading step axis, same dtype."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=(steps, *p.shape)), p.dtype), params)


def at_step(tree, t):
    """Entry `t` along the leading step axis of every leaf."""
    return jax.tree.map(lambda x: x[t], tree)


def gradients(params, noise):
    """The gradient of ½‖θ‖², plus noise."""
    return jax.tree.map(jnp.add, params, noise)


def trajectory(optimizer, params, noise):
    """Final (params, optimizer state) after one update per step of `noise`."""
    def step(carry, noise_t):
        params, state = carry
        updates, state = optimizer.update(gradients(params, noise_t), state, params)
        return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, (params, optimizer.init(params)), noise)[0]


def train(optimizers, params, steps=STEPS):
    """`trajectory` of each optimizer from `params` on the same noise, in one jit."""
    noise = noise_sequence(params, steps)
    return jax.jit(lambda p, n: [trajectory(o, p, n) for o in optimizers])(params, noise)


def assert_trees_close(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.dtype == e.dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(e, np.float32), **TOLERANCE[a.dtype])


def matrices_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


PARAMS = random_params()
FLOAT32_MASK = jax.tree.map(lambda p: p.dtype == jnp.float32, PARAMS)

AGREEMENT_CASES = {
    "adam_wd0_constant": (lambda: adam(1e-2), lambda: optax.adam(1e-2)),
    "adam_wd0_schedule_mu_bfloat16": (
        lambda: adam(SCHEDULE, mu_dtype="bfloat16"), lambda: optax.adam(SCHEDULE, mu_dtype=jnp.bfloat16)),
    "adam_l2_constant_mask_function": (
        lambda: adam(1e-2, weight_decay=0.1, mask=matrices_mask),
        lambda: optax.chain(optax.add_decayed_weights(0.1, matrices_mask), optax.adam(1e-2))),
    "adam_l2_schedule_mask_tree": (
        lambda: adam(SCHEDULE, b1=0.8, b2=0.95, eps=1e-3, weight_decay=0.1, mask=FLOAT32_MASK),
        lambda: optax.chain(optax.add_decayed_weights(0.1, FLOAT32_MASK), optax.adam(SCHEDULE, 0.8, 0.95, 1e-3))),
    "adamw_constant_default_decay": (lambda: adamw(1e-2), lambda: optax.adamw(1e-2)),
    "adamw_constant_mask_tree": (
        lambda: adamw(1e-2, weight_decay=0.1, mask=FLOAT32_MASK),
        lambda: optax.adamw(1e-2, weight_decay=0.1, mask=FLOAT32_MASK)),
    "adamw_schedule_mask_function": (
        lambda: adamw(SCHEDULE, b2=0.95, eps=1e-3, weight_decay=0.1, mask=matrices_mask),
        lambda: optax.adamw(SCHEDULE, b2=0.95, eps=1e-3, weight_decay=0.1, mask=matrices_mask)),
}


@pytest.fixture(scope="module")
def agreement_runs():
    """Case name -> (ours, optax's) final (params, state); one jit for all cases (compile time)."""
    names = sorted(AGREEMENT_CASES)
    runs = train([make() for name in names for make in AGREEMENT_CASES[name]], PARAMS)
    return {name: (runs[2 * i], runs[2 * i + 1]) for i, name in enumerate(names)}


@pytest.mark.parametrize("case", sorted(AGREEMENT_CASES))
def test_agrees_with_optax_over_200_steps(agreement_runs, case):
    (params, state), (expected_params, expected_state) = agreement_runs[case]
    assert_trees_close(params, expected_params)
    assert_trees_close(jax.tree.leaves(state), jax.tree.leaves(expected_state))
    assert not np.allclose(params["dense"]["kernel"], PARAMS["dense"]["kernel"], atol=1e-2)


def test_scale_by_adam_follows_the_kingma_ba_equations():
    """Gradients ~1e-2 and ε = 1e-3, so that where ε sits (outside the square root) matters."""
    b1, b2, eps = 0.9, 0.999, 1e-3
    grads = 1e-2 * np.random.default_rng(0).normal(size=(6, 5))
    m = v = np.zeros(5)
    transform = scale_by_adam(b1, b2, eps)
    update = jax.jit(transform.update)
    state = transform.init(jnp.zeros(5))
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        expected = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        direction, state = update(jnp.asarray(g, jnp.float32), state)
        # float32 round-off: β2 = 0.999 is inexact in float32 and 1 − β2^t cancels to ~1e-3,
        # so v̂ carries a relative error of ~1e-5.
        np.testing.assert_allclose(direction, expected, rtol=5e-5)
    assert int(state.count) == len(grads)


def test_decay_goes_through_the_moments_for_adam_but_not_for_adamw():
    """Zero gradient, one step: Adam's L2 term is normalised to ±η; AdamW's stays η·λ·θ."""
    learning_rate, weight_decay = 0.1, 0.01
    params = {"w": jnp.array([2.0, -0.5])}
    zero = {"w": jnp.zeros(2)}
    for optimizer, expected_step in (
            (adam(learning_rate, weight_decay=weight_decay), -learning_rate * np.sign(params["w"])),
            (adamw(learning_rate, weight_decay=weight_decay), -learning_rate * weight_decay * params["w"])):
        updates, _ = optimizer.update(zero, optimizer.init(params), params)
        np.testing.assert_allclose(updates["w"], expected_step, rtol=1e-5)


@pytest.mark.parametrize("optimizer", [adam, adamw])
def test_mask_tree_and_mask_function_exclude_the_same_leaves_from_decay(optimizer):
    params = {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}
    zero = jax.tree.map(jnp.zeros_like, params)
    for mask in ({"kernel": True, "bias": False}, matrices_mask):
        transform = optimizer(0.1, weight_decay=0.5, mask=mask)
        updates, _ = transform.update(zero, transform.init(params), params)
        assert np.all(np.asarray(updates["kernel"]) < 0)
        np.testing.assert_array_equal(updates["bias"], 0.0)


def test_sharded_params_keep_their_sharding_and_values():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    params = {"w": jnp.arange(64.0).reshape(16, 4) / 64, "v": jnp.linspace(-1, 1, 8), "b": jnp.ones(3)}
    specs = {"w": PartitionSpec("data", None), "v": PartitionSpec("data"), "b": PartitionSpec()}
    shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)
    optimizer = adamw(1e-2, weight_decay=0.1)

    @jax.jit
    def step(params, state, noise):
        updates, state = optimizer.update(gradients(params, noise), state, params)
        return optax.apply_updates(params, updates), state

    sharded = jax.device_put(params, shardings)
    state = optimizer.init(sharded)
    noise = noise_sequence(params, 3)
    for t in range(3):
        sharded, state = step(sharded, state, at_step(noise, t))

    [(expected, _)] = train([optimizer], params, steps=3)
    assert_trees_close(sharded, expected)
    adam_state = state[0]
    for tree in (sharded, adam_state.mu, adam_state.nu):
        for name, leaf in tree.items():
            assert leaf.sharding.is_equivalent_to(shardings[name], leaf.ndim), name


def test_inside_multisteps_equals_one_update_on_the_mean_gradient():
    accumulate, outer_steps = 4, 3
    params = {"w": jnp.ones((4, 2)), "b": jnp.zeros(2)}
    noise = noise_sequence(params, accumulate * outer_steps)
    optimizer = adamw(1e-2, weight_decay=0.1)
    multi = optax.MultiSteps(optimizer, every_k_schedule=accumulate)

    @jax.jit
    def accumulated_and_direct(params, noise):
        """Every micro-step's params under MultiSteps, and the params of plain AdamW fed the
        mean of each group of `accumulate` micro-gradients (all taken at the group's params)."""
        def micro_step(carry, noise_t):
            params, state = carry
            updates, state = multi.update(gradients(params, noise_t), state, params)
            params = optax.apply_updates(params, updates)
            return (params, state), params

        _, accumulated = jax.lax.scan(micro_step, (params, multi.init(params)), noise)
        grouped = jax.tree.map(lambda n: n.reshape(outer_steps, accumulate, *n.shape[1:]).mean(1), noise)
        direct, _ = trajectory(optimizer, params, grouped)
        return accumulated, direct

    accumulated, direct = accumulated_and_direct(params, noise)
    previous = params
    for t in range(accumulate * outer_steps):
        if (t + 1) % accumulate:  # mid-accumulation: parameters do not move
            assert_trees_close(at_step(accumulated, t), previous)
        previous = at_step(accumulated, t)
    assert_trees_close(previous, direct)
    assert not np.allclose(direct["w"], 1.0)


def test_array_hyperparameters_from_inject_hyperparams_work_under_jit():
    """optax.inject_hyperparams passes hyperparameters as (traced) arrays, e.g. to log η."""
    injected = optax.inject_hyperparams(adamw)(learning_rate=1e-2, weight_decay=0.1)
    params = {"w": jnp.linspace(-1, 1, 6)}
    [(params, state), (expected, _)] = train([injected, adamw(1e-2, weight_decay=0.1)], params, steps=5)
    assert_trees_close(params, expected)
    np.testing.assert_allclose(state.hyperparams["learning_rate"], 1e-2)


def test_mu_dtype_sets_the_first_moment_only():
    state = scale_by_adam(mu_dtype="bfloat16").init({"w": jnp.zeros(3), "h": jnp.zeros(3, jnp.bfloat16)})
    assert state.mu["w"].dtype == jnp.bfloat16 and state.nu["w"].dtype == jnp.float32
    assert state.mu["h"].dtype == jnp.bfloat16 and state.nu["h"].dtype == jnp.bfloat16


@pytest.mark.parametrize("build, message", [
    (lambda: adam(-1e-3), "learning_rate"),
    (lambda: adamw(-1e-3), "learning_rate"),
    (lambda: adam(1e-3, weight_decay=-0.1), "weight_decay"),
    (lambda: adamw(1e-3, weight_decay=-0.1), "weight_decay"),
    (lambda: adamw(1e-3, b1=1.0), "b1"),
    (lambda: adam(1e-3, b2=-0.5), "b2"),
    (lambda: adam(1e-3, eps=-1e-8), "eps"),
    (lambda: scale_by_adam(mu_dtype="float33"), "mu_dtype"),
])
def test_bad_arguments_raise_value_errors_naming_them(build, message):
    with pytest.raises(ValueError, match=message):
        build()
