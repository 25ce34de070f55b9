"""Ahead-of-time compilation of the real train step for a TPU slice this machine does not have.

    result = compile_for_slice(config, parse_slice("v5p-128"))
    result.memory.total, result.fits, result.compile_seconds, result.cost.flops

With `libtpu` installed, `jax.experimental.topologies` describes the devices of any TPU slice
on a CPU-only host, and `jit(...).lower(abstract args).compile()` runs the real TPU compiler
on them. The step is that of `config.trainer`'s Task, jitted by the function the training loop
uses (research/train/step.py); the train state and batch are `jax.ShapeDtypeStruct`s carrying
the shardings the loop would give them, so no parameter is materialised and no dataset built.
Per chip, the compiler states its arguments, outputs, outputs aliased to (donated) arguments,
temporaries, code and its peak footprint (`ChipMemory.total`); the step fits when the compiler
accepts it (it refuses a program that overflows HBM) and that total is within the chip's HBM.

Cost. XLA's cost analysis counts a while-loop body once, whatever its trip count (checked:
a scan of 10 matmuls reports the FLOPs of one), so in the compiled step the layer scan
(forward, and backward with the rematerialised forward) and the M-step accumulation loop
are each counted once. The step per chip is rebuilt from that count C(L) and five more
compiles: the optimizer update alone u(L') and the train step S(L') with L' ∈ {1, 2}
layers unrolled and not rematerialised, and the scanned step at another depth C(L₂). So the
estimate needs a layered model (`config.model.num_layers`, `scan_layers`, `remat`):

    u(L)  = u(1) + (L − 1)·(u(2) − u(1))            update, elementwise over parameters
    o     = 2·m(1) − m(2),  m = S − u               a micro-step outside the layers
    C(L)  = u(L) + o + b + L·q                      b: one layer as the scan runs it (remat
                                                    included); q: per-layer work inside the
                                                    accumulation loop but outside the layer
                                                    loop (e.g. adding each layer's gradient)
    q     = ((C(L) − u(L)) − (C(L₂) − u(L₂))) / (L − L₂)
    step  = u(L) + M·(o + L·(b + q))

(with the layers unrolled in the config, or one layer, C holds every layer: step = u + M·(C − u)).
M is `research.parallel.mesh.accumulation_steps` on the slice's mesh. Each cost has three parts,
all rebuilt so: FLOPs, HBM bytes (XLA's cost analysis) and the bytes each chip sends over ICI in
collectives (research/tools/hlo_collectives.py, from the compiled HLO). The roofline
(research/tools/roofline.py) sets compute, HBM and ICI times side by side:

    t = max(FLOPs / peak, HBM bytes / HBM bandwidth[, ICI bytes / ICI bandwidth]),
    MFU = model FLOPs / (t · peak)

with model FLOPs = the Task's `flops_per_token` × `tokens_per_step` (for LM training
`research.train.flops.flops_per_token`: 6·N + attention). One slice only: multi-slice layouts
(DCN between slices) are not compiled here.
"""

import contextlib
import dataclasses
import functools
import importlib.util
import math
import os
import re
import time

import jax
import ml_collections
from jax.experimental import topologies
from jax.experimental.compilation_cache import compilation_cache
from jax.sharding import Mesh

from pallas_kernels.compile_target import lowering_for
from research.config import unfrozen
from research.optim import make_optimizer
from research.parallel.mesh import accumulation_steps, batch_shards, make_mesh, mesh_axes, mesh_shape
from research.tools.hlo_collectives import collective_bytes
from research.tools.roofline import Roofline
from research.train.flops import peak_flops_of
from research.train.step import jit_train_step, step_layout
from research.train.task import Task, build_task
from research.train.trainers.lm import optimizer_update

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
    """What a Cloud slice name implies about its chips.

    `cores_per_name_unit`: TensorCores the name's number counts per chip (v4-8 is 4 chips).
    HBM capacity and bandwidth per chip from Google Cloud's TPU system-architecture pages
    (cloud.google.com/tpu/docs/v4, v5p, v5e, v6e); `ici_bytes_per_s` is half the "bidirectional
    inter-chip interconnect bandwidth per chip" of the same pages (v5p 1200 GB/s, v5e 400 GB/s,
    v6e 800 GB/s): what a chip can send while it receives as much. The v4 page states no per-chip
    ICI figure, so v4 has none (NaN: no ICI time is estimated).
    """

    prefix: str  # topology_name prefix for `get_topology_desc`
    torus_dims: int
    cores_per_name_unit: int
    chip_config_name: str
    hbm_bytes: int
    hbm_bytes_per_s: float
    max_chips: int
    ici_bytes_per_s: float


