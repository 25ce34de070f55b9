"""research/models/moe.py: routers, capacity and dropless dispatch, statistics, jitter, gradients, config checks."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import lax
from jax.experimental import topologies
from jax.extend.core import ClosedJaxpr, Jaxpr
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pallas_kernels.compile_target import lowering_for
from pallas_kernels.grouped_matmul import grouped_matmul
from research.models import moe as moe_lib
from research.models.layers import SwiGLU
from research.models.moe import MOE_COLLECTION, MoeFeedForward
from research.parallel.mesh import batch_sharding, logical_to_sharding, make_mesh

DIM, HIDDEN = 16, 32
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def moe_config(**overrides):
    fields = {"num_experts": 4, "top_k": 2, "num_shared_experts": 0, "expert_hidden_dim": HIDDEN, "every_k_layers": 1,
              "capacity_factor": 1.25, "capacity_group_size": 1024, "router": "softmax_topk", "renormalize": True,
              "router_jitter": 0.0, "dispatch": "dropless", "load_balancing_weight": 0.01, "z_loss_weight": 1e-3}
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def inputs(batch=2, seq=16, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, seq, DIM))


def init_params(config, x, seed=1):
    return nn.meta.unbox(fast_jit(MoeFeedForward(config).init)(jax.random.key(seed), x)["params"])


def apply_with_statistics(config, params, x):
    """(output, {statistic: value}) of the layer."""
    out, variables = MoeFeedForward(config).apply({"params": params}, x, mutable=[MOE_COLLECTION])
    return out, {name: values[0] for name, values in variables[MOE_COLLECTION].items()}


def run(config, params, x):
    """`apply_with_statistics`, compiled once (faster than many eager ops)."""
    return fast_jit(functools.partial(apply_with_statistics, config))(params, x)


def test_parameters_have_shapes_and_logical_axes():
    config = moe_config(num_experts=8, num_shared_experts=2)
    boxed = jax.eval_shape(MoeFeedForward(config).init, jax.random.key(0), inputs())["params"]
    shapes = jax.tree.map(lambda p: p.shape, nn.meta.unbox(boxed))
    assert shapes["router"] == (DIM, 8)
    assert shapes["gate"] == shapes["up"] == (8, DIM, HIDDEN) and shapes["down"] == (8, HIDDEN, DIM)
    assert shapes["shared"] == {"gate": (DIM, 2 * HIDDEN), "up": (DIM, 2 * HIDDEN), "down": (2 * HIDDEN, DIM)}
    specs = nn.get_partition_spec(boxed)
    assert tuple(specs["router"]) == ("embed", None)
    assert tuple(specs["gate"]) == tuple(specs["up"]) == ("expert", "embed", "mlp")
    assert tuple(specs["down"]) == ("expert", "mlp", "embed")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nn.meta.unbox(boxed)))


def test_softmax_topk_router_by_hand():
    logits = jnp.array([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 3.0, 0.0]])
    probs = np.exp(np.array(logits)) / np.exp(np.array(logits)).sum(-1, keepdims=True)
    weights, experts = moe_lib.route(logits, 2, "softmax_topk", renormalize=False)
    np.testing.assert_array_equal(experts, [[0, 1], [2, 0]])  # ties go to the lower index
    np.testing.assert_allclose(weights, [probs[0, :2], [probs[1, 2], probs[1, 0]]], rtol=1e-6)
    weights, _ = moe_lib.route(logits, 2, "softmax_topk", renormalize=True)
    sigmoid_1 = 1 / (1 + np.exp(-1.0))  # e² / (e² + e¹)
    np.testing.assert_allclose(weights[0], [sigmoid_1, 1 - sigmoid_1], rtol=1e-6)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)


def test_topk_softmax_router_by_hand_equals_renormalised_softmax_topk():
    logits = jax.random.normal(jax.random.key(0), (8, 6)) * 2
    weights, experts = moe_lib.route(logits, 3, "topk_softmax", renormalize=False)
    top = np.sort(np.array(logits), -1)[:, ::-1][:, :3]
    np.testing.assert_allclose(weights, np.exp(top) / np.exp(top).sum(-1, keepdims=True), rtol=1e-5)
    renormalised, same_experts = moe_lib.route(logits, 3, "softmax_topk", renormalize=True)
    np.testing.assert_array_equal(experts, same_experts)
    np.testing.assert_allclose(weights, renormalised, rtol=1e-5)


def test_capacity_dispatch_first_choices_take_priority():
    # choice 0: t0→0 (slot 0), t1→0 (slot 1), t2→1 (slot 0); choice 1: t0→1 (slot 1), t1→1 (slot 2: dropped),
    # t2→0 (slot 2: dropped). Capacity 2.
    experts = jnp.array([[0, 1], [0, 1], [1, 0]])
    weights = jnp.array([[0.6, 0.4], [0.7, 0.3], [0.9, 0.1]])
    dispatch, combine, num_dropped = moe_lib.capacity_dispatch(weights, experts, num_experts=2, capacity=2)
    assert int(num_dropped) == 2
    expected = np.zeros((3, 2, 2))
    expected[0, 0, 0] = expected[1, 0, 1] = expected[2, 1, 0] = expected[0, 1, 1] = 1
    np.testing.assert_array_equal(dispatch, expected)
    np.testing.assert_allclose(combine[0], [[0.6, 0], [0, 0.4]])
    np.testing.assert_allclose(combine[1], [[0, 0.7], [0, 0]])
    np.testing.assert_allclose(combine[2], [[0, 0], [0.9, 0]])


def test_expert_capacity_formula():
    assert moe_lib.expert_capacity(64, 2, 8, 1.25) == 20  # ⌈1.25·64·2/8⌉
    assert moe_lib.expert_capacity(16, 1, 4, 1.0) == 4
    assert moe_lib.expert_capacity(16, 2, 4, 100.0) == 16  # never more than the tokens


@pytest.mark.parametrize("num_tokens, capacity_group_size, group_size", [
    (4096, 256, 256), (32, 1024, 32), (2048, 256, 256), (1500, 1024, 750), (12, 8, 6), (1031, 1024, 1)])
def test_tokens_per_group_is_the_largest_divisor_up_to_the_group_size(num_tokens, capacity_group_size, group_size):
    assert moe_lib.tokens_per_group(num_tokens, capacity_group_size) == group_size


def test_capacity_groups_drop_what_their_own_group_overflows():
    # Expert 0 iff x[..., 0] > 0. E = 2, k = 1, capacity factor 1. Sequence 0 sends all 4 tokens to expert 0,
    # sequence 1 sends tokens 0, 2 to expert 0 and 1, 3 to expert 1.
    #   groups of 4 (= the sequences), C = ⌈4·1/2⌉ = 2: sequence 0 keeps tokens 0, 1 and drops 2, 3; sequence 1
    #       drops nothing;
    #   one group of 8, C = ⌈8·1/2⌉ = 4: expert 0's slots go to sequence 0's four tokens, so sequence 1 drops its
    #       tokens 0 and 2 (expert 0's assignments 5 and 6).
    # Either way 2 of the 8 assignments drop.
    signs = jnp.array([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0]])
    x = jnp.abs(inputs(batch=2, seq=4)).at[..., 0].set(signs)
    kept_by_groups = np.array([[True, True, False, False], [True, True, True, True]])
    kept_by_one_group = np.array([[True, True, True, True], [False, True, False, True]])
    config = moe_config(num_experts=2, top_k=1, capacity_factor=1.0, dispatch="capacity")
    params = init_params(config, x)
    params["router"] = jnp.zeros((DIM, 2)).at[0].set(jnp.array([10.0, -10.0]))
    for group_size, kept in ((4, kept_by_groups), (8, kept_by_one_group)):
        out, stats = run(moe_config(**{**config, "capacity_group_size": group_size}), params, x)
        assert float(stats["dropped_fraction"]) == 0.25
        np.testing.assert_array_equal(np.abs(np.asarray(out)).max(-1) > 0, kept, err_msg=f"group size {group_size}")


def test_capacity_layer_drops_assignments_over_capacity():
    config = moe_config(num_experts=4, top_k=1, capacity_factor=1.0, dispatch="capacity")  # C = 16·1/4 = 4
    x = jnp.abs(inputs(batch=1, seq=16))
    params = init_params(config, x)
    params["router"] = jnp.zeros((DIM, 4)).at[:, 0].set(10.0)  # every token prefers expert 0
    out, stats = run(config, params, x)
    assert float(stats["dropped_fraction"]) == 0.75
    np.testing.assert_array_equal(stats["expert_load"], [1, 0, 0, 0])
    assert np.all(np.abs(out[0, :4]).max(-1) > 0)  # the first four tokens fill expert 0's slots
    np.testing.assert_array_equal(out[0, 4:], 0.0)


@pytest.mark.parametrize("capacity_group_size", [1024, 8])  # one group of the 32 tokens; four groups of 8
@pytest.mark.parametrize("router, top_k", [("softmax_topk", 1), ("softmax_topk", 2), ("topk_softmax", 2)])
def test_dropless_equals_capacity_without_drops(router, top_k, capacity_group_size):
    x = inputs()
    dropless = moe_config(router=router, top_k=top_k, renormalize=False, dispatch="dropless")
    capacity = moe_config(router=router, top_k=top_k, renormalize=False, dispatch="capacity", capacity_factor=4.0,
                          capacity_group_size=capacity_group_size)
    params = init_params(dropless, x)

    def loss_and_grads(config):
        def loss(params, x):
            out, _ = apply_with_statistics(config, params, x)
            return jnp.sum(out * jnp.cos(out)), out
        return fast_jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)

    (_, out_dropless), grads_dropless = loss_and_grads(dropless)
    (_, out_capacity), grads_capacity = loss_and_grads(capacity)
    _, stats = run(capacity, params, x)
    assert float(stats["dropped_fraction"]) == 0.0
    np.testing.assert_allclose(out_dropless, out_capacity, rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(grads_capacity), jax.tree.leaves(grads_dropless)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
@pytest.mark.parametrize("router, renormalize", [("softmax_topk", False), ("softmax_topk", True),
                                                 ("topk_softmax", False)])
def test_single_expert_equals_swiglu(dispatch, router, renormalize):
    config = moe_config(num_experts=1, top_k=1, router=router, renormalize=renormalize, dispatch=dispatch)
    x = inputs()
    params = init_params(config, x)
    out, stats = run(config, params, x)
    dense = SwiGLU(HIDDEN).apply({"params": {name: params[name][0] for name in ("gate", "up", "down")}}, x)
    np.testing.assert_allclose(out, dense, rtol=1e-5, atol=1e-6)
    assert float(stats["dropped_fraction"]) == 0.0
    np.testing.assert_allclose(stats["load_balancing_loss"], 1.0, rtol=1e-6)


def test_load_balancing_loss_is_one_when_uniform_and_larger_when_collapsed():
    num_experts, num_tokens = 4, 8
    uniform_logits = 3.0 * jax.nn.one_hot(jnp.arange(num_tokens) % num_experts, num_experts)
    _, experts = moe_lib.route(uniform_logits, 1, "softmax_topk", True)
    uniform = moe_lib.routing_statistics(uniform_logits, experts, 0)
    np.testing.assert_allclose(uniform["load_balancing_loss"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(uniform["expert_load"], 0.25)
    np.testing.assert_allclose(uniform["load_cv"], 0.0, atol=1e-7)

    collapsed_logits = 3.0 * jax.nn.one_hot(jnp.zeros(num_tokens, int), num_experts)
    _, experts = moe_lib.route(collapsed_logits, 1, "softmax_topk", True)
    collapsed = moe_lib.routing_statistics(collapsed_logits, experts, 0)
    top_probability = np.exp(3.0) / (np.exp(3.0) + 3)
    np.testing.assert_allclose(collapsed["load_balancing_loss"], num_experts * top_probability, rtol=1e-6)
    assert collapsed["load_balancing_loss"] > 1.0
    np.testing.assert_allclose(collapsed["expert_load"], [1, 0, 0, 0])
    np.testing.assert_allclose(collapsed["load_cv"], np.sqrt(3.0), rtol=1e-6)


def test_z_loss_entropy_and_dropped_fraction_formulas():
    logits = jax.random.normal(jax.random.key(0), (32, 8)) * 3
    _, experts = moe_lib.route(logits, 2, "softmax_topk", True)
    stats = moe_lib.routing_statistics(logits, experts, 6)
    logits = np.array(logits, np.float64)
    log_z = np.log(np.exp(logits).sum(-1))
    probs = np.exp(logits - log_z[:, None])
    np.testing.assert_allclose(stats["router_z_loss"], np.mean(log_z**2), rtol=1e-5)
    np.testing.assert_allclose(stats["router_entropy"], np.mean(-(probs * np.log(probs)).sum(-1)), rtol=1e-5)
    np.testing.assert_allclose(stats["dropped_fraction"], 6 / 64)
    np.testing.assert_allclose(stats["expert_load"].sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
def test_layer_sows_float32_statistics_of_its_router(dispatch):
    config = moe_config(num_experts=8, dispatch=dispatch, capacity_factor=0.5)
    x = inputs()
    params = init_params(config, x)
    _, variables = fast_jit(functools.partial(MoeFeedForward(config).apply, mutable=[MOE_COLLECTION]))(
        {"params": params}, x)
    sown = variables[MOE_COLLECTION]
    assert set(sown) == {"load_balancing_loss", "router_z_loss", "expert_load", "load_cv", "router_entropy",
                         "dropped_fraction"}
    assert all(len(values) == 1 and values[0].dtype == jnp.float32 for values in sown.values())
    logits = x.reshape(-1, DIM) @ params["router"]
    _, experts = moe_lib.route(logits, 2, "softmax_topk", True)
    expected = moe_lib.routing_statistics(logits, experts, 0)
    for name in ("load_balancing_loss", "router_z_loss", "expert_load", "load_cv", "router_entropy"):
        np.testing.assert_allclose(sown[name][0], expected[name], rtol=1e-5, err_msg=name)
    assert sown["expert_load"][0].shape == (8,)
    np.testing.assert_allclose(sown["expert_load"][0].sum(), 1.0, rtol=1e-6)
    dropped = float(sown["dropped_fraction"][0])
    if dispatch == "dropless":
        assert dropped == 0.0
    else:  # 8 experts × C = ⌈0.5·32·2/8⌉ = 4 slots hold at most 32 of the 64 assignments
        assert 0.5 <= dropped < 1.0


def test_jitter_changes_the_output_only_when_its_rng_is_given():
    config = moe_config(router_jitter=0.2)
    x = inputs()
    params = init_params(config, x)
    jittered_layer, plain_layer = fast_jit(MoeFeedForward(config).apply), fast_jit(MoeFeedForward(moe_config()).apply)
    plain = plain_layer({"params": params}, x)
    np.testing.assert_array_equal(jittered_layer({"params": params}, x), plain)
    jittered = jittered_layer({"params": params}, x, rngs={"jitter": jax.random.key(3)})
    assert not np.allclose(plain, jittered, atol=1e-4)
    np.testing.assert_array_equal(plain_layer({"params": params}, x, rngs={"jitter": jax.random.key(3)}), plain)


@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
def test_gradients_reach_router_experts_and_shared_expert(dispatch):
    config = moe_config(num_shared_experts=1, dispatch=dispatch)
    x = inputs()
    params = init_params(config, x)

    def loss(params):
        out, stats = apply_with_statistics(config, params, x)
        return jnp.mean(out**2) + 0.01 * stats["load_balancing_loss"] + 1e-3 * stats["router_z_loss"]

    grads = fast_jit(jax.grad(loss))(params)
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(grad)), path
        assert np.abs(grad).max() > 0, path


def test_aux_loss_gradient_reaches_the_router_alone():
    config = moe_config()
    x = inputs()
    params = init_params(config, x)
    grads = fast_jit(jax.grad(lambda p: apply_with_statistics(config, p, x)[1]["load_balancing_loss"]))(params)
    assert np.abs(grads["router"]).max() > 0
    np.testing.assert_array_equal(grads["gate"], 0.0)


@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
def test_jit_and_bfloat16(dispatch):
    config = moe_config(num_shared_experts=1, dispatch=dispatch, capacity_factor=4.0)
    x = inputs()
    params = init_params(config, x)
    want = fast_jit(MoeFeedForward(config).apply)({"params": params}, x)
    got = fast_jit(MoeFeedForward(config, dtype=jnp.bfloat16).apply)({"params": params}, x)
    assert got.dtype == jnp.bfloat16 and got.shape == x.shape
    got = np.asarray(got, np.float32)
    assert np.all(np.isfinite(got))
    assert np.max(np.abs(got - want)) <= 3e-2 * (1 + np.max(np.abs(want)))


@pytest.mark.parametrize("overrides, message", [
    ({"top_k": 3, "num_experts": 2}, "moe.top_k=3 > moe.num_experts=2"),
    ({"top_k": 0}, "moe.top_k=0"),
    ({"capacity_factor": 0.0}, "moe.capacity_factor=0.0"),
    ({"capacity_factor": -1.0}, "moe.capacity_factor=-1.0"),
    ({"capacity_group_size": 0}, "moe.capacity_group_size=0"),
    ({"capacity_group_size": 2.5}, "moe.capacity_group_size=2.5"),
    ({"router": "sinkhorn"}, "moe.router='sinkhorn'"),
    ({"dispatch": "megablocks"}, "moe.dispatch='megablocks'"),
    ({"num_shared_experts": -1}, "moe.num_shared_experts=-1"),
    ({"router_jitter": 1.5}, "moe.router_jitter=1.5"),
    ({"grouped_matmul": "megablox"}, "moe.grouped_matmul='megablox'"),
])
def test_bad_config_raises_naming_the_field(overrides, message):
    config = moe_config(**overrides)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        moe_lib.check_moe_config(config)
    with pytest.raises(ValueError, match="moe."):
        MoeFeedForward(config).init(jax.random.key(0), inputs())


def test_experts_must_divide_over_the_expert_axis():
    with pytest.raises(ValueError, match="moe.num_experts=6 is not divisible by mesh.expert=4"):
        moe_lib.check_moe_config(moe_config(num_experts=6), expert_axis_size=4)
    moe_lib.check_moe_config(moe_config(num_experts=8), expert_axis_size=4)


def largest_intermediate_shape(closed_jaxpr) -> tuple[int, ...]:
    """The shape with the most elements among the values computed in a jaxpr and its sub-jaxprs."""
    shapes = set()

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            shapes.update(tuple(var.aval.shape) for var in eqn.outvars if hasattr(var.aval, "shape"))
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    if isinstance(sub, ClosedJaxpr):
                        visit(sub.jaxpr)
                    elif isinstance(sub, Jaxpr):
                        visit(sub)

    visit(closed_jaxpr.jaxpr)
    return max(shapes, key=math.prod)


def test_capacity_groups_keep_the_dispatch_tensors_linear_in_the_tokens():
    """T = 4096 tokens in groups of G = 256, E = 4, k = 2, capacity factor 1.25: C = ⌈1.25·256·2/4⌉ = 160,
    and the largest values traced are the [T/G, G, E, C] dispatch and combine tensors (T·E·C = 2.6M elements);
    one group of all 4096 tokens (C = 2560) traces [1, T, E, C] tensors 16× as large."""
    x = jax.ShapeDtypeStruct((1, 4096, DIM), jnp.float32)

    def largest(capacity_group_size):
        config = moe_config(dispatch="capacity", capacity_group_size=capacity_group_size)
        params = nn.meta.unbox(jax.eval_shape(MoeFeedForward(config).init, jax.random.key(0), x)["params"])
        return largest_intermediate_shape(jax.make_jaxpr(MoeFeedForward(config).apply)({"params": params}, x))

    assert largest(256) == (16, 256, 4, 160)
    assert largest(4096) == (1, 4096, 4, 2560)


def output_and_gradients(layer, params, x, d_out):
    """(out, d_params, d_x) of Σ out · d_out, compiled once."""
    def loss(params, x):
        return jnp.sum(layer.apply({"params": params}, x) * d_out)
    return (fast_jit(layer.apply)({"params": params}, x), *fast_jit(jax.grad(loss, argnums=(0, 1)))(params, x))


def assert_trees_close(got, want, tolerance):
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True):
        g, w = np.asarray(g), np.asarray(w)
        error, bound = np.max(np.abs(g - w)), tolerance * (1 + np.max(np.abs(w)))
        assert g.shape == w.shape and error <= bound, f"{jax.tree_util.keystr(path)}: {error:.3g} > {bound:.3g}"


def test_the_pallas_grouped_matmul_gives_ragged_dots_outputs_and_gradients():
    """Dropless, 4 experts, top-2, 32 tokens: the kernel (interpret mode) against ragged_dot, float32, within
    1e-5 · (1 + max |ragged_dot's|) per tensor (only the summation order differs)."""
    x, d_out = inputs(), inputs(seed=2)
    params = init_params(moe_config(), x)
    want = output_and_gradients(MoeFeedForward(moe_config(grouped_matmul="ragged_dot")), params, x, d_out)
    got = output_and_gradients(MoeFeedForward(moe_config(grouped_matmul="pallas")), params, x, d_out)
    assert_trees_close(got, want, 1e-5)


def test_auto_takes_the_kernel_where_it_compiles_per_device():
    def kernel_or_ragged_dot(config, per_device):
        matmul = moe_lib.grouped_matmul_of(config, per_device, expected_rows=64)
        return matmul.func if isinstance(matmul, functools.partial) else matmul

    assert kernel_or_ragged_dot(moe_config(), per_device=True) is lax.ragged_dot  # CPU: ragged_dot
    with lowering_for("tpu"):
        assert kernel_or_ragged_dot(moe_config(), per_device=True) is grouped_matmul
        assert kernel_or_ragged_dot(moe_config(), per_device=False) is lax.ragged_dot  # GSPMD: never a kernel
    assert kernel_or_ragged_dot(moe_config(grouped_matmul="pallas"), per_device=True) is grouped_matmul


def emulated_ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, *,
                               axis_name):
    """`jax.lax.ragged_all_to_all` from all_gathers (XLA:CPU has no ragged all-to-all): chunk j of device s,
    send_sizes[j] rows from input_offsets[j], lands on device j at output_offsets[j]; other rows keep `output`."""
    me = lax.axis_index(axis_name)
    operands, starts, sizes, offsets = (lax.all_gather(a, axis_name) for a in (operand, input_offsets, send_sizes,
                                                                                output_offsets))
    rows = jnp.arange(output.shape[0])
    for source in range(operands.shape[0]):
        start, size, offset = starts[source, me], sizes[source, me], offsets[source, me]
        taken = operands[source][jnp.clip(rows - offset + start, 0, operand.shape[0] - 1)]
        mine = ((rows >= offset) & (rows < offset + size)).reshape(-1, *[1] * (output.ndim - 1))
        output = jnp.where(mine, taken, output)
    return output


