"""Mixture-of-experts feed-forward layer: routers, two dispatch paths, auxiliary losses, expert parallelism.

A drop-in replacement of `layers.SwiGLU`. Each token x goes to k of E expert SwiGLUs and their
outputs are mixed by the routing weights (Shazeer et al., 2017; GShard; Switch Transformer):

    logits = x · W_router                  [tokens, E], float32 (x · U(1−ε, 1+ε) in training, if jittered)
    y(x)   = Σ_{j<k} w_j(x) · FFN_{e_j(x)}(x)  (+ Σ shared FFNs(x), always on)
    FFN_e(x) = W_down[e] · (SiLU(W_gate[e] · x) ⊙ W_up[e] · x)

Routers (`moe.router`), both in float32:
    "softmax_topk": p = softmax(logits) over all E; (w, e) = top-k of p; w /= Σ w if `moe.renormalize`.
    "topk_softmax": (l, e) = top-k of logits; w = softmax(l) over the k chosen.

Dispatch (`moe.dispatch`):
    "capacity": GShard/Switch one-hot dispatch in capacity groups. The T tokens, in batch order, are cut
        into N = T/G groups of G consecutive tokens, G = the largest divisor of T that is at most
        `moe.capacity_group_size` (`tokens_per_group`; G = capacity_group_size whenever it divides T).
        In each group every expert takes at most
        C = min(⌈capacity_factor · G · k / E⌉, G) assignments of the group's G tokens (no expert can
        get more than G, since a token's k experts are distinct). Within a group, assignments queue in
        choice-major order: every token's first choice, then every token's second choice, ...;
        the p-th assignment to an expert gets slot p and is dropped when p ≥ C (it contributes 0; the
        block's residual carries the token). Dispatch D[n, g, e, c] ∈ {0, 1} and combine
        M[n, g, e, c] = w · D [N, G, E, C] give expert inputs X[e, n, c] = Σ_g D[n, g, e, c]·x_{n,g},
        [E, N·C, d], and y_{n,g} = Σ_{e,c} M[n, g, e, c] · FFN_e(X[e, n])[c]. The one-hot tensors hold
        T·E·C elements with C ∝ G, so cost and memory are linear in T (one group of all T: quadratic).
    "dropless": the T·k (token, choice) assignments sorted by expert, each expert's rows one group
        of a grouped matmul (group sizes = assignments per expert), the results unsorted and summed
        over the k choices with their weights. Nothing is dropped. The grouped matmul
        (`moe.grouped_matmul`, `grouped_matmul_of`) is the Pallas kernel of
        pallas_kernels/grouped_matmul.py on TPU and GPU ("auto"), which runs 2·rows·d·h FLOPs per
        matmul and skips the tiles past the last group, and `jax.lax.ragged_dot` on CPU: XLA:CPU and
        XLA:GPU do not group `ragged_dot` (on an H200, jax 0.11.2, it took 4.6× (8 experts) to 54×
        (64 experts) the time of a dense matmul of its FLOPs, experiments/results/grouped_matmul_bench.md)
        and XLA:TPU's compiled step counted ~20× the model FLOPs (experiments/results/pod_fit.md).
Both paths give the same output when nothing is dropped.

Statistics, sown float32 into the `MOE_COLLECTION` collection (unweighted; the trainer weighs them),
with f_i = (top-k selections of expert i) / (T·k) and P_i = mean over tokens of softmax(logits)_i:
    load_balancing_loss = E · Σ_i f_i · P_i  (Switch; 1 for uniform routing, up to E when collapsed)
    router_z_loss       = mean_t (logsumexp_i logits[t, i])²  (ST-MoE)
    expert_load = f [E],  load_cv = std(f) / mean(f),  router_entropy = mean_t H(softmax(logits[t])),
    dropped_fraction = dropped assignments / (T·k)  (0 for "dropless").

Expert parallelism (`mesh` with an `expert` axis of size ep; E must be divisible by ep). Any mesh takes
this path, ep = 1 included, so that each device dispatches only its own tokens, whenever the tokens
split evenly over the devices (`runs_expert_parallel`; the one-row batch that initialises the model
takes the plain path). The router
and the statistics run outside any shard_map on the whole token batch, so GSPMD shards them like any
other op and the statistics are the global ones by construction. The expert computation is one
`jax.shard_map` over the mesh:
    tokens [b·s, d], weights and expert ids [b·s, k]: split over the mesh axes of the logical
        `batch` then `seq` (data × fsdp × expert, then context; `token_axes_of`), each device its
        own group of tokens in the layout of the batch, so the flattening moves nothing;
        replicated over "tensor";
    W_gate, W_up [E, d, h]: E over "expert", h over "tensor"; W_down [E, h, d]: E over "expert",
        h over "tensor"; the embed dim d is gathered (it is sharded over "fsdp" outside).
Inside, every device dispatches its local tokens to all E experts, `jax.lax.all_to_all` over
"expert" sends each copy to the device holding its expert, the E/ep local experts run, a second
all_to_all returns the results, and they are combined. With a "tensor" axis each device computes
its slice of h and the combined output is summed over "tensor" (`psum`, Megatron-style). The
dropped count is summed over the token axes.
    "capacity": the local tokens form N = T_local/G groups (G from the local token count); the
        dispatched [E, N·C, d] is all_to_all'd on E, so each device holds [E/ep, ep·N·C, d], the rows of
        its experts from every device's groups; the reverse all_to_all restores [E, N·C, d]. A device's
        tokens are a contiguous run of the batch, so when `moe.capacity_group_size` divides the local
        token count the groups are the unsharded layer's, and so are the drops.
    "dropless": where `jax.lax.ragged_all_to_all` compiles (TPU, GPU; `ragged_all_to_all_supported`)
        the local assignments, sorted by expert, go to their devices as one contiguous chunk each, of
        exactly the rows sent (`dropless_ragged_expert_parallel`); the receiver's buffer holds the
        worst case ep·T_local·k rows, of which the grouped matmul touches only those received. XLA:CPU
        does not implement it, so there an all_to_all of static worst-case buffers [ep, T_local·k, d]
        (all local assignments could go to one device) carries the rows, and [ep, T_local·k] the local
        expert id of each row (E/ep marks an empty slot). The receiver groups the ep·T_local·k rows by
        expert (empty slots last, outside every group) for the grouped matmul. The padded buffers
        cost ep× the memory and all_to_all bytes of the assignments; nothing drops either way.
The shared experts are a plain `layers.SwiGLU` outside the shard_map. Without a mesh, or for tokens that
do not split evenly over the devices, the layer is plain jnp and GSPMD partitions it (the capacity groups
then cut the whole batch).
"""

