"""The layouts worth compiling for a config on a TPU slice, and the best one that fits.

A layout is a mesh (data 1, fsdp × tensor over the chips the config's `expert` and `context`
axes leave) and a micro-batch of m sequences per batch shard (`train.micro_batch_per_device`).
On a slice of C chips, with e = expert · context:

    tensor t ∈ {1, 2, 4, 8} where t divides the query and K/V heads and C / e   (pure FSDP first)
    fsdp   f = C / (e · t)
    m ∈ {1, 2, 4, ...} while m · f · expert divides the global batch B

`search` compiles each mesh's micro-batches in ascending order until the compiler refuses one
(activation memory grows with m, so a refusal ends that mesh) and keeps each mesh's largest
fitting m: for a mesh, fewer micro-steps B / (m · f · expert) only save work (FSDP gathers every
weight once per micro-step; the FLOPs are the same). Among those, the best is the one with the
shortest estimated step (research/tools/roofline.py, with the ICI term where the chip's ICI
bandwidth is known) or, without the cost compiles, the fewest micro-steps, then the smaller tensor
axis.
"""

import dataclasses
import math
from collections.abc import Callable, Iterator

import ml_collections

from research.config import unfrozen
from research.tools import aot

TENSOR_SIZES = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Mesh sizes and sequences per batch shard per micro-step."""

    mesh: dict
    micro_batch_per_device: int

    @property
    def overrides(self) -> tuple[str, ...]:
        """The layout as config overrides (`mesh.fsdp=4`, ...)."""
        return (*(f"mesh.{axis}={size}" for axis, size in self.mesh.items()),
                f"train.micro_batch_per_device={self.micro_batch_per_device}", "train.grad_accum_steps=1")

    def describe(self) -> str:
        sizes = " × ".join(f"{axis} {size}" for axis, size in self.mesh.items() if size != 1 or axis == "fsdp")
        return f"{sizes}, {self.micro_batch_per_device} seq/shard"


def slices_of(generation: str) -> list[aot.TpuSlice]:
    """Every power-of-two slice of a generation, smallest first."""
    spec = aot.GENERATIONS[generation]
    return [aot.parse_slice(f"{generation}-{c * spec.cores_per_name_unit}") for c in aot.offered_chip_counts(spec)]


def candidate_meshes(config, chips: int) -> Iterator[dict]:
    """Pure FSDP first, then FSDP × tensor 2, 4, 8, where the heads, K/V heads and chips divide; the
    config's expert and context axes kept."""
    expert, context = config.mesh.get("expert", 1), config.mesh.get("context", 1)
    for tensor in TENSOR_SIZES:
        others = expert * context * tensor
        model = config.model
        if chips % others or model.num_heads % tensor or model.num_kv_heads % tensor:
            continue
        mesh = {"data": 1, "fsdp": chips // others, "tensor": tensor, "expert": expert}
        yield mesh | ({"context": context} if context != 1 else {})


def micro_batches(batch_size: int, shards: int) -> Iterator[int]:
    """m = 1, 2, 4, ... sequences per batch shard while m · shards divides the batch."""
    m = 1
    while m * shards <= batch_size and batch_size % (m * shards) == 0:
        yield m
        m *= 2


def with_layout(config, layout: Layout):
    """`config` with `layout`'s mesh and micro-batch (and no explicit grad_accum_steps)."""
    variant = unfrozen(config)
    variant.mesh.update(layout.mesh)
    variant.train.micro_batch_per_device = layout.micro_batch_per_device
    variant.train.grad_accum_steps = 1
    return ml_collections.FrozenConfigDict(variant)


@dataclasses.dataclass(frozen=True)
class Trial:
    """One compile of the search: the layout and its result, or why it was not compiled."""

    layout: Layout
    result: aot.AotResult | None
    problem: str = ""

    @property
    def outcome(self) -> str:
        if self.result is None:
            return f"not compiled: {self.problem}"
        if self.result.memory is None:
            return self.result.compiler_message
        verdict = "fits" if self.result.fits else "does not fit"
        return f"{verdict}: peak {self.result.memory.total / aot.GiB:.1f} GiB, compiled in " \
               f"{self.result.compile_seconds:.0f} s"


def estimated_seconds(result: aot.AotResult) -> float:
    """The roofline step time, with the ICI term where the chip's ICI bandwidth is known."""
    roofline = result.roofline
    return roofline.seconds(with_ici=not math.isnan(roofline.ici_bytes_per_s))


def search(config, tpu_slice: aot.TpuSlice, *, with_cost: bool = True,
           log: Callable[[str], None] = lambda line: None) -> tuple[Trial | None, list[Trial]]:
    """(the best fitting trial or None, every trial) for `config` on `tpu_slice` (module docstring).
    With `with_cost`, each mesh's best trial gets the step cost (five more compiles) and the
    shortest estimated step wins."""
    trials, best_of_mesh = [], []
    for mesh in candidate_meshes(config, tpu_slice.chips):
        largest = None
        for m in micro_batches(config.train.batch_size, mesh["fsdp"] * mesh["expert"]):
            layout = Layout(mesh, m)
            variant = with_layout(config, layout)
            try:
                result = aot.compile_for_slice(variant, tpu_slice, with_cost=False)
            except ValueError as error:  # a mesh the torus cannot hold, a leaf the mesh does not split
                trials.append(Trial(layout, None, str(error).splitlines()[0]))
                break
            trials.append(Trial(layout, result))
            log(f"{layout.describe()}: {trials[-1].outcome}")
            if not result.fits:
                break
            largest = (trials[-1], variant)
        if largest:
            best_of_mesh.append(largest)
    if not best_of_mesh:
        return None, trials
    if not with_cost:
        return min((trial for trial, _ in best_of_mesh),
                   key=lambda t: (t.result.micro_steps, t.layout.mesh["tensor"])), trials
    devices = aot.slice_devices(tpu_slice)
    costed = [dataclasses.replace(trial, result=dataclasses.replace(
        trial.result, cost=aot.step_cost(variant, devices, trial.result.counted_cost))) for trial, variant in best_of_mesh]
    return min(costed, key=lambda t: estimated_seconds(t.result)), trials
