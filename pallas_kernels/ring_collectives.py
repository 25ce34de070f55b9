"""Ring reduce-scatter, all-gather and all-reduce as Pallas TPU kernels with remote DMA.

Call them inside `jax.shard_map(..., check_vma=False)`. The p devices along `axis_name`
form a ring; a lane is one direction around it: lane +1 sends to i+1, lane −1 to i−1. The
bidirectional variant cuts every chunk in two halves and runs one half on each lane, so
both directions of every link are busy. Each collective takes p−1 steps per lane.

Reduce-scatter (partial sums travel, inputs stay). On lane δ device i starts with the
accumulator x_i[i−δ]; at step s = 0..p−2 it DMAs the accumulator into a receive slot of
device i+δ, waits for the accumulator of device i−δ, which is chunk k = i−δ(s+2) (mod p),
and adds its own x_i[k]. After p−1 steps k = i: device i holds Σ_j x_j[i].
Each device sends (p−1)/p·N bytes for N bytes of input.

All-gather (blocks travel). Device i copies its block into row i of its output; at step s
it DMAs row i−δs to the same row of device i+δ and receives row i−δ(s+1) from i−δ.
Each device sends (p−1)·B bytes for a B-byte block.

All-reduce = reduce-scatter + all-gather: 2(p−1)/p·N bytes per device.

Synchronisation, per lane:
- Entry barrier: every device signals both neighbours on the barrier semaphore and waits
  for both, so nobody DMAs into a device that has not entered the kernel yet.
- Credits (a REGULAR semaphore on the sender): the receiver grants 2 credits at entry, one
  per receive slot, and one more each time it has finished reading a slot; the sender
  waits for a credit before each DMA. So no sender overruns its receiver's double-buffered
  slots (reduce-scatter) or receive semaphores (both), and at exit the sender drains the
  last 2 credits: every semaphore ends at zero and the neighbours have finished reading,
  which also makes a later call with the same collective_id safe.
- DMA semaphores: one send semaphore per lane, one receive semaphore per lane and slot.

Layout: the local buffer is zero-padded and viewed as [p, lanes, rows, 128] tiles with
rows a multiple of the dtype's sublane count; every chunk must fit in VMEM. Supported
dtypes: float32, int32, bfloat16. `interpret=None` interprets unless the default backend
is TPU; pass `interpret=pltpu.InterpretParams(detect_races=True)` to check for data races,
or `interpret=False` to compile through Mosaic for a TPU topology ahead of time on a CPU.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

LANE_WIDTH = 128
SLOTS = 2  # receive slots per lane: double buffering
COLLECTIVE_ID = 0  # all kernels here talk only to their ring neighbours on one axis
SUBLANES = {jnp.dtype(jnp.float32): 8, jnp.dtype(jnp.int32): 8, jnp.dtype(jnp.bfloat16): 16}


def _check_dtype(dtype):
    if jnp.dtype(dtype) not in SUBLANES:
        raise TypeError(f"the Pallas ring kernels move {sorted(map(str, SUBLANES))} arrays; "
                        f"got {jnp.dtype(dtype)}")


def _axis_size(axis_name) -> int:
    try:
        return lax.axis_size(axis_name)
    except NameError:
        mesh_axes = jax.sharding.get_abstract_mesh().axis_names
        raise ValueError(f"axis_name {axis_name!r} is not an axis of the enclosing shard_map; "
                         f"its mesh axes are {mesh_axes}") from None


def _shifts(bidirectional: bool) -> tuple[int, ...]:
    return (1, -1) if bidirectional else (1,)


def _default_interpret(interpret):
    if interpret is not None:
        return interpret
    return False if jax.default_backend() == "tpu" else pltpu.InterpretParams()


def _signal(semaphore, axis_name, device, inc=1):
    pl.semaphore_signal(semaphore, inc, device_id={axis_name: device},
                        device_id_type=pl.DeviceIdType.MESH)


def _enter(axis_name, index, p, shifts, credit_sems):
    """Barrier with both neighbours, then grant SLOTS credits to each lane's sender."""
    barrier = pltpu.get_barrier_semaphore()
    _signal(barrier, axis_name, (index + 1) % p)
    _signal(barrier, axis_name, (index - 1) % p)
    pl.semaphore_wait(barrier, 2)
    for lane, shift in enumerate(shifts):
        _signal(credit_sems.at[lane], axis_name, (index - shift) % p, SLOTS)