GENERATIONS = {
    "v4": TpuGeneration("v4", 3, 2, "megacore", 32 * GiB, 1200e9, 4096, math.nan),
    "v5p": TpuGeneration("v5p", 3, 2, "megacore", 95 * GiB, 2765e9, 4096, 600e9),
    "v5e": TpuGeneration("v5e", 2, 1, "default", 16 * GiB, 819e9, 256, 200e9),
    "v6e": TpuGeneration("v6e", 2, 1, "default", 32 * GiB, 1640e9, 256, 400e9),
}
SINGLE_HOST_CHIPS = 8  # v5e/v6e slices of up to 8 chips are one host; larger ones have 4 chips a host
LIBTPU_INSTALL = f'pip install "jax[tpu]=={jax.__version__}"'


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    """A Cloud TPU slice such as `v5p-128`: its chips, torus shape and per-host bounds."""

    name: str
    generation: TpuGeneration
    chips: int
    topology: tuple[int, ...]
    chips_per_host_bounds: tuple[int, int, int]

    @property
    def topology_name(self) -> str:
        return f"{self.generation.prefix}:{'x'.join(map(str, self.topology))}"


def torus_shape(chips: int, dims: int) -> tuple[int, ...]:
    """The slice's torus for a power-of-two chip count: double the smallest side until the
    product is `chips`, sides ascending with 1s last (4→2x2x1, 16→2x2x4, 128→4x4x8, 8→2x4)."""
    sides = [1] * dims
    while math.prod(sides) < chips:
        sides[sides.index(min(sides))] *= 2
    return tuple(sorted(sides, key=lambda side: (side == 1, side)))


def offered_chip_counts(generation: TpuGeneration) -> tuple[int, ...]:
    """Chip counts of the power-of-two slices Cloud offers: from 4 (2x2x1) for the 3-D tori,
    1, 4, 8, ... for v5e and v6e."""
    smallest = 4 if generation.torus_dims == 3 else 1
    counts = (2**k for k in range(generation.max_chips.bit_length()))
    return tuple(c for c in counts if smallest <= c <= generation.max_chips and c != 2)


def parse_slice(name: str) -> TpuSlice:
    """`v5p-128` → 64 chips in 4x4x4. For v4 and v5p the number counts TensorCores (two per
    chip), for v5e and v6e chips. Raises ValueError for names or sizes Cloud does not offer."""
    match = re.fullmatch(r"(v\d+[a-z]?)-(\d+)", name)
    if not match or match.group(1) not in GENERATIONS:
        raise ValueError(f"unknown TPU slice {name!r}: expected <generation>-<size> with generation one of "
                         f"{sorted(GENERATIONS)}, e.g. v5p-8, v5p-128, v5e-16, v4-8, v6e-8")
    generation = GENERATIONS[match.group(1)]
    chips, remainder = divmod(int(match.group(2)), generation.cores_per_name_unit)
    if remainder or chips not in offered_chip_counts(generation):
        unit = "TensorCores, 2 per chip" if generation.cores_per_name_unit == 2 else "chips"
        sizes = ", ".join(str(c * generation.cores_per_name_unit) for c in offered_chip_counts(generation))
        raise ValueError(f"unknown TPU slice {name!r}: the number counts {unit}; power-of-two {match.group(1)} "
                         f"sizes are {sizes}")
    topology = torus_shape(chips, generation.torus_dims)
    host = (2, 2, 1) if generation.torus_dims == 3 or chips > SINGLE_HOST_CHIPS else (*topology, 1)
    return TpuSlice(name, generation, chips, topology, host)


