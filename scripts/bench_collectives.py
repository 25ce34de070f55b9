"""Benchmark: ring all-reduce vs `lax.psum` on 8 fake CPU devices.

    python -m scripts.bench_collectives [--sizes-mib 8 64] [--repeats 5]

Prints the median wall time of `lax.psum`, the ring and the bidirectional ring for each
per-device buffer size, and the ratios ring/psum and bidirectional/psum. Fake CPU devices
share this machine's cores and memory: the numbers describe this CPU only.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec  # noqa: E402

from research.parallel.collectives import ring_all_reduce  # noqa: E402

AXIS = "ring"
MiB = 2 ** 20
METHODS = {
    "psum": lambda x: lax.psum(x, AXIS),
    "ring": lambda x: ring_all_reduce(x, AXIS),
    "ring_bidirectional": lambda x: ring_all_reduce(x, AXIS, bidirectional=True),
}


def all_reduce_program(method: str, num_devices: int, nbytes: int):
    """A jitted all-reduce of `nbytes` of float32 per device over the first `num_devices`,
    and its input: a flat array whose i-th block of nbytes/4 elements lives on device i."""
    mesh = jax.make_mesh((num_devices,), (AXIS,), axis_types=(AxisType.Auto,),
                         devices=jax.devices()[:num_devices])
    spec = PartitionSpec(AXIS)
    program = jax.jit(jax.shard_map(METHODS[method], mesh=mesh, in_specs=spec, out_specs=spec))
    values = jnp.arange(num_devices * (nbytes // 4), dtype=jnp.float32) % 251
    return program, jax.device_put(values, NamedSharding(mesh, spec))


def median_seconds(programs: dict, repeats: int) -> dict:
    """Median wall time of each `program(x)` in `programs` ({name: (program, x)}).

    One warm-up call each (it compiles), then `repeats` rounds that run every program once
    in turn, so a change in the machine's load affects all of them alike.
    """
    for program, x in programs.values():
        jax.block_until_ready(program(x))
    times = {name: [] for name in programs}
    for _ in range(repeats):
        for name, (program, x) in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(program(x))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(samples) for name, samples in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    num_devices = len(jax.devices())
    print(f"all-reduce of float32 on {num_devices} fake CPU devices "
          f"(median of {args.repeats}; indicative of this CPU only)")
    for size in args.sizes_mib:
        programs = {method: all_reduce_program(method, num_devices, size * MiB)
                    for method in METHODS}
        seconds = median_seconds(programs, args.repeats)
        print(f"{size:4d} MiB  psum {seconds['psum'] * 1e3:8.1f} ms  "
              f"ring {seconds['ring'] * 1e3:8.1f} ms  "
              f"bidirectional {seconds['ring_bidirectional'] * 1e3:8.1f} ms  "
              f"ring/psum {seconds['ring'] / seconds['psum']:.2f}  "
              f"bidirectional/psum {seconds['ring_bidirectional'] / seconds['psum']:.2f}")


if __name__ == "__main__":
    main()