def _exit(shifts, credit_sems):
    """Drain the receiver's last SLOTS credits: it has read everything sent to it."""
    for lane in range(len(shifts)):
        pl.semaphore_wait(credit_sems.at[lane], SLOTS)


def _reduce_scatter_kernel(x_hbm, acc_vmem, own_vmem, recv_vmem, local_sems, send_sems,
                           recv_sems, credit_sems, *, axis_name, p, shifts):
    index = lax.axis_index(axis_name)
    _enter(axis_name, index, p, shifts, credit_sems)

    def load_own_chunk(lane, chunk, dst):
        return pltpu.make_async_copy(x_hbm.at[chunk % p, lane], dst, local_sems.at[lane])

    for lane, shift in enumerate(shifts):
        first = load_own_chunk(lane, index - shift, acc_vmem.at[lane])
        first.start()
        first.wait()

    @pl.loop(0, p - 1)
    def _step(step):
        slot = step % SLOTS
        copies = []
        for lane, shift in enumerate(shifts):
            pl.semaphore_wait(credit_sems.at[lane], 1)
            send = pltpu.make_async_remote_copy(
                acc_vmem.at[lane], recv_vmem.at[lane, slot], send_sems.at[lane],
                recv_sems.at[lane, slot], device_id={axis_name: (index + shift) % p},
                device_id_type=pl.DeviceIdType.MESH)
            load = load_own_chunk(lane, index - shift * (step + 2), own_vmem.at[lane])
            send.start()
            load.start()
            copies.append((send, load))
        for lane, (shift, (send, load)) in enumerate(zip(shifts, copies)):
            send.wait_send()
            send.wait_recv()
            load.wait()
            acc_vmem[lane] = recv_vmem[lane, slot] + own_vmem[lane]
            _signal(credit_sems.at[lane], axis_name, (index - shift) % p)

    _exit(shifts, credit_sems)


def _all_gather_kernel(x_hbm, out_hbm, local_sem, send_sems, recv_sems, credit_sems, *,
                       axis_name, p, shifts):
    index = lax.axis_index(axis_name)
    _enter(axis_name, index, p, shifts, credit_sems)
    own = pltpu.make_async_copy(x_hbm, out_hbm.at[index], local_sem)
    own.start()
    own.wait()

    @pl.loop(0, p - 1)
    def _step(step):
        slot = step % SLOTS
        sends = []
        for lane, shift in enumerate(shifts):
            pl.semaphore_wait(credit_sems.at[lane], 1)
            row = out_hbm.at[(index - shift * step) % p, lane]
            send = pltpu.make_async_remote_copy(
                row, row, send_sems.at[lane], recv_sems.at[lane, slot],
                device_id={axis_name: (index + shift) % p}, device_id_type=pl.DeviceIdType.MESH)
            send.start()
            sends.append(send)
        for lane, (shift, send) in enumerate(zip(shifts, sends)):
            send.wait_send()
            send.wait_recv()  # counts bytes: row i−δ(s+1) has arrived, the same size as ours
            _signal(credit_sems.at[lane], axis_name, (index - shift) % p)

    _exit(shifts, credit_sems)


def _semaphores(num_lanes: int):
    return [pltpu.SemaphoreType.DMA((num_lanes,)),  # send
            pltpu.SemaphoreType.DMA((num_lanes, SLOTS)),  # receive
            pltpu.SemaphoreType.REGULAR((num_lanes,))]  # credits


def _reduce_scatter_tiles(tiles, axis_name, p, shifts, interpret):
    """[p, lanes, rows, 128] → [lanes, rows, 128], the sum over devices of chunk i."""
    chunk_shape = tiles.shape[1:]
    kernel = functools.partial(_reduce_scatter_kernel, axis_name=axis_name, p=p, shifts=shifts)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(chunk_shape, tiles.dtype),
        in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
        out_specs=pl.BlockSpec(memory_space=pltpu.VMEM),
        scratch_shapes=[pltpu.VMEM(chunk_shape, tiles.dtype),  # own chunk
                        pltpu.VMEM((len(shifts), SLOTS) + chunk_shape[1:], tiles.dtype),
                        pltpu.SemaphoreType.DMA((len(shifts),)),  # local loads
                        *_semaphores(len(shifts))],
        compiler_params=pltpu.CompilerParams(collective_id=COLLECTIVE_ID),
        interpret=interpret,
    )(tiles)