def slice_devices(tpu_slice: TpuSlice) -> list:
    """The TPU devices of `tpu_slice`, described by libtpu without any TPU attached."""
    if importlib.util.find_spec("libtpu") is None:
        raise RuntimeError(f"ahead-of-time TPU compilation needs libtpu; install it with: {LIBTPU_INSTALL}")
    # libtpu takes a machine-wide lock unless told otherwise; compiling needs no exclusive TPU.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    return list(topologies.get_topology_desc(
        platform="tpu", topology_name=tpu_slice.topology_name,
        chip_config_name=tpu_slice.generation.chip_config_name,
        chips_per_host_bounds=tpu_slice.chips_per_host_bounds, num_slices=1).devices)


@contextlib.contextmanager
def persistent_cache_off():
    """JAX's persistent compilation cache off while the block runs: an executable compiled for TPU chips
    that are not attached is written to it but can never be read back (each read fails with a warning).
    JAX decides once per process whether the cache is used, so the decision is reset on entry and exit."""
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)
        compilation_cache.reset_cache()


def mesh_sizes(config, tpu_slice: TpuSlice) -> dict:
    """`config.mesh` resolved for the slice's chips; a ValueError naming both if they disagree."""
    try:
        return dict(zip(mesh_axes(config.mesh), mesh_shape(config.mesh, tpu_slice.chips)))
    except ValueError as error:
        raise ValueError(f"{tpu_slice.name} has {tpu_slice.chips} chips: {error}") from None


def check_batch_divides(config, sizes: dict) -> None:
    """Every micro-batch's rows must split evenly over data × fsdp × expert, its sequence over context."""
    shards = batch_shards(sizes)
    micro_steps = accumulation_steps(config.train, sizes)
    micro_batch = config.train.batch_size // micro_steps
    if micro_batch % shards:
        raise ValueError(f"config field train.batch_size: {config.train.batch_size} sequences in "
                         f"{micro_steps} micro-batch(es) of {micro_batch} do not divide over "
                         f"data × fsdp × expert = {shards} batch shards")
    context = sizes.get("context", 1)
    if config.train.seq_len % context:
        raise ValueError(f"config field train.seq_len: {config.train.seq_len} does not divide over context = {context}")


def slice_task(config, devices) -> tuple[Task, Mesh]:
    """`config`'s Task (its trainer's, `config.trainer`) built over a mesh of `devices`."""
    try:
        mesh = make_mesh(config.mesh, devices)
    except NotImplementedError as error:  # mesh_utils cannot map the axes onto the torus
        raise ValueError(f"config.mesh {dict(config.mesh)} cannot be laid out on these TPU devices: {error}") from None
    return build_task(config, mesh), mesh


def lower_step(task: Task, mesh: Mesh):
    """The Task's train step, jitted as the loop jits it, lowered for the mesh's devices; a ValueError
    naming a state leaf the mesh does not split evenly (e.g. heads over tensor) before anything compiles."""
    layout = step_layout(task, mesh)
    with lowering_for("tpu"):  # the Pallas kernels (attention_impl "pallas" / "ring") as Mosaic kernels
        return jit_train_step(task, layout).lower(*layout.step_args())


def lower_train_step(config, devices):
    """The train step of `config`'s trainer, lowered for `devices`."""
    return lower_step(*slice_task(config, devices))


def lower_optimizer_update(config, devices):
    """The optimizer update alone (params, opt_state, grads ↦ new params, opt_state), lowered with the
    state's shardings: `config.optimizer`'s optimizer, as the trainers build it."""
    task, mesh = slice_task(config, devices)
    layout = step_layout(task, mesh)
    optimizer = make_optimizer(config.optimizer, config.train.steps)
    params, opt_state = layout.state_shardings.params, layout.state_shardings.opt_state
    jitted = jax.jit(functools.partial(optimizer_update, optimizer), in_shardings=(params, opt_state, params),
                     out_shardings=(params, opt_state), donate_argnums=(0, 1))
    return jitted.lower(layout.state.params, layout.state.opt_state, layout.state.params)