def test_the_ragged_exchange_gives_the_unsharded_layers_outputs_and_gradients(monkeypatch):
    """Dropless over data 2 × expert 4 (8 CPU devices), 8 experts, the kernel in interpret mode, with the
    exchange of `dropless_ragged_expert_parallel` (ragged_all_to_all emulated): the unsharded layer's output
    and gradients within 1e-5 · (1 + max |unsharded|) (float32)."""
    monkeypatch.setattr(moe_lib, "ragged_all_to_all_supported", lambda: True)
    monkeypatch.setattr(lax, "ragged_all_to_all", emulated_ragged_all_to_all)
    config = moe_config(num_experts=8, grouped_matmul="pallas")
    x, d_out = inputs(batch=8, seq=4), inputs(batch=8, seq=4, seed=2)
    boxed = fast_jit(MoeFeedForward(config).init)(jax.random.key(1), x)["params"]
    params = nn.meta.unbox(boxed)
    mesh = make_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 1, "tensor": 1, "expert": 4}), jax.devices()[:8])
    sharded = (jax.device_put(params, logical_to_sharding(nn.get_partition_spec(boxed), mesh)),
               jax.device_put(x, batch_sharding(mesh)))
    got = output_and_gradients(MoeFeedForward(config, mesh=mesh), *sharded, d_out)
    assert_trees_close(got, output_and_gradients(MoeFeedForward(config), params, x, d_out), 1e-5)