def _all_gather_tiles(tiles, axis_name, p, shifts, interpret):
    """[lanes, rows, 128] → [p, lanes, rows, 128] with row j the tiles of device j."""
    kernel = functools.partial(_all_gather_kernel, axis_name=axis_name, p=p, shifts=shifts)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((p,) + tiles.shape, tiles.dtype),
        in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
        out_specs=pl.BlockSpec(memory_space=pl.ANY),
        scratch_shapes=[pltpu.SemaphoreType.DMA(()), *_semaphores(len(shifts))],
        compiler_params=pltpu.CompilerParams(collective_id=COLLECTIVE_ID),
        interpret=interpret,
    )(tiles)


def _to_tiles(vectors, num_lanes: int):
    """[m, n] → [m, lanes, rows, 128], zero-padded so every lane holds whole sublane tiles."""
    tile = num_lanes * SUBLANES[vectors.dtype] * LANE_WIDTH
    padded = jnp.pad(vectors, ((0, 0), (0, (-vectors.shape[1]) % tile)))
    return padded.reshape(vectors.shape[0], num_lanes, -1, LANE_WIDTH)


def ring_reduce_scatter(x, axis_name, *, bidirectional=False, tiled=False, interpret=None):
    """`lax.psum_scatter(x, axis_name, scatter_dimension=0, tiled=tiled)` by remote DMA."""
    _check_dtype(x.dtype)
    p = _axis_size(axis_name)
    if (x.shape[0] % p) if tiled else (x.shape[0] != p):
        raise ValueError(f"ring_reduce_scatter over {axis_name!r} of size {p}: the leading "
                         f"dimension of shape {x.shape} must be "
                         f"{'a multiple of ' if tiled else ''}{p}")
    chunk_shape = ((x.shape[0] // p,) if tiled else ()) + x.shape[1:]
    if p == 1:
        return x.reshape(chunk_shape)
    chunks = x.reshape(p, -1)
    reduced = _reduce_scatter_tiles(_to_tiles(chunks, len(_shifts(bidirectional))), axis_name,
                                    p, _shifts(bidirectional), _default_interpret(interpret))
    return reduced.reshape(-1)[:chunks.shape[1]].reshape(chunk_shape)


def ring_all_gather(x, axis_name, *, bidirectional=False, tiled=False, interpret=None):
    """`lax.all_gather(x, axis_name, axis=0, tiled=tiled)` by remote DMA."""
    _check_dtype(x.dtype)
    p = _axis_size(axis_name)
    gathered_shape = ((p * x.shape[0],) + x.shape[1:]) if tiled else (p,) + x.shape
    if p == 1:
        return x.reshape(gathered_shape)
    tiles = _to_tiles(x.reshape(1, -1), len(_shifts(bidirectional)))[0]
    rows = _all_gather_tiles(tiles, axis_name, p, _shifts(bidirectional),
                             _default_interpret(interpret))
    return rows.reshape(p, -1)[:, :x.size].reshape(gathered_shape)


def ring_all_reduce(x, axis_name, *, bidirectional=False, interpret=None):
    """`lax.psum(x, axis_name)`: the reduce-scatter kernel, then the all-gather kernel.

    Any shape: x is flattened, zero-padded to p·lanes whole tiles and stripped again.
    Apply it to a pytree with `research.parallel.collectives.map_fused_by_dtype`.
    """
    _check_dtype(x.dtype)
    p = _axis_size(axis_name)
    if p == 1:
        return x
    shifts = _shifts(bidirectional)
    interpret = _default_interpret(interpret)
    tiles = _to_tiles(x.reshape(1, -1), p * len(shifts))
    chunks = tiles.reshape(p, len(shifts), -1, LANE_WIDTH)
    shard = _reduce_scatter_tiles(chunks, axis_name, p, shifts, interpret)
    gathered = _all_gather_tiles(shard, axis_name, p, shifts, interpret)
    return gathered.reshape(-1)[:x.size].reshape(x.shape)