@dataclasses.dataclass(frozen=True)
class ChipMemory:
    """HBM bytes one chip needs, as the TPU compiler's buffer assignment states them.

    `total` is the compiler's peak: the footprint its out-of-memory check compares with HBM
    (checked: a program with 10 GiB of arguments and 10 GiB of outputs is refused on a
    16 GiB v5e for needing 20 GiB, and accepted when the argument is donated). `temporaries`
    adds up every temporary allocation, of which only some are live at the peak, so
    arguments + outputs − aliased + temporaries can exceed the total.
    """

    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    code: int
    peak: int

    @property
    def total(self) -> int:
        return self.peak


class OutOfMemory(Exception):
    """The TPU compiler refused the program: it needs more HBM than a chip has."""


@dataclasses.dataclass(frozen=True)
class StepCost:
    """FLOPs, HBM bytes accessed and bytes sent over ICI in collectives, by one chip."""

    flops: float
    bytes_accessed: float
    ici_bytes: float

    def __add__(self, other):
        return StepCost(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def __sub__(self, other):
        return self + other * -1

    def __mul__(self, factor: float):
        return StepCost(*(a * factor for a in dataclasses.astuple(self)))


def cost_of(compiled) -> StepCost:
    """One chip's compiled program: XLA's cost analysis and the collectives of its HLO (each
    while-loop body counted once)."""
    analysis = compiled.cost_analysis()
    sent = sum(collective_bytes(compiled.as_text()).values())
    return StepCost(float(analysis["flops"]), float(analysis["bytes accessed"]), sent)


def compile_program(lowered) -> tuple[ChipMemory, StepCost, float]:
    """(per-chip memory, XLA's cost count, compile seconds); OutOfMemory if it cannot fit."""
    start = time.perf_counter()
    try:
        with persistent_cache_off():
            compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        raise OutOfMemory(str(error).strip().splitlines()[0]) from None
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    memory = ChipMemory(stats.argument_size_in_bytes, stats.output_size_in_bytes, stats.alias_size_in_bytes,
                        stats.temp_size_in_bytes, stats.generated_code_size_in_bytes, stats.peak_memory_in_bytes)
    return memory, cost_of(compiled), seconds


LAYER_FIELDS = ("num_layers", "scan_layers", "remat")  # what the cost estimate varies


def check_layered(config) -> None:
    """The cost estimate compiles `config.model` at other depths, unrolled and not rematerialised."""
    missing = [name for name in LAYER_FIELDS if name not in config.model]
    if missing:
        raise ValueError(f"config.model has no {', '.join(missing)}: the cost estimate needs a layered model; "
                         "pass --no-cost (with_cost=False)")


def loop_free_variant(config, num_layers: int):
    """`config` with `num_layers` layers, unrolled and not rematerialised, so no layer hides in a loop."""
    variant = unfrozen(config)
    variant.model.num_layers = num_layers
    variant.model.scan_layers = False
    variant.model.remat = "none"
    return ml_collections.FrozenConfigDict(variant)


def with_layers(config, num_layers: int):
    """`config` with `num_layers` layers, otherwise unchanged (scanned layers stay scanned)."""
    variant = unfrozen(config)
    variant.model.num_layers = num_layers
    return ml_collections.FrozenConfigDict(variant)


def step_cost(config, devices, counted: StepCost) -> StepCost:
    """One chip's cost of the whole step from XLA's count `counted` of the compiled step, in
    which each loop body (layer scan, accumulation) appears once (see the module docstring)."""
    check_layered(config)

    def cost(lowered):
        with persistent_cache_off():
            return cost_of(lowered.compile())

    sizes = dict(zip(mesh_axes(config.mesh), mesh_shape(config.mesh, len(devices))))
    num_layers, micro_steps = config.model.num_layers, accumulation_steps(config.train, sizes)
    update = {n: cost(lower_optimizer_update(loop_free_variant(config, n), devices)) for n in (1, 2)}

    def update_at(layers):
        return update[1] + (update[2] - update[1]) * (layers - 1)

    if not config.model.scan_layers or num_layers == 1:  # no layer loop: `counted` holds every layer
        return update_at(num_layers) + (counted - update_at(num_layers)) * micro_steps
    micro = {n: cost(lower_train_step(loop_free_variant(config, n), devices)) - update[n] for n in (1, 2)}
    outside_layers = micro[1] * 2 - micro[2]
    other_depth = 3 if num_layers == 2 else 2
    counted_other = cost(lower_train_step(with_layers(config, other_depth), devices))
    per_layer_outside_loop = ((counted - update_at(num_layers)) - (counted_other - update_at(other_depth))) * (
        1 / (num_layers - other_depth))
    layer_body = counted - update_at(num_layers) - outside_layers - per_layer_outside_loop * num_layers
    micro_step = outside_layers + (layer_body + per_layer_outside_loop) * num_layers
    return update_at(num_layers) + micro_step * micro_steps


@dataclasses.dataclass(frozen=True)
class AotResult:
    """One config on one slice: per-chip memory (None when the compiler ran out), cost, roofline."""

    slice_name: str
    mesh: dict
    capacity: int
    compile_seconds: float
    memory: ChipMemory | None
    compiler_message: str
    counted_cost: StepCost | None
    cost: StepCost | None
    model_flops_per_chip: float
    peak_flops: float
    hbm_bytes_per_s: float
    ici_bytes_per_s: float
    micro_steps: int

    @property
    def fits(self) -> bool:
        return self.memory is not None and self.memory.total <= self.capacity

    @property
    def roofline(self) -> Roofline:
        """The step's compute, HBM and ICI times per chip (needs `cost`)."""
        return Roofline(self.cost.flops, self.cost.bytes_accessed, self.cost.ici_bytes, self.model_flops_per_chip,
                        self.peak_flops, self.hbm_bytes_per_s, self.ici_bytes_per_s)


def model_flops_per_chip(task: Task, chips: int) -> float:
    """Model FLOPs of one step per chip: the Task's FLOPs per token (for LM training 6·N_matmul +
    causal attention, no recomputation) × its tokens per step (NaN when each step counts its own)."""
    tokens = math.nan if task.tokens_per_step is None else task.tokens_per_step
    return task.flops_per_token * tokens / chips


def compile_for_slice(config, tpu_slice: TpuSlice, *, with_cost: bool = True) -> AotResult:
    """Compiles `config`'s train step for `tpu_slice`: per-chip memory, and the cost when it fits.
    Bad input (slice, mesh, batch, a state leaf that does not divide) raises ValueError before compiling."""
    sizes = mesh_sizes(config, tpu_slice)
    check_batch_divides(config, sizes)
    if with_cost:
        check_layered(config)
    devices = slice_devices(tpu_slice)
    task, mesh = slice_task(config, devices)
    try:
        memory, counted, seconds = compile_program(lower_step(task, mesh))
        message = ""
    except OutOfMemory as error:
        memory, counted, seconds, message = None, None, float("nan"), str(error)
    generation = tpu_slice.generation
    fits = memory is not None and memory.total <= generation.hbm_bytes
    return AotResult(
        slice_name=tpu_slice.name, mesh=sizes, capacity=generation.hbm_bytes, compile_seconds=seconds,
        memory=memory, compiler_message=message, counted_cost=counted,
        cost=step_cost(config, devices, counted) if with_cost and fits else None,
        model_flops_per_chip=model_flops_per_chip(task, tpu_slice.chips),
        peak_flops=peak_flops_of(devices[0]), hbm_bytes_per_s=generation.hbm_bytes_per_s,
        ici_bytes_per_s=generation.ici_bytes_per_s, micro_steps=accumulation_steps(config.train, sizes))
