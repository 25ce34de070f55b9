"""Expert parallelism of research/models/moe.py on 8 fake CPU devices: the sharded layer (shard_map with
all_to_all over `expert`) gives the unsharded layer's outputs, gradients and statistics.

Tolerance: max |sharded − unsharded| ≤ 1e-5 · (1 + max |unsharded|) per tensor (float32; only the
summation order differs). The capacity factor is large enough that no assignment drops in either run, except
where the capacity groups (2 tokens, more than one on every device) are shown to drop alike sharded and not.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research.models.moe import MOE_COLLECTION, MoeFeedForward, runs_expert_parallel
from research.parallel.mesh import batch_sharding, logical_to_sharding, make_mesh

FAST_COMPILE = {"xla_backend_optimization_level": 0}
TOLERANCE = 1e-5


def moe_config(dispatch, num_experts=8, capacity_factor=None):
    """Capacity groups of 2 tokens: 2 or 4 groups on each device of the meshes below (4 or 8 local tokens)."""
    return ml_collections.ConfigDict({
        "num_experts": num_experts, "top_k": 2, "num_shared_experts": 1, "expert_hidden_dim": 32, "every_k_layers": 1,
        "capacity_factor": capacity_factor or float(num_experts), "capacity_group_size": 2, "router": "softmax_topk",
        "renormalize": True, "router_jitter": 0.0, "dispatch": dispatch, "load_balancing_weight": 0.01,
        "z_loss_weight": 1e-3})


def mesh_of(data=1, fsdp=1, tensor=1, expert=1, context=1):
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor, "expert": expert, "context": context}
    return make_mesh(ml_collections.ConfigDict(sizes), jax.devices()[:data * fsdp * tensor * expert * context])


def loss_grads_and_statistics(layer, params, x, d_out):
    """(output, statistics, gradients w.r.t. (params, x)) of Σ out·d_out + lb loss + z loss."""

    def loss(params, x):
        out, variables = layer.apply({"params": params}, x, mutable=[MOE_COLLECTION])
        stats = {name: values[0] for name, values in variables[MOE_COLLECTION].items()}
        return jnp.sum(out * d_out) + stats["load_balancing_loss"] + stats["router_z_loss"], (out, stats)

    (_, (out, stats)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True),
                                       compiler_options=FAST_COMPILE)(params, x)
    return out, stats, grads


def assert_sharded_equals_unsharded(config, mesh) -> dict:
    """Outputs, statistics and gradients of the layer on `mesh` against the unsharded layer; the latter's statistics."""
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (8, 4, 16))
    d_out = jax.random.normal(keys[1], x.shape)
    boxed = MoeFeedForward(config).init(keys[2], x)["params"]
    params = nn.meta.unbox(boxed)
    sharded_params = jax.device_put(params, logical_to_sharding(nn.get_partition_spec(boxed), mesh))
    sharded_x = jax.device_put(x, batch_sharding(mesh))

    want = loss_grads_and_statistics(MoeFeedForward(config), params, x, d_out)
    got = loss_grads_and_statistics(MoeFeedForward(config, mesh=mesh), sharded_params, sharded_x, d_out)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, path
        error, bound = np.max(np.abs(g - w)), TOLERANCE * (1 + np.max(np.abs(w)))
        assert error <= bound, f"{jax.tree_util.keystr(path)}: max error {error:.3g} > {bound:.3g}"
    return want[1]


@pytest.mark.parametrize("dispatch, data, fsdp, tensor, expert, context", [
    ("dropless", 2, 1, 1, 4, 1), ("capacity", 2, 1, 1, 4, 1),
    ("dropless", 1, 1, 1, 8, 1), ("capacity", 1, 1, 1, 8, 1),
    ("dropless", 1, 2, 2, 2, 1), ("capacity", 1, 2, 2, 2, 1),
    ("dropless", 2, 1, 1, 2, 2),
])
def test_expert_parallel_equals_unsharded(dispatch, data, fsdp, tensor, expert, context):
    stats = assert_sharded_equals_unsharded(moe_config(dispatch), mesh_of(data, fsdp, tensor, expert, context))
    assert float(stats["dropped_fraction"]) == 0.0


@pytest.mark.parametrize("data, fsdp, tensor, expert, context", [(1, 2, 2, 2, 1), (2, 1, 1, 2, 2)])
def test_expert_parallel_capacity_drops_what_the_unsharded_layer_drops(data, fsdp, tensor, expert, context):
    """C = min(⌈0.5·2·2/8⌉, 2) = 1 slot per expert and group of 2 tokens: both tokens of a group choosing one
    expert drop one assignment. Every device's tokens are whole groups of the unsharded layer's 16."""
    config = moe_config("capacity", capacity_factor=0.5)
    stats = assert_sharded_equals_unsharded(config, mesh_of(data, fsdp, tensor, expert, context))
    assert float(stats["dropped_fraction"]) > 0.0


@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
def test_expert_parallel_exchanges_tokens_with_all_to_all(dispatch):
    config = moe_config(dispatch)
    x = jnp.zeros((8, 4, 16))
    layer = MoeFeedForward(config, mesh=mesh_of(data=2, expert=4))
    params = nn.meta.unbox(jax.eval_shape(MoeFeedForward(config).init, jax.random.key(0), x)["params"])
    text = jax.jit(layer.apply).lower({"params": params}, x).as_text()
    exchanges = {"capacity": 2, "dropless": 3}[dispatch]  # there and back; dropless also sends expert ids
    assert text.count("stablehlo.all_to_all") == exchanges


def test_expert_parallel_rejects_experts_not_divisible_by_the_expert_axis():
    config = moe_config("dropless", num_experts=6)
    with pytest.raises(ValueError, match="moe.num_experts=6 is not divisible by mesh.expert=4"):
        MoeFeedForward(config, mesh=mesh_of(data=2, expert=4)).init(jax.random.key(0), jnp.zeros((8, 4, 16)))


def test_tokens_that_do_not_split_over_the_devices_take_the_plain_path():
    mesh = mesh_of(data=2, expert=4)
    assert runs_expert_parallel(mesh, 8) and not runs_expert_parallel(mesh, 4) and not runs_expert_parallel(None, 8)
    x = jax.random.normal(jax.random.key(1), (1, 4, 16))
    sharded = MoeFeedForward(moe_config("capacity"), mesh=mesh)
    variables = sharded.init(jax.random.key(0), x)  # the one-row batch that initialises a model
    np.testing.assert_allclose(sharded.apply(variables, x), MoeFeedForward(moe_config("capacity")).apply(variables, x),
                               rtol=1e-6, atol=1e-6)
