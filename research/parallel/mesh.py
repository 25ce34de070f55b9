"""Device mesh from `config.mesh` and the map from logical axis names to mesh axes.

Mesh axes, outermost first: `data` (pure data parallelism), `fsdp` (data parallelism with
parameters, gradients and optimizer state sharded, ZeRO-3 style), `tensor` (Megatron-style
sharding of heads and the FFN width), `expert` (experts of a mixture). A size of -1 takes
the devices the other axes leave. The batch is split over `data` × `fsdp` × `expert` (outside
the experts, the expert axis is one more data axis).

Micro-batches: a step of B sequences over S = data × fsdp × expert batch shards accumulates
`accumulation_steps` micro-batches: `train.grad_accum_steps` as given, or, with
`train.micro_batch_per_device` = m > 0 (rows per batch shard per micro-step; the chips of one
`tensor` group share their rows), B / (m · S), so one config fits any slice size (MaxText's
per-device batch).

`context` (context parallelism: the sequence split over devices, as ring attention in
research/parallel/ring_attention.py needs) is an axis only when `config.mesh.context` is not 1;
it then sits between `fsdp` and `tensor` (ring neighbours close together), the logical axis
`seq` maps to it, and batches are split over it along the sequence.
"""

import math
from collections.abc import Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "expert")
CONTEXT_AXIS = "context"
CONFIG_MESH_AXES = MESH_AXES + (CONTEXT_AXIS,)  # the fields of `config.mesh`

# logical axis name -> mesh axes (None = replicated). Parameters: embed over fsdp,
# heads/mlp/vocab over tensor (Megatron), experts over expert. Activations: batch, seq.
# Rules that name an axis a mesh lacks mean "replicated" on that mesh (`rules_for`).
# These are the LLaMA family's rules and every family's starting point (`extend_rules`).
LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp", "expert")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("expert", "expert"),
    ("head_dim", None),
    ("layers", None),
    ("seq", CONTEXT_AXIS),
)


def mesh_axes(mesh_config) -> tuple[str, ...]:
    """The mesh's axis names, outermost first: MESH_AXES, with `context` after `fsdp` unless it is 1."""
    if mesh_config.get(CONTEXT_AXIS, 1) == 1:
        return MESH_AXES
    return ("data", "fsdp", CONTEXT_AXIS, "tensor", "expert")


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, ...]:
    """Axis sizes (in `mesh_axes` order) for `num_devices`, resolving a single -1; errors name the mesh field."""
    axes = mesh_axes(mesh_config)
    sizes = [mesh_config.get(axis, 1) for axis in axes]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"config.mesh {dict(zip(axes, sizes))}: {num_devices} devices are not "
                             f"divisible by the fixed axes' product {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"config.mesh {dict(zip(axes, sizes))} needs {math.prod(sizes)} devices, "
                         f"but {num_devices} are available")
    return tuple(sizes)


def batch_shards(mesh_sizes: Mapping[str, int]) -> int:
    """How many ways a batch's rows are split: data × fsdp × expert (absent axes count 1)."""
    return math.prod(mesh_sizes.get(axis, 1) for axis in ("data", "fsdp", "expert"))


def accumulation_steps(train_config, mesh_sizes: Mapping[str, int]) -> int:
    """Micro-batches per step: B / (m · S) with m = `train.micro_batch_per_device` > 0 (module
    docstring), else `train.grad_accum_steps` (default 1). A ValueError names the fields when m · S
    does not divide B."""
    per_device = train_config.get("micro_batch_per_device", 0)
    if not per_device:
        return train_config.get("grad_accum_steps", 1)
    rows = per_device * batch_shards(mesh_sizes)
    if train_config.batch_size % rows:
        raise ValueError(f"config fields train.batch_size and train.micro_batch_per_device: a batch of "
                         f"{train_config.batch_size} sequences is no whole number of micro-batches of "
                         f"{per_device} sequence(s) × {batch_shards(mesh_sizes)} batch shards (data × fsdp × expert)")
    return train_config.batch_size // rows


def make_mesh(mesh_config, devices=None) -> Mesh:
    """A `Mesh` over `devices` (default: all) with axes `data, fsdp, tensor, expert` (and `context`).

    Axes are `Auto`: shardings are given to `jit` and propagated by GSPMD.
    """
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(mesh_config, len(devices))
    if devices and devices[0].platform in ("tpu", "gpu"):
        device_grid = accelerator_grid(shape, devices)
    else:
        device_grid = np.asarray(devices).reshape(shape)
    axes = mesh_axes(mesh_config)
    return Mesh(device_grid, axes, axis_types=(AxisType.Auto,) * len(axes))


def accelerator_grid(shape, devices) -> np.ndarray:
    """The devices arranged as `shape` along the interconnect: each mesh axis a product of torus
    sides where possible (mesh_utils' default, the fastest collectives); otherwise, e.g. fsdp 8 ×
    tensor 2 on a 4×4 torus, with physical axes split between mesh axes, a valid but slower layout."""
    try:
        return mesh_utils.create_device_mesh(shape, devices)
    except NotImplementedError:
        return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)


