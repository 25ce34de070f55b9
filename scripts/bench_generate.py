"""Decoding throughput: greedy generation of 128 new tokens after a 32-token prompt.

    python -m scripts.bench_generate [--new 128] [--prompt 32] [--repeats 3]

tokens/s = batch x new tokens / wall time of one jitted `generate` call (compiled first),
at batch 1 and 8, next to PyTorch 2.13 CPU + transformers on the same shapes.
"""

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.decoding.sampling import generate
from research.models import make_model
from scripts.bench_shapes import PYTORCH_DECODE_TOKENS_PER_S, SHAPES, shape_config


def measure(config, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> float:
    model = make_model(config.model)
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    prompts = jax.random.randint(jax.random.key(1), (batch, prompt_len), 3, config.model.vocab_size)
    generate(model, params, prompts, max_new_tokens=new_tokens).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        generate(model, params, prompts, max_new_tokens=new_tokens).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return batch * new_tokens / best


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}")
    for name in SHAPES:
        for batch in (1, 8):
            tokens_per_s = measure(shape_config(name), batch, args.prompt, args.new, args.repeats)
            torch = PYTORCH_DECODE_TOKENS_PER_S[(name, batch)]
            print(f"{name:24s} batch {batch}: {tokens_per_s:8.0f} tok/s  {tokens_per_s / torch:5.2f}x PyTorch "
                  f"({torch} tok/s)", flush=True)


if __name__ == "__main__":
    main()
