"""Data-parallel gradient synchronisation, selectable with `config.parallel.grad_reduce`.

    "auto"               GSPMD: the step is jitted over the mesh and XLA inserts the reduction
    "xla"                shard_map over `data`; gradients summed with `lax.psum`
    "ring"               shard_map; `ring_all_reduce` (reduce-scatter + all-gather of ppermutes)
    "ring_bidirectional" shard_map; the ring with each half of every chunk going one way
    "pallas_ring"        shard_map; the Pallas remote-DMA ring kernel

With shard_map every device of the `data` axis holds the parameters whole, computes the
gradient of Σ_local w·nll / Σ_global w on its rows, and the sum over devices is the
gradient of the global mean loss. Leaves are fused per dtype, so one collective moves all
gradients. The explicit variants need a purely data-parallel mesh (fsdp = tensor = expert = 1).
"""

import functools

import jax
from jax import lax
from jax.sharding import PartitionSpec as P

import pallas_kernels.ring_collectives as pallas_ring
from research.parallel import collectives

GRAD_REDUCE_METHODS = ("auto", "xla", "ring", "ring_bidirectional", "pallas_ring")


def all_reduce_fn(method: str):
    """tree ↦ Σ over the `data` axis, inside shard_map, by `method`."""
    if method == "xla":
        return lambda tree: lax.psum(tree, "data")
    if method in ("ring", "ring_bidirectional"):
        ring = functools.partial(collectives.ring_all_reduce, axis_name="data",
                                 bidirectional=method == "ring_bidirectional")
        return lambda tree: collectives.map_fused_by_dtype(ring, tree)
    if method == "pallas_ring":
        return lambda tree: collectives.map_fused_by_dtype(lambda v: pallas_ring.ring_all_reduce(v, "data"), tree)
    raise ValueError(f"config field parallel.grad_reduce: {method!r} is not one of {GRAD_REDUCE_METHODS}")


def check_data_parallel(mesh, method: str) -> None:
    others = {name: size for name, size in mesh.shape.items() if name != "data" and size != 1}
    if others:
        raise ValueError(f"config field parallel.grad_reduce={method!r} needs a purely data-parallel mesh; "
                         f"these mesh axes are not 1: {others}")


def data_parallel(grad_fn, mesh, method: str):
    """Wraps `grad_fn(params, batch, *replicated) -> (loss, grads)` computed on local rows so
    that it returns the global (loss, grads), summed over `data` by `method`."""
    if method == "auto":
        return grad_fn
    check_data_parallel(mesh, method)
    reduce = all_reduce_fn(method)

    def local(params, batch, *replicated):
        return reduce(grad_fn(params, batch, *replicated))

    def wrapped(params, batch, *replicated):
        mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data"), *(P() for _ in replicated)),
                               out_specs=P(), check_vma=False)
        return mapped(params, batch, *replicated)

    return wrapped
