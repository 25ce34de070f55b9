"""Device mesh from `config.mesh` and the map from logical axis names to mesh axes.

Mesh axes, outermost first: `data` (pure data parallelism), `fsdp` (data parallelism with
parameters, gradients and optimizer state sharded, ZeRO-3 style), `tensor` (Megatron-style
sharding of heads and the FFN width), `expert` (experts of a mixture). A size of -1 takes
the devices the other axes leave. The batch is split over `data` × `fsdp`.
"""

import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "expert")

# logical axis name -> mesh axes (None = replicated). Parameters: embed over fsdp,
# heads/mlp/vocab over tensor (Megatron), experts over expert. Activations: batch.
LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("expert", "expert"),
    ("head_dim", None),
    ("layers", None),
    ("seq", None),
)


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, ...]:
    """Axis sizes for `num_devices`, resolving a single -1; errors name the mesh field."""
    sizes = [mesh_config.get(axis, 1) for axis in MESH_AXES]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not "
                             f"divisible by the fixed axes' product {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                         f"but {num_devices} are available")
    return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> Mesh:
    """A `Mesh` over `devices` (default: all) with axes `data, fsdp, tensor, expert`.

    Axes are `Auto`: shardings are given to `jit` and propagated by GSPMD.
    """
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(mesh_config, len(devices))
    if devices and devices[0].platform in ("tpu", "gpu"):
        device_grid = mesh_utils.create_device_mesh(shape, devices)
    else:
        device_grid = np.asarray(devices).reshape(shape)
    return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_sharding(logical_specs, mesh: Mesh):
    """Maps a pytree of logical `PartitionSpec`s to `NamedSharding`s on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_AXIS_RULES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis over `data` × `fsdp`, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
