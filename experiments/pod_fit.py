"""The pod-fit table: the smallest v5p and v5e slices on which each model's train step fits.

    python -m experiments run pod_fit [--quick]

For LLaMA-2 7B, 13B and 70B, the Seed-Thinking MoE and Chameleon 7B and 34B (see MODELS),
the real train step (`research/train/trainers/lm.py`, AdamW, bf16 compute, full remat,
scanned layers, XLA attention) is compiled ahead of time for TPU slices by
`research/tools/aot.py`, at the paper's sequence length 4096 and global batch of
1024 sequences (4M tokens per step, LLaMA-2's batch).

Micro-batches: each batch shard (data × fsdp) takes one sequence per micro-step
(`train.micro_batch_per_device=1`, the full-size configs' default), the least activation memory
the step can have, and the step accumulates gradients over 1024 / shards micro-batches; the
optimizer sees the same 4M-token batch on every slice. "Smallest slice" is therefore smallest at
that micro-batch.

Search: slices ascend from the smallest whose HBM could hold 16 bytes per parameter (fp32
parameters, Adam's μ and ν and one fp32 gradient buffer), powers of two up to the largest
single slice; on each, the meshes of research/tools/aot_search.py are tried in order (pure FSDP,
the configs' default, then FSDP × tensor 2, 4, 8 where the heads divide); the first the TPU
compiler accepts within HBM is the row. The compiler refuses an overflowing program early, so
failed tries are cheap. Every compile's outcome is cached as JSON (keyed by config, overrides,
slice and jax/libtpu versions): a rerun recompiles nothing. Step time and MFU are a roofline
estimate with compute, HBM and ICI terms (research/tools/aot.py, roofline.py).

Beside the table, LLaMA-2 70B is compiled at MaxText's published v5p scale (MAXTEXT_70B: 512
chips, 4096 tokens, 2 sequences per chip for the same 4M-token batch) to set the estimate next
to the MFU MaxText measured there.

Every compile's outcome is cached in workdir/pod_fit_cache (the full run) or in the run's directory
(`--quick`: the tiny LLaMA of width 64 at 8 × 128 tokens on v5p, no MaxText compile, some
twenty CPU-seconds of compiling). Nothing here is random: the seed changes nothing. An uncached full run is
about a hundred TPU compiles of the full-size steps on a 2-core CPU, some two hours.
"""

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for TPU, run nothing

import jax  # noqa: E402

from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Claim, Experiment, Outcome, Verdict  # noqa: E402
from research import config as config_lib  # noqa: E402
from research.models import count_params  # noqa: E402
from research.parallel.mesh import batch_shards  # noqa: E402
from research.tools import aot, aot_search  # noqa: E402

# (label, config spec); a model whose config file does not exist yet is left out of the table.
MODELS = (
    ("LLaMA-2 7B", "configs/llama2.py:7b"),
    ("LLaMA-2 13B", "configs/llama2.py:13b"),
    ("LLaMA-2 70B", "configs/llama2.py:70b"),
    ("Seed-Thinking-v1.5 MoE", "configs/seed_thinking.py:full"),
    ("Chameleon 7B", "configs/chameleon.py:7b"),
    ("Chameleon 34B", "configs/chameleon.py:34b"),
)
GENERATIONS = ("v5p", "v5e")


@dataclasses.dataclass(frozen=True)
class Scale:
    """What one run compiles: the models (label, spec), the generations, the step's global batch (sequences)
    and sequence length, overrides of every model's shape, whether MaxText's 70B point is compiled and where
    the compile cache lives (None: in the run's directory)."""
    models: tuple
    generations: tuple
    global_batch: int
    seq_len: int
    model_overrides: tuple = ()
    with_maxtext: bool = True
    cache: Path | None = None


FULL = Scale(MODELS, GENERATIONS, global_batch=1024, seq_len=4096, cache=Path("workdir/pod_fit_cache"))
QUICK = Scale((("LLaMA tiny", "configs/llama2.py:tiny"),), ("v5p",), global_batch=8, seq_len=128,
              model_overrides=("model.dim=64", "model.num_layers=2", "model.hidden_dim=128", "model.vocab_size=512"),
              with_maxtext=False)
