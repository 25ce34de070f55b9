"""Compile a config's real train step (`config.trainer`'s) ahead of time for a TPU slice, on a CPU.

    python -m scripts.aot_compile --config configs/llama2.py:70b --topology v5p-128 \
        [--config.mesh.fsdp=64 --config.train.micro_batch_per_device=2 ...] [--no-cost] [--search]

Slice names as Google Cloud spells them: for v4 and v5p the number counts TensorCores (two
per chip: v5p-8 is 4 chips), for v5e and v6e it counts chips. Prints per-chip HBM
(arguments, outputs, temporaries, total against the chip's capacity), the compile time, and
the step's FLOPs, HBM bytes and ICI bytes per chip with a roofline estimate: compute, HBM and
ICI times side by side, the bound that wins, and MFU with and without the ICI term
(research/tools/aot.py and roofline.py say how; the estimate needs a layered model, else pass
--no-cost). `--search` compiles the candidate layouts of research/tools/aot_search.py (meshes
fsdp × tensor, micro-batches per batch shard), reports the best that fits and prints it as the
overrides to paste.
Exit status: 0 when the step fits, 1 when it does not, 2 for bad input (unknown slice, a
mesh that does not match the chips, a batch or a parameter that does not divide over the
mesh, --no-cost missing for a model without layers), reported before anything compiles.
Needs libtpu: pip install "jax[tpu]==<the installed jax version>".
"""

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for TPU, run nothing: no TPU backend wanted

from research import config as config_lib
from research.tools import aot, aot_search

GIB = 2**30


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file and argument, e.g. configs/llama2.py:7b")
    parser.add_argument("--topology", required=True, help="Cloud TPU slice, e.g. v5p-8, v5p-128, v5e-16, v4-8")
    parser.add_argument("--no-cost", action="store_true", help="skip the five extra compiles of the cost estimate")
    parser.add_argument("--search", action="store_true",
                        help="try the candidate meshes and micro-batches; print the best fitting layout's overrides")
    args, rest = parser.parse_known_args(argv)
    unknown = [item for item in rest if not item.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognised argument {unknown[0]!r}; overrides look like --config.mesh.fsdp=8")
    return args, rest


def in_units(nbytes: float) -> str:
    """Bytes in GiB, or MiB below a tenth of a GiB."""
    return f"{nbytes / GIB:9.2f} GiB" if abs(nbytes) >= GIB / 10 else f"{nbytes / 2**20:9.2f} MiB"


def memory_lines(memory: aot.ChipMemory, capacity: int) -> list[str]:
    rows = [("arguments", memory.arguments), ("outputs", memory.outputs), ("aliased (donated)", -memory.aliased),
            ("temporaries", memory.temporaries), ("generated code", memory.code)]
    lines = ["per-chip HBM"] + [f"  {name:<22}{in_units(value)}" for name, value in rows]
    lines.append(f"  {'total (compiler peak)':<22}{in_units(memory.total)}  of {capacity / GIB:.2f} GiB "
                 f"({memory.total / capacity:.1%})")
    lines.append("  (the rows are the compiler's buffer totals; the peak is its footprint at the worst moment,"
                 " what must fit)")
    return lines


def cost_lines(result: aot.AotResult, tokens_per_step: int, chips: int) -> list[str]:
    cost, roofline = result.cost, result.roofline
    times = "  ".join(f"{name} {seconds:.3g} s" for name, seconds in roofline.times.items())
    lines = [
        f"per chip per step: {cost.flops:.3e} FLOPs, {cost.bytes_accessed:.3e} HBM bytes, {cost.ici_bytes:.3e} "
        f"bytes sent over ICI (model FLOPs {result.model_flops_per_chip:.3e})",
        f"roofline at {result.peak_flops / 1e12:.0f} TFLOP/s, {result.hbm_bytes_per_s / 1e9:.0f} GB/s HBM, "
        f"{result.ici_bytes_per_s / 1e9:.0f} GB/s ICI out per chip: {times}; {roofline.bound}-bound",
    ]
    for with_ici, label in ((False, "without ICI"), (True, "with ICI")):
        seconds = roofline.seconds(with_ici=with_ici)
        lines.append(f"  {label:<12} {seconds:.3g} s per step, MFU {roofline.mfu(with_ici=with_ici):.1%}, "
                     f"{tokens_per_step / chips / seconds:,.0f} tokens/s per chip")
    return lines


def report(spec: str, config, tpu_slice: aot.TpuSlice, result: aot.AotResult) -> str:
    mesh = " ".join(f"{axis}={size}" for axis, size in result.mesh.items())
    train = config.train
    lines = [f"{spec} on {tpu_slice.name}: {tpu_slice.chips} chips ({tpu_slice.topology_name}), mesh {mesh}",
             f"step: {train.batch_size} sequences x {train.seq_len} tokens in {result.micro_steps} "
             f"micro-batch(es)"]
    if result.memory is None:
        return "\n".join(lines + [f"the TPU compiler ran out of memory: {result.compiler_message}"])
    lines += memory_lines(result.memory, result.capacity)
    lines.append(f"compile time: {result.compile_seconds:.1f} s")
    if result.cost is not None:
        lines += cost_lines(result, train.batch_size * train.seq_len, tpu_slice.chips)
    return "\n".join(lines)


def searched(config, tpu_slice: aot.TpuSlice, with_cost: bool) -> tuple:
    """(the best fitting layout's config and result, or (config, the last refusal) when none fits)."""
    best, trials = aot_search.search(config, tpu_slice, with_cost=with_cost, log=lambda line: print(line, flush=True))
    if best is None:
        refused = [trial.result for trial in trials if trial.result is not None]
        if not refused:
            raise ValueError(f"no candidate layout compiles on {tpu_slice.name}: "
                             + "; ".join(trial.outcome for trial in trials))
        return config, refused[-1]
    print(f"best layout: {best.layout.describe()}; use it with:")
    print(" ".join(f"--config.{override}" for override in best.layout.overrides))
    return aot_search.with_layout(config, best.layout), best.result


def main(argv=None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = config_lib.load(args.config, overrides)
        tpu_slice = aot.parse_slice(args.topology)
        if args.search:
            config, result = searched(config, tpu_slice, with_cost=not args.no_cost)
        else:
            result = aot.compile_for_slice(config, tpu_slice, with_cost=not args.no_cost)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report(args.config, config, tpu_slice, result))
    if not result.fits:
        needed = "more HBM than the chip has" if result.memory is None else f"{result.memory.total / GIB:.2f} GiB"
        print(f"DOES NOT FIT: the step needs {needed} per chip; a {tpu_slice.name} chip has "
              f"{result.capacity / GIB:.0f} GiB of HBM", file=sys.stderr)
        return 1
    print(f"fits on {tpu_slice.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