import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from pallas_kernels.compile_target import compile_target
from pallas_kernels.grouped_matmul import grouped_matmul
from research.models.layers import SwiGLU, param_with_axes
from research.parallel.mesh import mesh_axis_names, mesh_axis_size

MOE_COLLECTION = "moe"
ROUTERS = ("softmax_topk", "topk_softmax")
DISPATCHES = ("dropless", "capacity")
GROUPED_MATMULS = ("auto", "ragged_dot", "pallas")
EXPERT_AXIS = "expert"
TENSOR_AXIS = "tensor"


class ExpertWeights(NamedTuple):
    """The routed experts' SwiGLU weights: gate, up [E, d, h]; down [E, h, d]."""

    gate: Any
    up: Any
    down: Any


def check_moe_config(moe, expert_axis_size: int = 1) -> None:
    """Raises ValueError naming the field of `config.model.moe` (or `mesh.expert`) that is invalid."""
    if moe.num_experts < 1:
        raise ValueError(f"moe.num_experts={moe.num_experts} must be at least 1")
    if moe.top_k < 1:
        raise ValueError(f"moe.top_k={moe.top_k} must be at least 1")
    if moe.top_k > moe.num_experts:
        raise ValueError(f"moe.top_k={moe.top_k} > moe.num_experts={moe.num_experts}")
    if moe.expert_hidden_dim < 1:
        raise ValueError(f"moe.expert_hidden_dim={moe.expert_hidden_dim} must be at least 1")
    if moe.num_shared_experts < 0:
        raise ValueError(f"moe.num_shared_experts={moe.num_shared_experts} must be 0 or more")
    if not moe.capacity_factor > 0:
        raise ValueError(f"moe.capacity_factor={moe.capacity_factor} must be > 0")
    group_size = moe.capacity_group_size
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"moe.capacity_group_size={group_size!r} must be a positive int (tokens per capacity group)")
    if not 0 <= moe.router_jitter < 1:
        raise ValueError(f"moe.router_jitter={moe.router_jitter} must be in [0, 1)")
    if moe.router not in ROUTERS:
        raise ValueError(f"moe.router={moe.router!r} is not one of {ROUTERS}")
    if moe.dispatch not in DISPATCHES:
        raise ValueError(f"moe.dispatch={moe.dispatch!r} is not one of {DISPATCHES}")
    if grouped_matmul_choice(moe) not in GROUPED_MATMULS:
        raise ValueError(f"moe.grouped_matmul={grouped_matmul_choice(moe)!r} is not one of {GROUPED_MATMULS}")
    if moe.num_experts % expert_axis_size:
        raise ValueError(f"moe.num_experts={moe.num_experts} is not divisible by mesh.expert={expert_axis_size}")