def extend_rules(extra, base=LOGICAL_AXIS_RULES) -> tuple:
    """`base` with the rules of `extra` (pairs logical name -> mesh axes) added or, for a name
    `base` has too, replacing its rule: how a model family states its own axes."""
    names = {name for name, _ in extra}
    return tuple(rule for rule in base if rule[0] not in names) + tuple(extra)


def rules_for(mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """`rules` with the mesh axes that `mesh` lacks dropped (those dimensions stay replicated)."""

    def present(mesh_axes_of_rule):
        if mesh_axes_of_rule is None or isinstance(mesh_axes_of_rule, str):
            return mesh_axes_of_rule if mesh_axes_of_rule in mesh.axis_names else None
        return tuple(a for a in mesh_axes_of_rule if a in mesh.axis_names) or None

    return tuple((logical, present(physical)) for logical, physical in rules)


def mesh_axes_for(logical: str, mesh: Mesh):
    """The mesh axes (a tuple, a name or None) that logical axis `logical` maps to on `mesh`."""
    return dict(rules_for(mesh))[logical]


def mesh_axis_names(logical: str | None, mesh: Mesh) -> tuple[str, ...]:
    """`mesh_axes_for` as a tuple of axis names (empty: replicated, also for `logical` None)."""
    axes = None if logical is None else mesh_axes_for(logical, mesh)
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def dividing_mesh_axes(mesh: Mesh, logical: str | None, size: int):
    """The mesh axes of logical axis `logical` if they split `size` evenly, else None (replicated):
    e.g. the batch of one row that initialises the model."""
    divides = size % math.prod(mesh.shape[name] for name in mesh_axis_names(logical, mesh)) == 0
    return mesh_axes_for(logical, mesh) if logical is not None and divides else None


def constrain(x, logical_axes, mesh: Mesh | None):
    """`x` pinned to the mesh axes its logical axes map to (None: replicated), where they split it
    evenly; unchanged without a mesh. The model pins its activations so (batch over the data axes,
    sequence over `context`, heads / FFN width / vocabulary over `tensor`, model width replicated),
    as MaxText does: otherwise GSPMD may carry the weights' width-over-fsdp sharding into the
    activations and keep whole batches on every chip."""
    if mesh is None:
        return x
    spec = PartitionSpec(*(dividing_mesh_axes(mesh, name, size) for name, size in zip(logical_axes, x.shape)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def mesh_axis_size(mesh: Mesh | None, axis: str) -> int:
    """The size of mesh axis `axis`; 1 without a mesh or when the mesh lacks that axis."""
    return 1 if mesh is None else dict(mesh.shape).get(axis, 1)


def context_parallel_size(mesh: Mesh | None) -> int:
    """How many devices split each sequence (the `context` axis)."""
    return mesh_axis_size(mesh, CONTEXT_AXIS)


def logical_to_sharding(logical_specs, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """Maps a pytree of logical `PartitionSpec`s to `NamedSharding`s on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules_for(mesh, rules))


def sharded_abstract(boxed, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """(unboxed `jax.ShapeDtypeStruct`s carrying their shardings, the shardings) of a pytree of
    abstract values boxed with logical axes (`nn.LogicallyPartitioned`; unboxed leaves are replicated)."""
    shardings = logical_to_sharding(nn.get_partition_spec(boxed), mesh, rules)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            nn.meta.unbox(boxed), shardings)
    return abstract, shardings


def sharded_abstract_state(init_state, mesh: Mesh, key, rules=LOGICAL_AXIS_RULES):
    """`sharded_abstract` of `init_state(key)`, from its parameters' logical axes; nothing is allocated."""
    return sharded_abstract(jax.eval_shape(init_state, key), mesh, rules)


def check_divides(abstract, what: str, fix: str = "change config.mesh") -> None:
    """Raises ValueError naming the first leaf of `abstract` (sharded `ShapeDtypeStruct`s) with a
    dimension that its mesh axes do not split evenly, e.g. a batch of 6 rows over 4 data shards."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
        mesh = leaf.sharding.mesh
        for size, axes in zip(leaf.shape, leaf.sharding.spec):
            names = (axes,) if isinstance(axes, str) else tuple(axes or ())
            ways = math.prod(mesh.shape[name] for name in names)
            if size % ways:
                raise ValueError(f"{what} {jax.tree_util.keystr(path)} of shape {leaf.shape}: a dimension of {size} "
                                 f"is not divisible by mesh axes {names} of size {ways}; {fix}")


def token_batch_axes(ndim: int = 2) -> tuple:
    """The logical axes of a token batch leaf `[batch, seq, ...]`: rows over the data axes
    (`data` × `fsdp` × `expert`; outside the experts the expert axis is one more data axis), the
    sequence over `context` when the mesh has it."""
    return ("batch", "seq") + (None,) * (ndim - 2)


def batch_sharding(mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> NamedSharding:
    """The sharding of a `[batch, seq]` token leaf (`token_batch_axes`)."""
    return logical_to_sharding(PartitionSpec(*token_batch_axes()), mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
