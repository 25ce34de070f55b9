"""LoRA (Hu et al., 2021): low-rank adapters as a parametrisation of any parameter tree.

Every target weight W, seen as a matrix [in, out], gets two adapter matrices, A [in, r] (Gaussian with
standard deviation 1/√in, as the base weights are drawn) and B [r, out] (zeros), and is used as

    W' = W + (α/r)·A·B

so the adapted model starts equal to the base. Training differentiates only the adapters, the base
held constant; the merged tree is an ordinary parameter tree, for the forward pass and for export:

    adapters = init_lora(rng, boxed_params, rank=8, patterns=LLAMA_LORA_PATTERNS)
    merged = merge_lora(jax.lax.stop_gradient(params), adapters, alpha=16.0, rank=8)
    logits = model.apply({"params": merged}, tokens)
    save_hf_llama(model_config, merge_lora(params, adapters, alpha=16.0, rank=8), "out")  # a plain LLaMA

Targets are chosen by regexes searched in each parameter's '/'-joined path, e.g. "layers/attention/q"
(scanned layers) or "layers_3/ffn/down" (unrolled). The LLaMA decoder's matrices (research/models/
layers.py) and how each is read as [in, out]:

    attention/q, k, v   [embed, heads, head_dim]     in = embed,              out = heads × head_dim
    attention/o         [heads, head_dim, embed]     in = heads × head_dim,   out = embed
    ffn/gate, up        [embed, mlp]                 ffn/down [mlp, embed]

The split comes from the weight's logical axis names (`nn.LogicallyPartitioned`, as `model.init`
boxes them): leading `layers` (a scanned stack) and `expert` axes index separate matrices, each with
its own adapters; of the remaining axes, a weight that ends in the model width `embed` (and does not
begin with it) writes into the residual stream, so its last axis is the output and the others the
input; otherwise the first axis is the input and the others the output. A and B keep the unflattened
axes and their names, A: [stack..., in..., r] and B: [stack..., r, out...], the rank axis unnamed
(replicated): the adapters shard over the mesh as the weights they adapt do.

Merging materialises W' for every target at each step; at LoRA's usual ranks that costs a copy of the
targeted weights, not of their optimizer state, which is what LoRA saves.
"""

import math
import re
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

STACKED_AXES = ("layers", "expert")  # leading axes that index separate matrices
MODEL_WIDTH_AXIS = "embed"
LLAMA_LORA_PATTERNS = (r"attention/(q|k|v|o)$", r"ffn/(gate|up|down)$")  # every matrix of every block


def flat_leaves(params) -> dict[str, object]:
    """{'/'-joined path: leaf} of a nested parameter dict (boxes are leaves)."""
    return {"/".join(map(str, path)): leaf for path, leaf in traverse_util.flatten_dict(params).items()}


def lora_targets(params, patterns: Sequence[str]) -> list[str]:
    """The '/'-joined paths of `params` (boxed or not) that one of the regexes `patterns` is found in,
    sorted. Raises ValueError naming a pattern that matches no parameter (a typo would otherwise train
    nothing)."""
    if isinstance(patterns, str) or not patterns:
        raise ValueError(f"patterns must be a non-empty sequence of regexes, got {patterns!r}")
    paths = sorted(flat_leaves(params))
    compiled = {}
    for pattern in patterns:
        try:
            compiled[pattern] = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"LoRA pattern {pattern!r} is not a regex: {error}") from None
    unmatched = [pattern for pattern, regex in compiled.items() if not any(regex.search(path) for path in paths)]
    if unmatched:
        raise ValueError(f"LoRA pattern(s) {unmatched} match no parameter; the parameters are {paths}")
    return [path for path in paths if any(regex.search(path) for regex in compiled.values())]