def route(logits, top_k: int, router: str, renormalize: bool):
    """(weights [T, k] float32, expert ids [T, k] int32) from router logits [T, E] (see module docstring)."""
    logits = logits.astype(jnp.float32)
    if router == "softmax_topk":
        weights, experts = lax.top_k(jax.nn.softmax(logits, axis=-1), top_k)
        if renormalize:
            weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
        return weights, experts.astype(jnp.int32)
    if router == "topk_softmax":
        top_logits, experts = lax.top_k(logits, top_k)
        return jax.nn.softmax(top_logits, axis=-1), experts.astype(jnp.int32)
    raise ValueError(f"moe.router={router!r} is not one of {ROUTERS}")


def routing_statistics(logits, experts, num_dropped) -> dict:
    """The sown statistics (module docstring) of logits [T, E], chosen experts [T, k] and the number
    of dropped assignments; all float32, differentiable in the logits where the formula is."""
    num_experts = logits.shape[-1]
    num_assignments = experts.size
    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    probs = jnp.exp(log_probs)
    load = jnp.bincount(experts.reshape(-1), length=num_experts).astype(jnp.float32) / num_assignments
    mean_probs = jnp.mean(probs, axis=0)
    return {
        "load_balancing_loss": num_experts * jnp.sum(load * mean_probs),
        "router_z_loss": jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1))),
        "expert_load": load,
        "load_cv": jnp.std(load) / jnp.mean(load),
        "router_entropy": jnp.mean(-jnp.sum(probs * log_probs, axis=-1)),
        "dropped_fraction": jnp.asarray(num_dropped, jnp.float32) / num_assignments,
    }