@pytest.mark.usefixtures("without_persistent_cache")
def test_the_expert_parallel_dropless_layer_compiles_for_tpu_with_ragged_all_to_all_and_mosaic_kernels():
    """Lowered for 4 v5p chips (expert 4) as research/tools/aot.py lowers a train step: the rows travel by
    ragged all-to-all, there and back (ids too), and the experts' three matmuls are Mosaic kernels."""
    chips = topologies.get_topology_desc(platform="tpu", topology_name="v5p:2x2x1", chip_config_name="megacore",
                                         chips_per_host_bounds=(2, 2, 1), num_slices=1).devices
    mesh = make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1, "expert": 4}), chips)
    config = moe_config(num_experts=8, expert_hidden_dim=128)
    layer = MoeFeedForward(config, jnp.bfloat16, mesh)
    x = jax.ShapeDtypeStruct((4, 128, 128), jnp.bfloat16, sharding=NamedSharding(mesh, P("expert")))
    params = nn.meta.unbox(jax.eval_shape(MoeFeedForward(config).init, jax.random.key(0),
                                          jax.ShapeDtypeStruct((1, 128, 128), jnp.bfloat16))["params"])
    params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=NamedSharding(mesh, P())), params)
    with lowering_for("tpu"):
        text = jax.jit(layer.apply).lower({"params": params}, x).compile().as_text()
    assert text.count("ragged-all-to-all(") == 3
    assert text.count('custom_call_target="tpu_custom_call"') == 3
