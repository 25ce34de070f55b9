"""Mixture-of-experts throughput: tokens/s of the tiny MoE against the dense tiny LLaMA at equal activated size.

    python -m scripts.bench_moe [--steps 5] [--batch 8] [--seq 256] [--out experiments/results/moe_bench.md]

Three models with the same attention and the same activated FFN width (688): the dense
`configs/llama2.py:tiny`, and `configs/seed_thinking.py:tiny` (8 experts of width 344, top-2) with
the dropless dispatch (sort + `jax.lax.ragged_dot`) and with the capacity dispatch (one-hot
dispatch/combine einsums, capacity factor 1.25). For each, the mean time of `--steps` jitted
training steps (forward + backward + AdamW: the trainer's own step, timed by scripts/bench_train.py)
and of `--steps` forward passes, on one batch of random tokens, after a compiling call. Writes the
table and the MoE/dense ratios to `--out`.
"""

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from research import config as config_lib
from research.models import count_params, make_model
from research.models.moe import MOE_COLLECTION
from scripts.bench_train import project_steps, random_batch
from scripts.hardware import describe_hardware
from scripts.timing import interleaved_best_seconds

DENSE = "dense"
SPECS = {
    DENSE: "configs/llama2.py:tiny",
    "moe dropless": "configs/seed_thinking.py:tiny,dispatch=dropless",
    "moe capacity": "configs/seed_thinking.py:tiny,dispatch=capacity",
}


def load_configs(overrides: dict[str, list[str]] | None = None) -> dict:
    """{name: config} of SPECS, each with its `overrides` (e.g. smaller shapes for a test)."""
    overrides = overrides or {}
    return {name: config_lib.load(spec, overrides.get(name, [])) for name, spec in SPECS.items()}


def measure_train(config, steps: int, batch: int, seq: int) -> dict:
    """Tokens/s and ms of the trainer's jitted step (forward + backward + AdamW, as scripts/bench_train.py)."""
    seconds = interleaved_best_seconds({"train": project_steps(config, batch, seq, steps)}, repeats=1)["train"] / steps
    return {"tokens_per_s": batch * seq / seconds, "step_ms": 1e3 * seconds}


def measure_forward(config, steps: int, batch: int, seq: int) -> dict:
    """Tokens/s and ms of the jitted forward pass (logits and the sown MoE statistics)."""
    model = make_model(config.model)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, seq), jnp.int32))["params"]
    data = random_batch(batch, seq, config.model.vocab_size, jax.random.key(1))
    forward = jax.jit(lambda p, b: model.apply({"params": p}, b["inputs"], positions=b["positions"],
                                               segment_ids=b["segment_ids"], mutable=[MOE_COLLECTION]))
    jax.block_until_ready(forward(params, data))  # compile
    start = time.perf_counter()
    for _ in range(steps):
        out = forward(params, data)
    jax.block_until_ready(out)
    seconds = (time.perf_counter() - start) / steps
    return {"tokens_per_s": batch * seq / seconds, "step_ms": 1e3 * seconds}


def benchmark(configs: dict, steps: int, batch: int, seq: int) -> dict[str, dict]:
    """{name: {"params", "train", "forward"}} for each config."""
    rows = {}
    for name, config in configs.items():
        train = measure_train(config, steps, batch, seq)
        forward = measure_forward(config, steps, batch, seq)
        rows[name] = {"params": count_params(config.model), "train": train, "forward": forward}
        print(f"{name:14s} train {train['tokens_per_s']:8.0f} tok/s ({train['step_ms']:7.1f} ms)   "
              f"forward {forward['tokens_per_s']:8.0f} tok/s ({forward['step_ms']:7.1f} ms)", flush=True)
    return rows


def report(rows: dict[str, dict], command: str, args) -> str:
    """The markdown: hardware, command, the table, MoE/dense ratios."""
    dense = rows[DENSE]
    lines = [
        "# MoE benchmark: tokens/s of the tiny MoE against the dense tiny LLaMA", "",
        f"Written by `{command}`. Hardware: **{describe_hardware()}**; jax {jax.__version__}.", "",
        f"Batch {args.batch} × {args.seq} tokens of random ids; mean of {args.steps} calls after a compiling one. "
        "Train = the trainer's jitted step (forward + backward + AdamW, as scripts/bench_train.py); forward = "
        "the model's logits and sown MoE statistics. Random tokens keep the routing of the freshly "
        "initialised router near uniform. The machine may be shared with other processes: timings are noisy, "
        "take ratios within ~20% as equal.", "",
        "Where the MoE's time goes on XLA:CPU (from the compiled HLO): `jax.lax.ragged_dot` of the dropless "
        "path is lowered to one dense matmul over all E experts' weights with the rows of the other "
        "experts masked to zero, E× the FLOPs of the expert matmuls; the capacity path computes "
        "E·C = 1.25·T·k expert rows but pays the one-hot dispatch and combine einsums, "
        "O(T·E·C·d) with C = 1.25·G·k/E per capacity group of G tokens (model.moe.capacity_group_size), "
        "so O(T·G·d).", "",
        "| model | total params | active params | train tok/s | train ms/step | forward tok/s | forward ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['params']['total']:,} | {row['params']['active']:,} | "
                     f"{row['train']['tokens_per_s']:.0f} | {row['train']['step_ms']:.1f} | "
                     f"{row['forward']['tokens_per_s']:.0f} | {row['forward']['step_ms']:.1f} |")
    lines += ["", "## MoE / dense (tokens/s; < 1: the MoE is slower)", "",
              "| model | train | forward |", "|---|---|---|"]
    for name, row in rows.items():
        if name != DENSE:
            lines.append(f"| {name} | {ratio(row, dense, 'train'):.2f} | {ratio(row, dense, 'forward'):.2f} |")
    return "\n".join(lines) + "\n"


def ratio(row: dict, dense: dict, key: str) -> float:
    return row[key]["tokens_per_s"] / dense[key]["tokens_per_s"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed calls of each program")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/moe_bench.md"))
    return parser.parse_args(argv)


def main(argv=None, configs: dict | None = None) -> dict[str, dict]:
    """Measures `configs` (default: SPECS as they are) and writes the report; returns the rows."""
    args = parse_args(argv)
    print(f"device: {describe_hardware()}")
    rows = benchmark(configs or load_configs(), args.steps, args.batch, args.seq)
    command = " ".join(["python -m scripts.bench_moe", *(sys.argv[1:] if argv is None else argv)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(rows, command, args))
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
