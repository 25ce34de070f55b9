"""research/optim/factory.py: the optimizer from `config.optimizer`: name, clipping, schedule, mask."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from research.optim import adam, adamw, make_optimizer, make_schedule
from research.optim.adam import ScaleByAdamState
from research.optim.factory import decays_matrices

TOTAL_STEPS = 8


def opt_config(**overrides):
    """The LLaMA-2 recipe (AdamW .9/.95, eps 1e-5, wd 0.1, clip 1, cosine to 10%), scaled down."""
    fields = dict(name="adamw", learning_rate=1e-2, b1=0.9, b2=0.95, eps=1e-5, weight_decay=0.1,
                  decay_mask="matrices", grad_clip_norm=1.0, schedule="warmup_cosine", warmup_steps=2,
                  final_lr_fraction=0.1, mu_dtype=None)
    return ml_collections.ConfigDict({**fields, **overrides})


def llama_like_params():
    """The parameter paths of research.models.llama, with layers stacked by nn.scan."""
    rng = np.random.default_rng(0)
    shapes = {"embed": (10, 4), "lm_head": (4, 10), "norm": {"scale": (4,)}, "bias": (10,),
              "layers": {"attention_norm": {"scale": (2, 4)}, "ffn": {"up": (2, 4, 8)}}}
    return {"params": jax.tree.map(lambda shape: jnp.asarray(rng.normal(size=shape), jnp.float32), shapes,
                                   is_leaf=lambda x: isinstance(x, tuple))}


PARAMS = llama_like_params()
DECAYED = {"params": {"embed": False, "lm_head": True, "norm": {"scale": False}, "bias": False,
                      "layers": {"attention_norm": {"scale": False}, "ffn": {"up": True}}}}


def updates_for(runs, params=PARAMS):
    """For each (optimizer, gradient sequence) pair, the update of every step, all steps taken
    at `params`; all pairs in one jit."""
    def run(optimizer, grads_sequence):
        def step(state, grads):
            updates, state = optimizer.update(grads, state, params)
            return state, updates
        return jax.lax.scan(step, optimizer.init(params), grads_sequence)[1]

    return jax.jit(lambda: [run(*pair) for pair in runs])()


def gradient_sequence(steps, scales=None):
    """Random gradients like PARAMS with a leading step axis; step t multiplied by scales[t]."""
    rng = np.random.default_rng(1)
    scales = np.ones(steps) if scales is None else np.asarray(scales)
    return jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=(steps, *p.shape)) * scales.reshape(-1, *[1] * p.ndim), p.dtype),
        PARAMS)


def global_norms(grads_sequence):
    return np.sqrt(sum(np.sum(np.square(g), axis=tuple(range(1, g.ndim))) for g in jax.tree.leaves(grads_sequence)))


def assert_trees_close(actual, expected):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7)  # float32 round-off


def test_matrices_mask_excludes_embeddings_norms_and_biases_also_when_stacked():
    assert decays_matrices(PARAMS) == DECAYED


@pytest.mark.parametrize("name, optimizer", [("adam", adam), ("adamw", adamw)])
def test_name_selects_the_optimizer_with_clipping_schedule_and_mask(name, optimizer):
    config = opt_config(name=name)
    expected = optax.chain(optax.clip_by_global_norm(1.0), optimizer(
        make_schedule(config, TOTAL_STEPS), 0.9, 0.95, 1e-5, 0.1, mask=DECAYED))
    grads = gradient_sequence(TOTAL_STEPS, scales=np.linspace(0.1, 3, TOTAL_STEPS))
    actual, expected = updates_for([(make_optimizer(config, TOTAL_STEPS), grads), (expected, grads)])
    assert_trees_close(actual, expected)


def test_decay_mask_all_decays_every_leaf_and_matrices_only_the_matrices():
    zero = jax.tree.map(lambda p: jnp.zeros((1, *p.shape)), PARAMS)
    masks = {"all": jax.tree.map(lambda _: True, DECAYED), "matrices": DECAYED}
    all_updates = updates_for(
        [(make_optimizer(opt_config(decay_mask=name, schedule="constant"), TOTAL_STEPS), zero) for name in masks])
    for updates, decayed in zip(all_updates, masks.values()):
        expected = jax.tree.map(lambda p, d: -1e-2 * 0.1 * p[None] * d, PARAMS, decayed)
        assert_trees_close(updates, expected)


def test_gradients_are_clipped_to_the_global_norm_before_the_optimizer():
    """Adam is nearly invariant to a common gradient scale, so the test varies the scale per step."""
    grads = gradient_sequence(4, scales=[30.0, 0.01, 5.0, 0.02])
    clipped = jax.tree.map(lambda g: g * np.minimum(1.0, 1.0 / global_norms(grads)).reshape(-1, *[1] * (g.ndim - 1)),
                           grads)
    plain = adam(1e-2, 0.9, 0.95, 1e-5)
    settings = dict(name="adam", weight_decay=0.0, schedule="constant")
    with_clip, without_clip, reference_clipped, reference_raw = updates_for([
        (make_optimizer(opt_config(**settings, grad_clip_norm=1.0), TOTAL_STEPS), grads),
        (make_optimizer(opt_config(**settings, grad_clip_norm=None), TOTAL_STEPS), grads),
        (plain, clipped), (plain, grads)])
    assert_trees_close(with_clip, reference_clipped)
    assert_trees_close(without_clip, reference_raw)
    assert not np.allclose(with_clip["params"]["lm_head"], without_clip["params"]["lm_head"], rtol=1e-2)


def test_clip_norm_zero_means_no_clipping():
    settings = dict(name="adam", schedule="constant")
    unclipped, zero = (make_optimizer(opt_config(**settings, grad_clip_norm=clip), TOTAL_STEPS).init(PARAMS)
                       for clip in (None, 0.0))
    clipped = make_optimizer(opt_config(**settings, grad_clip_norm=1.0), TOTAL_STEPS).init(PARAMS)
    assert jax.tree.structure(zero) == jax.tree.structure(unclipped) != jax.tree.structure(clipped)


def test_update_t_uses_the_learning_rate_that_make_schedule_gives_for_t():
    settings = dict(grad_clip_norm=None, weight_decay=0.0)
    config = opt_config(**settings)
    grads = gradient_sequence(TOTAL_STEPS)
    scheduled, unit = updates_for([
        (make_optimizer(config, TOTAL_STEPS), grads),
        (make_optimizer(opt_config(**settings, learning_rate=1.0, schedule="constant"), TOTAL_STEPS), grads)])
    learning_rates = jax.vmap(make_schedule(config, TOTAL_STEPS))(jnp.arange(TOTAL_STEPS))
    assert float(learning_rates[0]) == 0.0
    expected = jax.tree.map(lambda u: u * learning_rates.reshape(-1, *[1] * (u.ndim - 1)), unit)
    assert_trees_close(scheduled, expected)


def test_mu_dtype_name_sets_the_first_moment_dtype():
    state = make_optimizer(opt_config(mu_dtype="bfloat16"), TOTAL_STEPS).init(PARAMS)
    [adam_state] = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ScaleByAdamState))
                    if isinstance(s, ScaleByAdamState)]
    assert {leaf.dtype for leaf in jax.tree.leaves(adam_state.mu)} == {jnp.dtype(jnp.bfloat16)}
    assert {leaf.dtype for leaf in jax.tree.leaves(adam_state.nu)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("overrides, message", [
    (dict(name="sgd"), r"optimizer.name 'sgd'.*\['adam', 'adamw'\]"),
    (dict(decay_mask="biases"), r"optimizer.decay_mask 'biases'.*\['all', 'matrices'\]"),
    (dict(grad_clip_norm=-1.0), "grad_clip_norm"),
    (dict(learning_rate=-1e-3), "learning_rate"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(mu_dtype="float33"), "mu_dtype"),
])
def test_bad_settings_raise_value_errors_naming_them(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_optimizer(opt_config(**overrides), TOTAL_STEPS)