def matrix_split(path: str, axis_names: tuple) -> tuple[int, int]:
    """(number of leading stacked axes, number of input axes) of the weight at `path` with logical axis
    names `axis_names`, by the module docstring's rule; ValueError if what is left is not a matrix."""
    stacked = 0
    while stacked < len(axis_names) and axis_names[stacked] in STACKED_AXES:
        stacked += 1
    matrix = axis_names[stacked:]
    if len(matrix) < 2:
        raise ValueError(f"LoRA target {path} with logical axes {axis_names} is not a matrix (besides its "
                         f"stacked axes {STACKED_AXES}); narrow the patterns")
    writes_model_width = matrix[-1] == MODEL_WIDTH_AXIS and matrix[0] != MODEL_WIDTH_AXIS
    return stacked, len(matrix) - 1 if writes_model_width else 1


def init_lora(rng, params, *, rank: int, patterns: Sequence[str]) -> dict:
    """Adapters {"a": A, "b": B} for every target of `patterns`, nested like `params`, each boxed with
    logical axis names derived from its weight's (module docstring). `params` must be boxed
    (`model.init(...)["params"]`, or `research.models.boxed_abstract_params(config.model)` when only
    the shapes are at hand): the names tell the stacked, input and output axes apart."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an int >= 1, got {rank!r}")
    leaves = flat_leaves(params)
    adapters = {}
    for index, path in enumerate(lora_targets(params, patterns)):
        weight = leaves[path]
        if not isinstance(weight, nn.LogicallyPartitioned):
            raise ValueError(f"init_lora needs params boxed with logical axis names (as model.init returns them) "
                             f"to read the target {path} as a matrix; it is a bare {type(weight).__name__}")
        names, shape = tuple(weight.names), tuple(weight.value.shape)
        stacked, inputs = matrix_split(path, names)
        split = stacked + inputs
        fan_in = math.prod(shape[stacked:split])
        a = jax.random.normal(jax.random.fold_in(rng, index), shape[:split] + (rank,), jnp.float32) * fan_in**-0.5
        b = jnp.zeros(shape[:stacked] + (rank,) + shape[split:], jnp.float32)
        adapters[tuple(path.split("/"))] = {
            "a": weight.replace(value=a, names=names[:split] + (None,)),
            "b": weight.replace(value=b, names=names[:stacked] + (None,) + names[split:]),
        }
    return traverse_util.unflatten_dict(adapters)


def low_rank_update(path: str, a, b, shape: tuple, rank: int):
    """A·B of one target, `shape` like its weight: A [stack..., in..., r] and B [stack..., r, out...]
    multiplied as matrices [stack..., Π in, r] · [stack..., r, Π out]."""
    stacked = a.ndim + b.ndim - 2 - len(shape)
    ranks_agree = a.shape[-1] == rank and 0 <= stacked < b.ndim and b.shape[stacked] == rank
    if not ranks_agree or a.shape[:-1] + b.shape[stacked + 1:] != tuple(shape):
        raise ValueError(f"LoRA adapter {path}: A {a.shape} and B {b.shape} of rank {rank} do not make a "
                         f"weight of shape {tuple(shape)}")
    a = a.reshape(*a.shape[:stacked], -1, rank)
    b = b.reshape(*b.shape[:stacked], rank, -1)
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST).reshape(shape)


def merge_lora(params, adapters, *, alpha: float, rank: int):
    """`params` with every adapted weight W replaced by W + (α/r)·A·B; other leaves, and the boxes of
    boxed params, unchanged. Adapters may be boxed or not."""
    by_weight = {}
    for path, value in traverse_util.flatten_dict(nn.meta.unbox(adapters)).items():
        by_weight.setdefault(path[:-1], {})[path[-1]] = value
    merged = traverse_util.flatten_dict(params)
    scale = alpha / rank
    for path, pair in by_weight.items():
        name = "/".join(map(str, path))
        if path not in merged or set(pair) != {"a", "b"}:
            raise ValueError(f"LoRA adapter {name} ({sorted(pair)}) does not adapt a parameter of params")
        weight = merged[path]
        value = weight.value if isinstance(weight, nn.LogicallyPartitioned) else weight
        value = value + scale * low_rank_update(name, pair["a"], pair["b"], value.shape, rank)
        merged[path] = weight.replace_boxed(value) if isinstance(weight, nn.LogicallyPartitioned) else value
    return traverse_util.unflatten_dict(merged)
