"""Benchmark: the expert matmul of a mixture-of-experts layer, grouped (Pallas kernel, `jax.lax.ragged_dot`) or batched.

    python -m scripts.bench_grouped_matmul [--tokens 16384] [--dim 2048] [--hidden 1408]
        [--experts 8 64] [--top-k 2 6] [--repeats 20] [--out experiments/results/grouped_matmul_bench.md]

The T·k (token, choice) rows of one MoE layer, x [T·k, d], go through their experts' W [E, d, h]
(one projection of an expert SwiGLU). Four ways, each credited with the same F = 2·T·k·d·h FLOPs:
    dense      x W₀ — one [T·k, d] × [d, h] matmul: the speed of light for these FLOPs
    pallas     rows sorted by expert, pallas_kernels/grouped_matmul.py (Triton on GPU, Mosaic on TPU;
               the dropless path's default there); the goal is ≤ 1.3× dense
    ragged_dot rows sorted by expert, `jax.lax.ragged_dot(x, W, group_sizes)` (the dropless path on CPU)
    capacity   [E, C, d] × [E, d, h] batched matmul, C = ⌈1.25·T·k/E⌉ slots per expert (the capacity
               path at capacity factor 1.25; its extra 25% of padded slots is not credited)
Group sizes are drawn once from a multinomial over experts with a seeded uniform router, so every
expert has about T·k/E rows. The forward time is the median of `repeats` calls after a warm-up;
`forward+backward` differentiates in x and W (output cotangent all ones). A ragged_dot that runs as
E dense matmuls over all rows (with the other groups masked) would show ≈ E× the dense time: the
table tells whether this backend groups for real. Imports only jax, the kernel, scripts/hardware.py and
scripts/timing.py. On a CPU the kernel runs in the Pallas interpreter (slow; not a measurement).
"""

import argparse
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.grouped_matmul import grouped_matmul
from scripts.hardware import describe_hardware
from scripts.timing import median_seconds

CAPACITY_FACTOR = 1.25


def group_sizes(rows: int, experts: int, seed: int = 0) -> np.ndarray:
    """Rows per expert from a uniform router: a multinomial draw summing to `rows`."""
    return np.random.default_rng(seed).multinomial(rows, np.full(experts, 1.0 / experts)).astype(np.int32)


def programs(experts: int, rows: int):
    """name -> (forward(x, w, sizes), forward_backward(x, w, sizes)); x [rows, d], w [E, d, h]."""
    capacity = math.ceil(CAPACITY_FACTOR * rows / experts)

    def dense(x, w, sizes):
        return x @ w[0]

    def ragged(x, w, sizes):
        return jax.lax.ragged_dot(x, w, sizes)

    def kernel(x, w, sizes):
        return grouped_matmul(x, w, sizes)

    def batched(x, w, sizes):
        slots = jnp.pad(x, ((0, experts * capacity - rows), (0, 0))).reshape(experts, capacity, -1)
        return jnp.einsum("ecd,edh->ech", slots, w)

    def with_backward(forward):
        def forward_backward(x, w, sizes):
            out, vjp = jax.vjp(lambda x, w: forward(x, w, sizes), x, w)
            return vjp(jnp.ones_like(out))
        return forward_backward

    return {name: (jax.jit(f), jax.jit(with_backward(f)))
            for name, f in (("dense", dense), ("pallas", kernel), ("ragged_dot", ragged), ("capacity", batched))}


def measure(args) -> list[dict]:
    """One row per (experts, top_k, implementation)."""
    rows = []
    key_x, key_w = jax.random.split(jax.random.key(0))
    for experts, top_k in zip(args.experts, args.top_k):
        assignments = args.tokens * top_k
        x = jax.random.normal(key_x, (assignments, args.dim), jnp.bfloat16)
        w = (jax.random.normal(key_w, (experts, args.dim, args.hidden), jnp.float32)
             / math.sqrt(args.dim)).astype(jnp.bfloat16)
        sizes = jnp.asarray(group_sizes(assignments, experts))
        flops = 2.0 * assignments * args.dim * args.hidden
        for name, (forward, forward_backward) in programs(experts, assignments).items():
            fwd = median_seconds(forward, (x, w, sizes), args.repeats)
            fwd_bwd = median_seconds(forward_backward, (x, w, sizes), args.repeats)
            rows.append({"experts": experts, "top_k": top_k, "impl": name, "fwd": fwd, "fwd_bwd": fwd_bwd,
                         "fwd_tflops": flops / fwd / 1e12, "fwd_bwd_tflops": 3 * flops / fwd_bwd / 1e12})
            print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row: dict) -> str:
    return (f"| {row['experts']} | {row['top_k']} | {row['impl']} | {row['fwd'] * 1e3:.3f} | "
            f"{row['fwd_tflops']:.1f} | {row['fwd_bwd'] * 1e3:.3f} | {row['fwd_bwd_tflops']:.1f} |")


def report(rows: list[dict], args) -> str:
    command = "python -m scripts.bench_grouped_matmul " + " ".join(args.argv)
    lines = [
        "# Grouped matmul benchmark: the expert matmul of an MoE layer",
        "",
        f"Written by `{command.strip()}`. Hardware: **{describe_hardware()}**; jax {jax.__version__}.",
        "",
        (f"T = {args.tokens} tokens, d = {args.dim}, h = {args.hidden}, bfloat16, k rows per token. Every "
         "implementation is credited with F = 2·T·k·d·h FLOPs (forward) and 3F (forward+backward); median "
         f"of {args.repeats} calls after a warm-up. `dense` is one [T·k, d] × [d, h] matmul (the speed of "
         f"light for these FLOPs), `pallas` the grouped-matmul kernel (pallas_kernels/grouped_matmul.py), `capacity` a "
         f"batched matmul over ⌈{CAPACITY_FACTOR}·T·k/E⌉ slots per expert."),
        "",
        "| experts | top-k | implementation | forward (ms) | forward TFLOP/s | fwd+bwd (ms) | fwd+bwd TFLOP/s |",
        "|---|---|---|---|---|---|---|",
        *[format_row(row) for row in rows],
        "",
        "## Time relative to the dense matmul and to ragged_dot",
        "",
        ("| experts | top-k | implementation | forward / dense | fwd+bwd / dense | forward / ragged_dot "
         "| fwd+bwd / ragged_dot |"),
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        def same_shape(impl):
            return next(r for r in rows
                        if (r["experts"], r["top_k"], r["impl"]) == (row["experts"], row["top_k"], impl))
        dense, ragged = same_shape("dense"), same_shape("ragged_dot")
        if row["impl"] != "dense":
            lines.append(f"| {row['experts']} | {row['top_k']} | {row['impl']} | {row['fwd'] / dense['fwd']:.2f} | "
                         f"{row['fwd_bwd'] / dense['fwd_bwd']:.2f} | {row['fwd'] / ragged['fwd']:.2f} | "
                         f"{row['fwd_bwd'] / ragged['fwd_bwd']:.2f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=1408)
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--top-k", type=int, nargs="+", default=[2, 6])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default="experiments/results/grouped_matmul_bench.md")
    args = parser.parse_args(argv)
    if len(args.experts) != len(args.top_k):
        parser.error(f"--experts {args.experts} and --top-k {args.top_k} must pair up (same length)")
    for experts, top_k in zip(args.experts, args.top_k):
        if not 1 <= top_k <= experts:
            parser.error(f"--top-k {top_k} must be between 1 and --experts {experts}")
    for name in ("tokens", "dim", "hidden", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    rows = measure(args)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write(report(rows, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