MAXTEXT_CHIPS = 512
STATE_BYTES_PER_PARAM = 16  # fp32 params + Adam μ, ν + one fp32 gradient: a floor, not an estimate
GIB = 2**30
# MaxText's docs/reference/models/tiering.md (v5p, Gold): Llama 2 70B, 512 chips, BF16, SL=4096: 65.4% MFU,
# ~692 tokens/s/device, measured. The same chips and batch here: v5p-1024, 2 sequences per chip, one micro-step.
MAXTEXT_70B = dict(spec="configs/llama2.py:70b", slice="v5p-1024", micro_batch_per_device=2, mfu=0.654,
                   tokens_per_chip_s=692)

# Published reference points (not computed here), quoted beside the rows.
REFERENCES = {
    ("LLaMA-2 7B", "v5p"): "MaxText configs/v5p/llama2_7b.sh: v5p-512, 4 seq/chip (4M tokens), remat 'minimal'",
    ("LLaMA-2 7B", "v5e"): "MaxText configs/v5e/llama2_7b.sh: v5e-256 slices, 4 seq/chip, remat 'save_qkv_proj'",
    ("LLaMA-2 13B", "v5e"): "MaxText configs/v5e/llama2_13b.sh: v5e-256 slices, 8 seq/chip, remat 'qkv_proj_offloaded'",
    ("LLaMA-2 70B", "v5p"): ("MaxText configs/v5p/llama2_70b.sh: v5p-512, 4 seq/chip (4M tokens); MaxText docs "
                             "(optimized models tiering): 65.4% MFU, ~692 tokens/s/chip measured"),
    ("LLaMA-2 70B", "v5e"): "MaxText configs/v5e/llama2_70b.sh: v5e-256 slices, 2 seq/chip, remat 'qkv_proj_offloaded'",
}
# LLaMA-2 paper (Touvron et al. 2023), Table 2: A100-80GB GPU-hours to pretrain on 2T tokens.
PAPER_GPU_HOURS = {"LLaMA-2 7B": 184_320, "LLaMA-2 13B": 368_640, "LLaMA-2 70B": 1_720_320}
PAPER_TOKENS = 2e12


EXPERIMENT = Experiment(
    name="pod_fit",
    title="Pod fit: the smallest TPU slices that hold LLaMA-2's train step",
    paper="LLaMA 2 (Touvron et al., 2023), beside MaxText's published v5p recipes", arxiv="2307.09288",
    reproduces="§2.2 and Table 2 (the 4M-token pretraining step and its throughput)",
    claims=(Claim("fit", f"LLaMA-2's 4M-token step (1024 × 4096, AdamW) fits every size on a v5p slice of at most "
                         f"{MAXTEXT_CHIPS} chips, MaxText's recipe scale"),
            Claim("maxtext_mfu", "MaxText's measured 65.4% MFU for LLaMA-2 70B on 512 v5p chips lies under this "
                                 "roofline estimate, an upper bound on speed")),
    full_scale="the real full-size steps compiled ahead of time for v5p and v5e slices up to the largest single "
               "slice: the full run is already at full scale",
    cpu_minutes=120,  # estimated for an uncached run; a cached rerun compiles nothing
    paper_numbers={"maxtext_mfu_with_ici": MAXTEXT_70B["mfu"]},
)


def overrides_for(mesh: dict, micro_batch_per_device: int = 1, scale: Scale = FULL) -> list[str]:
    return [*aot_search.Layout(mesh, micro_batch_per_device).overrides, f"train.batch_size={scale.global_batch}",
            f"train.seq_len={scale.seq_len}", *scale.model_overrides]


def result_from_json(payload: dict) -> aot.AotResult:
    def parsed(field, kind):
        return None if payload[field] is None else kind(**payload[field])

    return aot.AotResult(**{**payload, "memory": parsed("memory", aot.ChipMemory),
                            "counted_cost": parsed("counted_cost", aot.StepCost), "cost": parsed("cost", aot.StepCost)})


