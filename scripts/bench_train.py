"""Training throughput: tokens/s and MFU of the jitted train step (fwd + bwd + AdamW).

    python -m scripts.bench_train [--steps 20] [--steps-100m 3] [--batch 8] [--seq 256]

Batches of random tokens, batch 8 x 256 tokens; the step is the trainer's own
(`research.train.trainers.lm.make_train_step`). Prints one line per shape next to
PyTorch 2.13 CPU's figure on the same shape.
"""

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from research import config as config_lib
from research.models import count_params, make_model
from research.optim import make_optimizer, make_schedule
from research.train.flops import flops_per_token, total_peak_flops
from research.train.state import TrainState
from research.train.trainers.lm import make_train_step
from scripts.bench_shapes import PYTORCH_TRAIN_TOKENS_PER_S, SHAPES, shape_config


def random_batch(batch: int, seq: int, vocab: int, key):
    tokens = jax.random.randint(key, (batch, seq + 1), 0, vocab, jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "positions": positions,
            "segment_ids": jnp.ones((batch, seq), jnp.int32), "weights": jnp.ones((batch, seq), jnp.float32)}


def measure(config, steps: int, batch: int, seq: int, peak: float) -> dict:
    model = make_model(config.model)
    optimizer = make_optimizer(config.optimizer, 1000)
    step_fn = jax.jit(make_train_step(model, optimizer, make_schedule(config.optimizer, 1000), 1),
                      donate_argnums=0)
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, seq), jnp.int32))["params"])
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))
    data = random_batch(batch, seq, config.model.vocab_size, jax.random.key(1))
    step_rng = jax.random.key(2)
    state, metrics = step_fn(state, data, step_rng)  # compile
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, data, step_rng)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    matmul_params = count_params(config.model)["active"] - config.model.vocab_size * config.model.dim
    flops = batch * seq * flops_per_token(config.model, seq, matmul_params)
    return {"tokens_per_s": batch * seq / seconds, "mfu": flops / seconds / peak, "step_ms": 1e3 * seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps-100m", type=int, default=3, help="timed steps of the ~100M config (0: skip)")
    args = parser.parse_args()
    peak = total_peak_flops()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, peak {peak / 1e9:.1f} GFLOP/s")
    runs = {name: (shape_config(name), args.steps) for name in SHAPES}
    runs["tiny config"] = (config_lib.load("configs/llama2.py:tiny"), args.steps)
    if args.steps_100m:
        runs["100m config"] = (config_lib.load("configs/llama2.py:100m", ["model.dtype=float32", "model.remat=none"]),
                               args.steps_100m)
    for name, (config, steps) in runs.items():
        result = measure(config, steps, args.batch, args.seq, peak)
        torch = PYTORCH_TRAIN_TOKENS_PER_S.get(name)
        ratio = f"  {result['tokens_per_s'] / torch:.2f}x PyTorch ({torch} tok/s)" if torch else ""
        print(f"{name:24s} {result['tokens_per_s']:9.0f} tok/s  MFU {result['mfu']:6.1%}  "
              f"{result['step_ms']:7.1f} ms/step{ratio}", flush=True)


if __name__ == "__main__":
    main()