def expert_capacity(group_size: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """C = min(⌈capacity_factor · G · k / E⌉, G): slots per expert for a group of G tokens."""
    return min(math.ceil(capacity_factor * group_size * top_k / num_experts), group_size)


def tokens_per_group(num_tokens: int, capacity_group_size: int) -> int:
    """G = the largest divisor of T that is ≤ capacity_group_size, so that T tokens form T/G equal groups.

    G = capacity_group_size whenever it divides T (the training batches of configs/seed_thinking.py); a token
    count it does not divide (a prefill of odd length, say) gets smaller equal groups rather than an error, as
    in Mesh TensorFlow's MoE (`_split_into_groups`). A prime T > capacity_group_size gets groups of one token
    (C = 1, so nothing drops).
    """
    return next(size for size in range(min(capacity_group_size, num_tokens), 0, -1) if num_tokens % size == 0)


def position_in_group(ids, num_groups: int):
    """p[a] = #{b < a : ids[b] = ids[a]}, the rank of entry a among the earlier entries of its group."""
    one_hot = jax.nn.one_hot(ids, num_groups, dtype=jnp.int32)
    return jnp.sum((jnp.cumsum(one_hot, axis=0) - 1) * one_hot, axis=-1)


def capacity_dispatch(weights, experts, num_experts: int, capacity: int):
    """(dispatch D [T, E, C], combine M = w·D [T, E, C], both float32; number of dropped assignments) of one
    capacity group of T tokens.

    Assignment (t, j) takes slot p = its rank among the assignments to expert e_j(t) in choice-major
    order (all j = 0 first, then j = 1, ...); D[t, e_j(t), p] = 1 when p < C, else it is dropped.
    """
    num_tokens, top_k = experts.shape
    choice_major = experts.T.reshape(-1)
    slot = position_in_group(choice_major, num_experts).reshape(top_k, num_tokens).T
    slot_one_hot = jax.nn.one_hot(slot, capacity, dtype=jnp.float32)  # all zeros where slot ≥ C
    expert_one_hot = jax.nn.one_hot(experts, num_experts, dtype=jnp.float32)
    dispatch = jnp.einsum("tke,tkc->tec", expert_one_hot, slot_one_hot)
    combine = jnp.einsum("tke,tkc->tec", expert_one_hot * weights[..., None], slot_one_hot)
    num_dropped = experts.size - jnp.sum(slot < capacity)
    return dispatch, combine, num_dropped


def batched_swiglu(x, weights: ExpertWeights, dtype):
    """FFN_e(x[e]) for x [E, S, d]: every expert on its own S slots."""
    gate = jnp.einsum("ecd,edh->ech", x, weights.gate.astype(dtype))
    up = jnp.einsum("ecd,edh->ech", x, weights.up.astype(dtype))
    return jnp.einsum("ech,ehd->ecd", nn.silu(gate) * up, weights.down.astype(dtype))


def grouped_matmul_choice(moe) -> str:
    """`moe.grouped_matmul`, "auto" when the config predates the field."""
    return moe.get("grouped_matmul", "auto")


def grouped_matmul_of(moe, per_device: bool, expected_rows: int):
    """The grouped matmul (lhs [N, k], rhs [E, k, n], group_sizes [E]) ↦ [N, n] of the dropless path.

    "pallas": pallas_kernels/grouped_matmul.py (Mosaic on TPU, Triton on GPU, the interpreter on CPU);
    "ragged_dot": `jax.lax.ragged_dot`; "auto": the kernel when it compiles for an accelerator (a TPU
    or GPU backend, or research/tools/aot.py lowering for TPU), ragged_dot on CPU. The kernel runs only
    `per_device` (inside the expert-parallel shard_map, or without a mesh): GSPMD cannot partition a
    Pallas kernel, so the plain path on a mesh always takes ragged_dot. The kernel declares the cost
    of `expected_rows` rows: a device's T·k assignments, which is also the mean number of rows an
    expert-parallel receive buffer of ep·T·k rows holds (every device sends T·k).
    """
    choice = grouped_matmul_choice(moe)
    if choice == "auto":
        choice = "pallas" if compile_target(None) in ("tpu", "gpu") else "ragged_dot"
    if choice == "pallas" and per_device:
        return functools.partial(grouped_matmul, expected_rows=expected_rows)
    return lax.ragged_dot


def grouped_swiglu(rows, group_sizes, weights: ExpertWeights, dtype, matmul=lax.ragged_dot):
    """FFN_e on consecutive row groups: rows [N, d], the first group_sizes[0] rows to expert 0, the next
    group_sizes[1] to expert 1, ...; rows past Σ group_sizes give 0. `matmul` is the grouped matmul."""
    gate = matmul(rows, weights.gate.astype(dtype), group_sizes)
    up = matmul(rows, weights.up.astype(dtype), group_sizes)
    return matmul(nn.silu(gate) * up, weights.down.astype(dtype), group_sizes)


def experts_by_id(rows, expert_ids, weights: ExpertWeights, dtype, matmul=lax.ragged_dot):
    """FFN_{ids[n]}(rows[n]) for rows [N, d]: sort by id, one grouped matmul, unsort.
    Ids ≥ the number of experts mark empty rows; they sort last and give 0."""
    num_experts = weights.gate.shape[0]
    order = jnp.argsort(expert_ids, stable=True)
    group_sizes = jnp.bincount(expert_ids, length=num_experts).astype(jnp.int32)
    sorted_out = grouped_swiglu(rows[order], group_sizes, weights, dtype, matmul)
    return jnp.zeros_like(sorted_out).at[order].set(sorted_out, unique_indices=True)


def capacity_experts(tokens, weights, experts, expert_weights: ExpertWeights, num_experts: int,
                     capacity_factor: float, capacity_group_size: int, dtype, expert_axis=None):
    """(y [T, d], dropped count) by capacity dispatch of the T local tokens in N = T/G groups of G consecutive
    tokens, C slots per expert and group (module docstring); with `expert_axis` (inside shard_map) the
    [E, N·C, d] expert inputs are all_to_all'd to the devices holding the experts."""
    num_tokens, top_k = experts.shape
    group_size = tokens_per_group(num_tokens, capacity_group_size)
    num_groups = num_tokens // group_size
    capacity = expert_capacity(group_size, top_k, num_experts, capacity_factor)
    dispatch_groups = jax.vmap(functools.partial(capacity_dispatch, num_experts=num_experts, capacity=capacity))
    dispatch, combine, num_dropped = dispatch_groups(weights.reshape(num_groups, group_size, top_k),
                                                     experts.reshape(num_groups, group_size, top_k))
    grouped_tokens = tokens.reshape(num_groups, group_size, -1)
    expert_inputs = jnp.einsum("ngec,ngd->encd", dispatch.astype(dtype), grouped_tokens)
    expert_inputs = expert_inputs.reshape(num_experts, num_groups * capacity, -1)
    if expert_axis is not None:  # [E, N·C, d] -> [E/ep, ep·N·C, d]
        expert_inputs = lax.all_to_all(expert_inputs, expert_axis, 0, 1, tiled=True)
    expert_outputs = batched_swiglu(expert_inputs, expert_weights, dtype)
    if expert_axis is not None:  # [E/ep, ep·N·C, d] -> [E, N·C, d]
        expert_outputs = lax.all_to_all(expert_outputs, expert_axis, 1, 0, tiled=True)
    expert_outputs = expert_outputs.reshape(num_experts, num_groups, capacity, -1)
    out = jnp.einsum("ngec,encd->ngd", combine.astype(dtype), expert_outputs)
    return out.reshape(num_tokens, -1), jnp.sum(num_dropped)


def dropless_experts(tokens, weights, experts, expert_weights: ExpertWeights, dtype, matmul=lax.ragged_dot):
    """(y [T, d], 0): y_t = Σ_j w_j(t) · FFN_{e_j(t)}(x_t) over all T·k assignments, none dropped."""
    num_tokens, top_k = experts.shape
    outputs = experts_by_id(jnp.repeat(tokens, top_k, axis=0), experts.reshape(-1), expert_weights, dtype, matmul)
    return combine_choices(outputs.reshape(num_tokens, top_k, -1), weights), 0


def ragged_all_to_all_supported() -> bool:
    """Whether `jax.lax.ragged_all_to_all` compiles here: on TPU and GPU (also when lowering ahead of
    time for TPU), not on XLA:CPU."""
    return compile_target(None) in ("tpu", "gpu")


def dropless_expert_parallel(tokens, weights, experts, expert_weights: ExpertWeights, dtype, expert_axis,
                             matmul=lax.ragged_dot):
    """Dropless dispatch inside shard_map: assignment a goes to device e_a // (E/ep) in slot
    p_a = its rank among the local assignments to that device, through worst-case buffers
    [ep, T·k, d] exchanged with all_to_all; the receiver runs `experts_by_id` on the ep·T·k rows."""
    num_tokens, top_k = experts.shape
    num_assignments, dim = num_tokens * top_k, tokens.shape[-1]
    num_devices = lax.axis_size(expert_axis)
    local_experts = expert_weights.gate.shape[0]
    flat_experts = experts.reshape(-1)
    destination = flat_experts // local_experts
    slot = position_in_group(destination, num_devices)
    send_rows = jnp.zeros((num_devices, num_assignments, dim), tokens.dtype).at[destination, slot].set(
        jnp.repeat(tokens, top_k, axis=0), unique_indices=True)
    send_ids = jnp.full((num_devices, num_assignments), local_experts, jnp.int32).at[destination, slot].set(
        flat_experts % local_experts, unique_indices=True)
    received_rows = lax.all_to_all(send_rows, expert_axis, 0, 0)
    received_ids = lax.all_to_all(send_ids, expert_axis, 0, 0)
    received_outputs = experts_by_id(received_rows.reshape(-1, dim), received_ids.reshape(-1), expert_weights, dtype,
                                     matmul)
    returned = lax.all_to_all(received_outputs.reshape(num_devices, num_assignments, dim), expert_axis, 0, 0)
    outputs = returned[destination, slot].reshape(num_tokens, top_k, dim)
    return combine_choices(outputs, weights), 0


def exclusive_cumsum(x):
    """[0, x_0, x_0 + x_1, ...]: where each of the consecutive chunks of sizes x starts."""
    return jnp.cumsum(x) - x


def dropless_ragged_expert_parallel(tokens, weights, experts, expert_weights: ExpertWeights, dtype, expert_axis,
                                    matmul=lax.ragged_dot):
    """Dropless dispatch inside shard_map with `jax.lax.ragged_all_to_all` (no padded send buffers).

    The T·k local assignments, sorted by expert (so by destination device d = e // (E/ep)), are sent
    as ep contiguous chunks of send_sizes[d] rows from input_offsets[d]. Every device lays out what it
    receives by source, source s's chunk at recv_offsets[s] = Σ_{s' < s} recv_sizes[s'], so a sender
    learns where its chunk lands (output_offsets[d] = device d's recv_offsets[s]) from one all_to_all of
    the offsets. The local expert ids travel the same way; the receiver runs `experts_by_id` on its
    rows and returns the outputs by the reverse exchange, straight into the sender's sorted order.
    Only the received rows the experts run on are sent and computed (the kernel skips the empty
    tail); the receive buffer keeps the worst case ep·T·k rows, so that nothing is ever dropped.
    """
    num_tokens, top_k = experts.shape
    num_assignments, dim = num_tokens * top_k, tokens.shape[-1]
    num_devices = lax.axis_size(expert_axis)
    local_experts = expert_weights.gate.shape[0]
    flat_experts = experts.reshape(-1)
    order = jnp.argsort(flat_experts, stable=True)
    per_expert = jnp.bincount(flat_experts, length=num_devices * local_experts).astype(jnp.int32)
    send_sizes = per_expert.reshape(num_devices, local_experts).sum(axis=1)
    input_offsets = exclusive_cumsum(send_sizes)
    recv_sizes = lax.all_to_all(send_sizes, expert_axis, 0, 0)
    recv_offsets = exclusive_cumsum(recv_sizes)
    output_offsets = lax.all_to_all(recv_offsets, expert_axis, 0, 0)
    capacity = num_devices * num_assignments

    def send(operand, fill):
        buffer = jnp.full((capacity, *operand.shape[1:]), fill, operand.dtype)
        return lax.ragged_all_to_all(operand, buffer, input_offsets, send_sizes, output_offsets, recv_sizes,
                                     axis_name=expert_axis)

    received_rows = send(tokens[order // top_k], 0)
    received_ids = send(flat_experts[order] % local_experts, local_experts)
    received_outputs = experts_by_id(received_rows, received_ids, expert_weights, dtype, matmul)
    returned = lax.ragged_all_to_all(received_outputs, jnp.zeros((num_assignments, dim), received_outputs.dtype),
                                     recv_offsets, recv_sizes, lax.all_to_all(input_offsets, expert_axis, 0, 0),
                                     send_sizes, axis_name=expert_axis)
    outputs = jnp.zeros_like(returned).at[order].set(returned, unique_indices=True)
    return combine_choices(outputs.reshape(num_tokens, top_k, dim), weights), 0


def combine_choices(outputs, weights):
    """y_t = Σ_j w_j(t) · outputs[t, j] for outputs [T, k, d] and weights [T, k]."""
    return jnp.einsum("tkd,tk->td", outputs, weights.astype(outputs.dtype))


def local_routed_experts(tokens, weights, experts, expert_weights: ExpertWeights, moe, dtype, expert_axis=None,
                         per_device=True):
    """(y [T, d], dropped count) of the routed experts on T tokens by `moe.dispatch`; the dropless
    path's grouped matmul by `grouped_matmul_of`."""
    if moe.dispatch == "capacity":
        return capacity_experts(tokens, weights, experts, expert_weights, moe.num_experts, moe.capacity_factor,
                                moe.capacity_group_size, dtype, expert_axis)
    matmul = grouped_matmul_of(moe, per_device, expected_rows=experts.size)
    if expert_axis is None:
        return dropless_experts(tokens, weights, experts, expert_weights, dtype, matmul)
    exchange = dropless_ragged_expert_parallel if ragged_all_to_all_supported() else dropless_expert_parallel
    return exchange(tokens, weights, experts, expert_weights, dtype, expert_axis, matmul)


def token_axes_of(mesh) -> tuple[str, ...]:
    """The mesh axes that split the b·s tokens inside the expert-parallel shard_map: the batch's,
    then the sequence's (research/parallel/mesh.py's rules), so flattening [b, s] moves nothing."""
    return mesh_axis_names("batch", mesh) + mesh_axis_names("seq", mesh)


def runs_expert_parallel(mesh, num_tokens: int) -> bool:
    """Whether the experts run as the expert-parallel shard_map: on a mesh with an `expert` axis
    (size 1 too: each device then dispatches only its own tokens) when the tokens split evenly over
    the token axes. Otherwise (no mesh, or the one-row batch that initialises the model) the plain
    jnp path runs and GSPMD partitions it."""
    if mesh is None or EXPERT_AXIS not in mesh.axis_names:
        return False
    return num_tokens % math.prod(mesh.shape[axis] for axis in token_axes_of(mesh)) == 0


def expert_parallel_experts(tokens, weights, experts, expert_weights: ExpertWeights, moe, dtype, mesh):
    """`local_routed_experts` as one shard_map over `mesh` (module docstring: Expert parallelism);
    the tokens must split evenly over `token_axes_of(mesh)`."""
    token_axes = token_axes_of(mesh)
    tensor_axis = TENSOR_AXIS if TENSOR_AXIS in mesh.axis_names else None
    tensor_size = mesh.shape[tensor_axis] if tensor_axis else 1
    if moe.expert_hidden_dim % tensor_size:
        raise ValueError(f"moe.expert_hidden_dim={moe.expert_hidden_dim} is not divisible by mesh.tensor={tensor_size}")

    def local(tokens, weights, experts, expert_weights):
        out, num_dropped = local_routed_experts(tokens, weights, experts, expert_weights, moe, dtype, EXPERT_AXIS)
        if tensor_axis:
            out = lax.psum(out, tensor_axis)
        return out, lax.psum(num_dropped, token_axes)

    token_spec = P(token_axes)
    weight_specs = ExpertWeights(gate=P(EXPERT_AXIS, None, tensor_axis), up=P(EXPERT_AXIS, None, tensor_axis),
                                 down=P(EXPERT_AXIS, tensor_axis, None))
    # check_vma=False: a Pallas kernel's outputs carry no varying-axes type (as in layers.attention).
    mapped = jax.shard_map(local, mesh=mesh, in_specs=(token_spec, token_spec, token_spec, weight_specs),
                           out_specs=(token_spec, P()), check_vma=False)
    return mapped(tokens, weights, experts, expert_weights)


class MoeFeedForward(nn.Module):
    """Drop-in replacement of layers.SwiGLU: x [batch, seq, dim] -> [batch, seq, dim].

    `moe` is `config.model.moe`; `mesh` turns on expert parallelism when its `expert` axis is > 1.
    Router jitter applies only when the caller passes `rngs={"jitter": key}`.
    """

    moe: Any
    dtype: Any = jnp.float32
    mesh: Any = None

    @nn.compact
    def __call__(self, x):
        moe = self.moe
        check_moe_config(moe, mesh_axis_size(self.mesh, EXPERT_AXIS))
        batch, seq, dim = x.shape
        num_experts, hidden = moe.num_experts, moe.expert_hidden_dim
        router = param_with_axes(self, "router", nn.initializers.normal(stddev=dim**-0.5), (dim, num_experts),
                                 ("embed", None))
        init = nn.initializers.normal(stddev=dim**-0.5)
        expert_weights = ExpertWeights(
            gate=param_with_axes(self, "gate", init, (num_experts, dim, hidden), ("expert", "embed", "mlp")),
            up=param_with_axes(self, "up", init, (num_experts, dim, hidden), ("expert", "embed", "mlp")),
            down=param_with_axes(self, "down", nn.initializers.normal(stddev=hidden**-0.5),
                                 (num_experts, hidden, dim), ("expert", "mlp", "embed")))

        router_input = x.reshape(batch * seq, dim).astype(jnp.float32)
        if moe.router_jitter > 0 and self.has_rng("jitter"):
            router_input = router_input * jax.random.uniform(
                self.make_rng("jitter"), router_input.shape, jnp.float32, 1 - moe.router_jitter, 1 + moe.router_jitter)
        logits = jnp.dot(router_input, router, precision=lax.Precision.HIGHEST)
        weights, experts = route(logits, moe.top_k, moe.router, moe.renormalize)

        tokens = x.reshape(batch * seq, dim).astype(self.dtype)
        if runs_expert_parallel(self.mesh, batch * seq):
            out, num_dropped = expert_parallel_experts(tokens, weights, experts, expert_weights, moe, self.dtype,
                                                       self.mesh)
        else:
            out, num_dropped = local_routed_experts(tokens, weights, experts, expert_weights, moe, self.dtype,
                                                    per_device=self.mesh is None)
        for name, value in routing_statistics(logits, experts, num_dropped).items():
            self.sow(MOE_COLLECTION, name, value)

        out = out.reshape(batch, seq, dim)
        if moe.num_shared_experts > 0:
            out = out + SwiGLU(moe.num_shared_experts * hidden, self.dtype, self.mesh, name="shared")(x)
        return out
