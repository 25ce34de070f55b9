"""research/train/checkpoint.py: naming the first mismatching parameter."""

import jax
import jax.numpy as jnp

from research.train.checkpoint import first_mismatch, tree_paths


def test_tree_paths_names_nested_leaves():
    tree = {"params": {"layers": {"q": jnp.zeros((2, 3))}}, "step": jnp.zeros(())}
    assert tree_paths(tree) == {"params/layers/q": ((2, 3), "float32"), "step": ((), "float32")}


def test_first_mismatch_reports_parameters_before_optimizer_state():
    saved = {"opt_state/mu/w": ((4,), "float32"), "params/w": ((4,), "float32"), "params/b": ((2,), "float32")}
    expected = {"opt_state/mu/w": ((5,), "float32"), "params/w": ((5,), "float32"), "params/b": ((2,), "float32")}
    assert first_mismatch(saved, expected) == "params/w has shape (4,) in the checkpoint but (5,) in the config"
    assert "not in the checkpoint" in first_mismatch({}, {"params/x": ((1,), "float32")})
    assert "not in the config" in first_mismatch({"params/x": ((1,), "float32")}, {})
    assert first_mismatch(saved, saved) is None


def test_first_mismatch_names_a_dtype_difference():
    saved = {"params/w": ((4,), "bfloat16")}
    assert first_mismatch(saved, {"params/w": ((4,), "float32")}) == (
        "params/w has dtype bfloat16 in the checkpoint but float32 in the config")


def test_tree_paths_of_abstract_shapes():
    abstract = jax.eval_shape(lambda: {"a": [jnp.zeros((3,)), jnp.zeros((1, 2))]})
    assert tree_paths(abstract) == {"a/0": ((3,), "float32"), "a/1": ((1, 2), "float32")}