def cached(cache_dir: Path, key: dict, compute):
    """`compute()`'s JSON-able result, stored under a hash of `key`, computed only once."""
    versions = {"jax": jax.__version__, "libtpu": importlib.metadata.version("libtpu")}
    digest = hashlib.sha256(json.dumps({**key, **versions}, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir / f"{digest}.json"
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(value, indent=1))
    os.replace(path.with_suffix(".tmp"), path)
    return value


def compile_cached(cache_dir: Path, spec: str, tpu_slice: aot.TpuSlice, mesh: dict,
                   micro_batch_per_device: int = 1, scale: Scale = FULL) -> aot.AotResult:
    """Memory of the step on `tpu_slice` with `mesh`, and its cost when it fits."""
    overrides = overrides_for(mesh, micro_batch_per_device, scale)
    config = config_lib.load(spec, overrides)
    # "format" changes whenever the compiled step or the result's fields do (4: ICI bytes, micro_steps),
    # so outcomes cached from an older model are not reused.
    key = {"config": spec, "overrides": overrides, "slice": tpu_slice.name, "format": 4}
    memory = cached(cache_dir, {**key, "what": "memory"},
                    lambda: dataclasses.asdict(aot.compile_for_slice(config, tpu_slice, with_cost=False)))
    result = result_from_json(memory)
    if not result.fits:
        return result
    cost = cached(cache_dir, {**key, "what": "cost", "cost_model": 3}, lambda: dataclasses.asdict(
        aot.step_cost(config, aot.slice_devices(tpu_slice), result.counted_cost)))
    return dataclasses.replace(result, cost=aot.StepCost(**cost))


def smallest_fit(cache_dir: Path, spec: str, generation: str, log,
                 scale: Scale = FULL) -> tuple[aot.AotResult | None, list]:
    """(the first fitting result, every try as (slice, mesh, outcome)) for one model and generation."""
    config = config_lib.load(spec)
    floor_chips = STATE_BYTES_PER_PARAM * count_params(config.model)["total"] / aot.GENERATIONS[generation].hbm_bytes
    tries = []
    for tpu_slice in (s for s in aot_search.slices_of(generation) if s.chips >= floor_chips):
        meshes = aot_search.candidate_meshes(config, tpu_slice.chips)
        for mesh in (m for m in meshes if scale.global_batch % (m["fsdp"] * m["expert"]) == 0):
            start = time.perf_counter()
            try:
                result = compile_cached(cache_dir, spec, tpu_slice, mesh, scale=scale)
            except ValueError as error:  # e.g. a mesh that mesh_utils cannot lay onto the torus
                tries.append((tpu_slice.name, mesh, f"not compiled: {str(error).splitlines()[0]}"))
                log(f"{spec} {tpu_slice.name} fsdp={mesh['fsdp']} tensor={mesh['tensor']}: {tries[-1][2]}")
                continue
            outcome = (result.compiler_message if result.memory is None else
                       f"{'fits' if result.fits else 'does not fit'}: total {result.memory.total / GIB:.1f} GiB, "
                       f"compiled in {result.compile_seconds:.0f} s")
            log(f"{spec} {tpu_slice.name} fsdp={mesh['fsdp']} tensor={mesh['tensor']}: {outcome} "
                f"({time.perf_counter() - start:.0f} s with the cost compiles, 0 if cached)")
            tries.append((tpu_slice.name, mesh, outcome))
            if result.fits:
                return result, tries
    return None, tries


def paper_tokens_per_gpu_s(label: str) -> str:
    hours = PAPER_GPU_HOURS[label]
    return f"{PAPER_TOKENS / (hours * 3600):,.0f} tokens/s per A100 ({hours:,} GPU-hours for 2T tokens)"


def estimate_cells(result: aot.AotResult, scale: Scale = FULL) -> str:
    """Cells: ICI GB sent per chip, compute / HBM / ICI seconds (bound), est. MFU without / with ICI,
    est. tokens/s/chip with ICI."""
    roofline, chips = result.roofline, math.prod(result.mesh.values())
    times = " / ".join(f"{seconds:.1f}" for seconds in roofline.times.values())
    with_ici = roofline.seconds(with_ici=True)
    return (f"{result.cost.ici_bytes / 1e9:,.0f} | {times} ({roofline.bound}) | "
            f"{roofline.mfu(with_ici=False):.0%} / {roofline.mfu(with_ici=True):.0%} | "
            f"{scale.global_batch * scale.seq_len / chips / with_ici:,.0f}")


def row(label: str, generation: str, result: aot.AotResult | None, scale: Scale = FULL) -> str:
    reference = REFERENCES.get((label, generation), "")
    if result is None:
        return f"| {label} | {generation} | none up to the largest slice | | | | | | | | | | {reference} |"
    mesh, memory = result.mesh, result.memory
    chips = math.prod(mesh.values())
    return (f"| {label} | {generation} | {result.slice_name} ({chips}) | fsdp {mesh['fsdp']} × tensor {mesh['tensor']}"
            f" | {scale.global_batch // result.micro_steps // batch_shards(mesh)} × {result.micro_steps} | "
            f"{memory.arguments / GIB:.1f} / {memory.total / GIB:.1f} of {result.capacity / GIB:.0f} | "
            f"{result.compile_seconds:.0f} | {result.cost.flops / 1e15:.2f} / {result.model_flops_per_chip / 1e15:.2f} | "
            f"{estimate_cells(result, scale)} | {reference} |")


def maxtext_lines(result: aot.AotResult) -> list[str]:
    """LLaMA-2 70B at MaxText's published v5p scale beside MaxText's measured MFU."""
    roofline = result.roofline
    return [
        "## Beside MaxText's measured LLaMA-2 70B on v5p",
        "",
        "MaxText's optimized-models tiering (docs/reference/models/tiering.md, v5p Gold) reports Llama 2 70B on "
        f"512 v5p chips, BF16, sequence length 4096 at {MAXTEXT_70B['mfu']:.1%} MFU and about "
        f"{MAXTEXT_70B['tokens_per_chip_s']} tokens/s per chip, measured (flash attention, its own remat "
        "policy). The same model, chips and 4M-token batch compiled here "
        f"({MAXTEXT_70B['slice']}, the default pure-FSDP layout, {MAXTEXT_70B['micro_batch_per_device']} sequences "
        "per chip in one micro-step, full rematerialisation, XLA attention):",
        "",
        "| | MFU | tokens/s/chip |",
        "|---|---|---|",
        f"| MaxText, measured | {MAXTEXT_70B['mfu']:.1%} | {MAXTEXT_70B['tokens_per_chip_s']:,} |",
        *(f"| this estimate, {label} | {roofline.mfu(with_ici=with_ici):.1%} | "
          f"{FULL.global_batch * FULL.seq_len / MAXTEXT_CHIPS / roofline.seconds(with_ici=with_ici):,.0f} |"
          for label, with_ici in (("without ICI", False), ("with ICI", True))),
        "",
        f"Per chip per step: {result.cost.flops / 1e15:.2f} PFLOPs compiled ({result.model_flops_per_chip / 1e15:.2f} "
        f"model), {result.cost.bytes_accessed / 1e12:.2f} TB of HBM traffic, {result.cost.ici_bytes / 1e9:,.0f} GB sent "
        "over ICI; compute / HBM / ICI " + " / ".join(f"{t:.2f}" for t in roofline.times.values())
        + f" s, peak HBM {result.memory.total / GIB:.1f} GiB, compiled in {result.compile_seconds:.0f} s.",
        "",
    ]


def markdown_body(rows: list[str], tries: dict, maxtext: list[str], scale: Scale = FULL) -> str:
    lines = [
        "research/tools/aot.py compiles the real train step ahead of time with jax "
        f"{jax.__version__} and libtpu {importlib.metadata.version('libtpu')} on a CPU-only machine; compile times "
        "are of the full step on that machine.",
        "",
        f"Step: {scale.global_batch} sequences × {scale.seq_len} tokens"
        + (" = 4M tokens (LLaMA-2's batch and context)" if scale == FULL else " (the quick run's tiny step)")
        + ", AdamW, fp32 "
        "parameters and optimizer state, bf16 compute, full rematerialisation, XLA attention (the scores are "
        "materialised; no flash kernel in the step yet). Micro-batch: one sequence per batch shard (data × fsdp) "
        "per micro-step, accumulated to the whole batch — the least activation memory, so each slice is the "
        "smallest at which the 4M-token step runs at all; larger micro-batches would need more HBM and buy "
        "fewer weight gathers.",
        "",
        "Memory is the TPU compiler's own per-chip accounting (arguments = fp32 parameters + Adam μ, ν + the "
        "batch rows; total = the compiler's peak footprint, which its out-of-memory check compares with HBM; "
        "the step fits when the compiler accepts it and the total is within the chip's HBM). FLOPs and bytes are "
        "per chip per step: XLA's count of the compiled step, in which each loop body (layer scan, accumulation) "
        "appears once, scaled to every layer and micro-batch with five more compiles (research/tools/aot.py); "
        "ICI bytes are what each chip sends in the step's collectives (all-gather, reduce-scatter, all-reduce, "
        "all-to-all, collective-permute, ring counts from the compiled HLO: research/tools/hlo_collectives.py), "
        "scaled the same way. **Step times and MFU are roofline estimates, not measurements** "
        "(research/tools/roofline.py): compute = FLOPs / peak, HBM = bytes / HBM bandwidth, ICI = bytes sent / "
        "ICI bandwidth out of the chip, with v5p at 459 TFLOP/s bf16, 2765 GB/s HBM and 600 GB/s ICI (half the "
        "1200 GB/s bidirectional), v5e at 197 TFLOP/s, 819 GB/s and 200 GB/s; the bound is the largest term. "
        "MFU = model FLOPs (6·N + causal attention, no recomputation) / (t · peak) with t = max(compute, HBM) "
        "without ICI and max(compute, HBM, ICI) with it: the collectives assumed overlapped with compute, an "
        "upper bound on speed (a gather the next matmul waits for adds to the step).",
        "",
        "| model | TPU | smallest slice (chips) | mesh | micro-batch (seq/shard × steps) | HBM/chip GiB "
        "(arguments / total of capacity) | compile s | PFLOPs/chip/step (compiled / model) | ICI GB/chip/step "
        "| est. s compute / HBM / ICI (bound) | est. MFU without / with ICI | est. tokens/s/chip (with ICI) "
        "| published reference |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "LLaMA-2 paper reference (Table 2, A100-80GB GPU-hours for 2T tokens, i.e. measured throughput): "
        + "; ".join(f"{label}: {paper_tokens_per_gpu_s(label)}" for label in PAPER_GPU_HOURS) + ".",
        "",
        *maxtext,
        "## What limits the fit",
        "",
        "- Activations: the model pins its activation shardings (batch over the data axes, width replicated; "
        "research/parallel/mesh.constrain), and make_mesh splits physical torus axes when a mesh axis is no "
        "product of torus sides, so pure FSDP and fsdp × tensor meshes on any slice are both tried for real.",
        "- Attention: the XLA path materialises float32 scores [heads, 4096, 4096] per sequence and moves them "
        "through HBM in the forward pass, its recomputation and the backward pass. With "
        "`model.attention_impl=pallas` the step runs the project's flash kernels instead (Mosaic kernels, per "
        "device); XLA does not count a custom kernel's FLOPs, so this table's costs need XLA attention.",
        "",
        "## Every compile tried",
        "",
        "| model | slice | mesh | outcome |",
        "|---|---|---|---|",
    ]
    for (label, _), model_tries in tries.items():
        lines += [f"| {label} | {name} | fsdp {mesh['fsdp']} × tensor {mesh['tensor']} | {outcome} |"
                  for name, mesh, outcome in model_tries]
    return "\n".join(lines)


def maxtext_result(cache_dir: Path) -> aot.AotResult:
    """LLaMA-2 70B at MaxText's published v5p scale (MAXTEXT_70B), with its cost."""
    tpu_slice = aot.parse_slice(MAXTEXT_70B["slice"])
    mesh = next(aot_search.candidate_meshes(config_lib.load(MAXTEXT_70B["spec"]), tpu_slice.chips))  # pure FSDP
    return compile_cached(cache_dir, MAXTEXT_70B["spec"], tpu_slice, mesh, MAXTEXT_70B["micro_batch_per_device"])


def slug(label: str) -> str:
    """`LLaMA-2 7B` → `llama_2_7b`: a model's label as part of a headline name."""
    return "_".join("".join(c if c.isalnum() else " " for c in label.lower()).split())


def run(out_dir: Path, *, quick: bool, seed: int) -> Outcome:
    """The smallest fit of every model on every generation, and MaxText's 70B point (full run): the table,
    each fit's chips (NaN: none up to the largest slice) and the MaxText point's estimated MFU."""
    scale = QUICK if quick else FULL
    cache = scale.cache or out_dir / "cache"
    rows, tries, fits = [], {}, {}
    for label, spec in scale.models:
        if not Path(spec.partition(":")[0]).exists():
            continue
        for generation in scale.generations:
            result, tries[label, generation] = smallest_fit(cache, spec, generation,
                                                            lambda line: print(line, flush=True), scale)
            rows.append(row(label, generation, result, scale))
            fits[label, generation] = result
    maxtext = maxtext_result(cache) if scale.with_maxtext else None
    chips = {f"chips_{slug(label)}_{generation}": math.prod(result.mesh.values()) if result else math.nan
             for (label, generation), result in fits.items()}
    llama_v5p = [result for (label, generation), result in fits.items() if label.startswith("LLaMA")
                 and generation == "v5p"]
    headline = {**chips, "llama_v5p_fit_share": sum(r is not None for r in llama_v5p) / len(llama_v5p),
                "llama_v5p_largest_chips": max(math.prod(r.mesh.values()) if r else math.inf for r in llama_v5p)}
    if maxtext is not None:
        headline.update({f"maxtext_mfu_{name}": maxtext.roofline.mfu(with_ici=with_ici)
                         for name, with_ici in (("without_ici", False), ("with_ici", True))})
    table = [{"model": label, "generation": generation, "slice": result.slice_name if result else "",
              "chips": math.prod(result.mesh.values()) if result else math.nan,
              "hbm_total_gib": result.memory.total / GIB if result else math.nan,
              "mfu_with_ici": result.roofline.mfu(with_ici=True) if result else math.nan}
             for (label, generation), result in fits.items()]
    return Outcome(headline=headline, rows=table,
                   markdown=markdown_body(rows, tries, maxtext_lines(maxtext) if maxtext else [], scale))


def judge(headline: dict) -> dict:
    """Fit: every LLaMA model fits on v5p within MAXTEXT_CHIPS chips (holds), some do (in part), none.
    MaxText MFU: the estimate with ICI above MaxText's measured MFU (holds), only the one without ICI
    (in part), neither; not judged where the run compiled no MaxText point (quick)."""
    share, largest = headline["llama_v5p_fit_share"].mean, headline["llama_v5p_largest_chips"].mean
    fit = HOLDS if share == 1 and largest <= MAXTEXT_CHIPS else HOLDS_IN_PART if share > 0 else DOES_NOT_HOLD
    fit_verdict = Verdict(fit, f"{share:.0%} of the LLaMA models fit on v5p; the largest needs {largest:g} chips "
                               f"(MaxText's recipes: {MAXTEXT_CHIPS})")
    if "maxtext_mfu_with_ici" not in headline:
        return {"fit": fit_verdict, "maxtext_mfu": Verdict(DOES_NOT_HOLD, "not compiled: the quick run has no "
                                                                          "LLaMA-2 70B point")}
    with_ici, without_ici = headline["maxtext_mfu_with_ici"].mean, headline["maxtext_mfu_without_ici"].mean
    measured = MAXTEXT_70B["mfu"]
    status = HOLDS if with_ici >= measured else HOLDS_IN_PART if without_ici >= measured else DOES_NOT_HOLD
    return {"fit": fit_verdict,
            "maxtext_mfu": Verdict(status, f"estimate {with_ici:.1%} with ICI, {without_ici:.1%} without, against "
                                           f"MaxText's measured {measured:.1%}")}
