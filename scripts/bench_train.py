"""Training throughput beside PyTorch: tokens/s of one step (fwd + bwd + clipping + AdamW), same run.

    python -m scripts.bench_train [--repeats 5] [--steps 2] [--batch 8] [--seq 256] [--shape NAME ...]
                                  [--override model.dim=64 ...] [--peak-size 2048]

For each shape of scripts/bench_shapes.py: the project's jitted train step
(`research.train.trainers.lm.make_train_step`, the state donated, as the loop runs it) and the
PyTorch + transformers reference (scripts/torch_reference.py) on the same random batch shape.
The two take turns, `--steps` steps per turn, and each keeps its best turn of `--repeats`, so a
change of load slows both alike; the ratio is project tokens/s ÷ PyTorch tokens/s of this run.
MFU = model FLOPs/s (research/train/flops.py) ÷ the float32 matmul peak measured in the same run
(scripts/hardware.py). `/proc/loadavg` is printed before and after.
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import count_params, make_model
from research.optim import make_optimizer, make_schedule
from research.train.flops import flops_per_token
from research.train.state import TrainState
from research.train.trainers.lm import make_train_step
from scripts import torch_reference
from scripts.bench_shapes import SHAPES, shape_config
from scripts.hardware import (PEAK_MATMUL_REPEATS, PEAK_MATMUL_SIZE, describe_hardware, load_average,
                              matmul_peak_flops)
from scripts.timing import interleaved_best_seconds


def random_batch(batch: int, seq: int, vocab: int, key):
    """A batch of the LM trainer's fields over uniformly random tokens, every token trained."""
    tokens = jax.random.randint(key, (batch, seq + 1), 0, vocab, jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "positions": positions,
            "segment_ids": jnp.ones((batch, seq), jnp.int32), "weights": jnp.ones((batch, seq), jnp.float32)}


def project_steps(config, batch: int, seq: int, steps: int):
    """`run()`: `steps` train steps of the project on one random batch, the state carried along."""
    model = make_model(config.model)
    optimizer = make_optimizer(config.optimizer, 1000)
    step_fn = jax.jit(make_train_step(model, optimizer, make_schedule(config.optimizer, 1000), 1), donate_argnums=0)
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, seq), jnp.int32))["params"])
    state = [TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))]
    data = random_batch(batch, seq, config.model.vocab_size, jax.random.key(1))
    step_rng = jax.random.key(2)

    def run():
        for _ in range(steps):
            state[0], metrics = step_fn(state[0], data, step_rng)
        return metrics

    return run


def reference_steps(config, batch: int, seq: int, steps: int):
    """`run()`: `steps` PyTorch training steps of the same shape."""
    step = torch_reference.train_step_runner(config.model, batch, seq)

    def run():
        for _ in range(steps):
            step()

    return run


def model_flops_per_step(config, batch: int, seq: int) -> float:
    """Training FLOPs of one step: batch·seq·F (research/train/flops.py), the input embedding not counted."""
    matmul_params = count_params(config.model)["active"] - config.model.vocab_size * config.model.dim
    return batch * seq * flops_per_token(config.model, seq, matmul_params)


def measure(config, *, batch: int, seq: int, steps: int, repeats: int) -> dict:
    """Seconds per step of the project and of PyTorch, best turn of `repeats`, turns interleaved."""
    best = interleaved_best_seconds({"project": project_steps(config, batch, seq, steps),
                                     "pytorch": reference_steps(config, batch, seq, steps)}, repeats)
    return {name: seconds / steps for name, seconds in best.items()}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="turns of each side; the best one counts")
    parser.add_argument("--steps", type=int, default=2, help="train steps per turn")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES), help="default: every shape")
    parser.add_argument("--override", nargs="*", default=[], help="config overrides applied to every shape")
    parser.add_argument("--peak-size", type=int, default=PEAK_MATMUL_SIZE, help="side of the peak-probe matmuls")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Prints one line per shape and returns {shape: {"project", "pytorch": tokens/s, "ratio", "mfu"}}."""
    args = parse_args(argv)
    print(f"{describe_hardware()}; {torch_reference.versions()}", flush=True)
    print(f"load before: {load_average()}", flush=True)
    peak = matmul_peak_flops(args.peak_size)
    results = {}
    for name in args.shape or SHAPES:
        config = shape_config(name, args.override)
        seconds = measure(config, batch=args.batch, seq=args.seq, steps=args.steps, repeats=args.repeats)
        tokens = args.batch * args.seq
        flops = model_flops_per_step(config, args.batch, args.seq)
        results[name] = {"project": tokens / seconds["project"], "pytorch": tokens / seconds["pytorch"],
                         "ratio": seconds["pytorch"] / seconds["project"],
                         "mfu": {side: flops / s for side, s in seconds.items()}}
        print(f"{name:24s} project {results[name]['project']:8.0f} tok/s  PyTorch {results[name]['pytorch']:8.0f} "
              f"tok/s  ratio {results[name]['ratio']:.2f}x", flush=True)
    peak = max(peak, matmul_peak_flops(args.peak_size))
    print(f"matmul peak {peak / 1e9:.1f} GFLOP/s: the best of {PEAK_MATMUL_REPEATS} jitted float32 "
          f"{args.peak_size}² matmuls, at the start and at the end of the run, the higher kept")
    for name, result in results.items():
        result["mfu"] = {side: rate / peak for side, rate in result["mfu"].items()}
        print(f"{name:24s} MFU project {result['mfu']['project']:.1%}  PyTorch {result['mfu']['pytorch']:.1%}")
    print(f"load after: {load_average()}", flush=True)
    return results


if __name__ == "__main__":
    main()
