"""Greedy decoding beside transformers' `generate`: tokens/s of 128 new tokens after a 32-token prompt.

    python -m scripts.bench_generate [--new 128] [--prompt 32] [--repeats 3] [--batch 1 8]
                                     [--shape NAME ...] [--override model.dim=64 ...]

For each shape of scripts/bench_shapes.py and batch size: one jitted `research.decoding.sampling.generate`
call (greedy, a KV cache, no stop id) and `transformers.LlamaForCausalLM.generate` of the same shape
(scripts/torch_reference.py), both producing batch × new tokens. The two take turns and each keeps its
best of `--repeats`; the ratio is project tokens/s ÷ transformers tokens/s of this run.
`/proc/loadavg` is printed before and after.
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.decoding.sampling import generate
from research.models import make_model
from scripts import torch_reference
from scripts.bench_shapes import SHAPES, shape_config
from scripts.hardware import describe_hardware, load_average
from scripts.timing import interleaved_best_seconds


def project_generate(config, batch: int, prompt_len: int, new_tokens: int):
    """`run()`: one greedy `generate` of `new_tokens` after random prompts `[batch, prompt_len]`."""
    model = make_model(config.model)
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    prompts = jax.random.randint(jax.random.key(1), (batch, prompt_len), 3, config.model.vocab_size)
    return lambda: generate(model, params, prompts, max_new_tokens=new_tokens)


def measure(config, *, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    """Generated tokens/s of the project and of transformers, best of `repeats`, turns interleaved."""
    best = interleaved_best_seconds(
        {"project": project_generate(config, batch, prompt_len, new_tokens),
         "transformers": torch_reference.generate_runner(config.model, batch, prompt_len, new_tokens)}, repeats)
    return {name: batch * new_tokens / seconds for name, seconds in best.items()}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new", type=int, default=128, help="new tokens per row")
    parser.add_argument("--prompt", type=int, default=32, help="prompt length")
    parser.add_argument("--repeats", type=int, default=3, help="calls of each side; the best one counts")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES), help="default: every shape")
    parser.add_argument("--override", nargs="*", default=[], help="config overrides applied to every shape")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Prints one line per shape and batch; returns {(shape, batch): {"project", "transformers", "ratio"}}."""
    args = parse_args(argv)
    print(f"{describe_hardware()}; {torch_reference.versions()}", flush=True)
    print(f"load before: {load_average()}", flush=True)
    results = {}
    for name in args.shape or SHAPES:
        config = shape_config(name, args.override)
        for batch in args.batch:
            rates = measure(config, batch=batch, prompt_len=args.prompt, new_tokens=args.new, repeats=args.repeats)
            rates["ratio"] = rates["project"] / rates["transformers"]
            results[name, batch] = rates
            print(f"{name:24s} batch {batch}: project {rates['project']:8.0f} tok/s  transformers "
                  f"{rates['transformers']:8.0f} tok/s  ratio {rates['ratio']:.2f}x", flush=True)
    print(f"load after: {load_average()}", flush=True)
    return results


if __name__ == "__main__":
    main()
