"""Decoding speed on one target: plain `generate` against speculative sampling with a smaller draft.

    python -m scripts.bench_decoding [--gammas 1 2 3 5] [--new 64] [--prompt 16] [--prompts 4]
                                     [--temperature 0] [--repeats 3]

The target has the shape of configs/llama2.py:tiny (4 layers of width 256), the draft one layer of
width 64, both over 512 ids with random weights: two random models agree little, so α is low and
speculation is expected to slow decoding down here; experiments/decoding_acceleration.py runs the
same measurement on a pair trained on the corpus. Each method decodes `--prompts` random prompts one
at a time (batch 1); tokens/s = prompts × new tokens / wall time (median of `--repeats` after a
compiling run, the methods timed in turns so that the machine's load falls on all alike). Beside
each measured cell the formula at the measured α (research/decoding/speculative_theory.py): tokens
per target call (1 − α^{γ+1})/(1 − α) and speedup
(1 − α^{γ+1})/((1 − α)(γc + 1)), c = the draft's time per token over the target's (from `generate`
with each alone). A method is one function `decode(models, prompt, settings, index) -> (tokens,
stats)` in `methods`; Medusa's rows (`measure_medusa`: the MEDUSA_TREES with fresh heads on the
target) follow the speculative ones.
"""

import argparse
import dataclasses
import functools
import math
import os
import statistics
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import config as config_lib
from research.config import unfrozen
from research.decoding.medusa import medusa_generate
from research.decoding.sampling import generate
from research.decoding.speculative import ratio, speculative_generate
from research.decoding.speculative_theory import expected_speedup, expected_tokens_per_target_call
from research.models import make_model
from research.models.medusa import fresh_heads
from scripts.hardware import describe_hardware

TARGET_SHAPE = dict(dim=256, num_layers=4, num_heads=4, num_kv_heads=2, hidden_dim=688)  # configs/llama2.py:tiny
DRAFT_SHAPE = dict(dim=64, num_layers=1, num_heads=2, num_kv_heads=1, hidden_dim=172)


@dataclasses.dataclass(frozen=True)
class DecodingModels:
    """The target, the draft (same vocabulary) and their parameters."""

    target: nn.Module
    target_params: dict
    draft: nn.Module
    draft_params: dict


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every method decodes with."""

    max_new_tokens: int
    temperature: float = 0.0


def llama(shape: dict, vocab_size: int, max_seq_len: int = 512) -> nn.Module:
    """configs/llama2.py:tiny's decoder with the fields of `shape` and `vocab_size` ids."""
    config = unfrozen(config_lib.load("configs/llama2.py:tiny").model)
    config.update(shape, vocab_size=vocab_size, max_seq_len=max_seq_len)
    return make_model(ml_collections.FrozenConfigDict(config))


def random_models(vocab_size: int = 512) -> DecodingModels:
    """A TARGET_SHAPE target and a DRAFT_SHAPE draft with random weights."""
    target, draft = llama(TARGET_SHAPE, vocab_size), llama(DRAFT_SHAPE, vocab_size)
    init = lambda model, seed: nn.meta.unbox(
        jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"])
    return DecodingModels(target, init(target, 0), draft, init(draft, 1))


def sampling_kwargs(settings: Settings, index: int) -> dict:
    """generate's sampling arguments for prompt `index` (its own key when sampling)."""
    return dict(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                rng=jax.random.key(index) if settings.temperature > 0 else None)


def decode_target(models: DecodingModels, prompt, settings: Settings, index: int):
    """The baseline: `generate` with the target alone."""
    return generate(models.target, models.target_params, prompt, **sampling_kwargs(settings, index)), None


def decode_draft(models: DecodingModels, prompt, settings: Settings, index: int):
    """`generate` with the draft alone: its time per token over the target's is the cost ratio c."""
    return generate(models.draft, models.draft_params, prompt, **sampling_kwargs(settings, index)), None


def decode_speculative(models: DecodingModels, prompt, settings: Settings, index: int, *, num_draft_tokens: int):
    """`speculative_generate` with γ = `num_draft_tokens`."""
    return speculative_generate(models.target, models.target_params, models.draft, models.draft_params, prompt,
                                num_draft_tokens=num_draft_tokens, **sampling_kwargs(settings, index))


TARGET, DRAFT = "generate (target)", "generate (draft)"


def methods(gammas) -> dict[str, Callable]:
    """{row name: decode(models, prompt [1, P], settings, index) -> (tokens, stats or None)}."""
    return {TARGET: decode_target, DRAFT: decode_draft,
            **{f"speculative γ={g}": functools.partial(decode_speculative, num_draft_tokens=g) for g in gammas}}


def decode_prompts(decode: Callable, models, prompts: np.ndarray, settings: Settings) -> list:
    """`decode` on each of `prompts` in turn (batch 1), each waited for: [(tokens, stats or None)]."""
    return [jax.block_until_ready(decode(models, prompt[None], settings, index))
            for index, prompt in enumerate(prompts)]


def interleaved_median_seconds(programs: dict[str, Callable], repeats: int) -> dict[str, float]:
    """{name: median of `repeats` timed calls of programs[name]()}, the programs timed in turns (a, b, c,
    a, b, c, ...) so that a change in the machine's load falls on all of them alike."""
    times = {name: [] for name in programs}
    for _ in range(repeats):
        for name, program in programs.items():
            start = time.perf_counter()
            program()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def pooled_stats(stats) -> dict:
    """γ, α, tokens per target call and acceptance rate of several calls' `SpeculativeStats` pooled."""
    gamma = stats[0].num_draft_tokens
    rounds = sum(s.row_rounds for s in stats)
    accepted = sum(sum(s.accepted_per_row) for s in stats)
    tested = sum(s.proposals_tested for s in stats)
    overlap = sum(s.alpha * s.proposals_tested for s in stats if s.proposals_tested)
    return {"gamma": gamma, "alpha": ratio(overlap, tested), "tokens_per_target_call": ratio(accepted + rounds, rounds),
            "acceptance_rate": ratio(accepted, gamma * rounds)}


def measured_rows(decoders: dict[str, Callable], models, prompts: np.ndarray, settings: Settings, repeats: int,
                  pool: Callable = pooled_stats) -> dict[str, dict]:
    """{name: {"tokens_per_s", and `pool` of the stats of a method that returns them}} of each decoder
    (decoding with `models`) over `prompts`: every decoder runs once to compile (the stats are that
    run's), then the timed runs take turns."""
    programs = {name: functools.partial(decode_prompts, decode, models, prompts, settings)
                for name, decode in decoders.items()}
    stats = {name: [s for _, s in program() if s is not None] for name, program in programs.items()}
    seconds = interleaved_median_seconds(programs, repeats)
    return {name: {"tokens_per_s": len(prompts) * settings.max_new_tokens / seconds[name],
                   **(pool(stats[name]) if stats[name] else {})} for name in programs}


def measure(decode: Callable, models: DecodingModels, prompts: np.ndarray, settings: Settings, repeats: int) -> dict:
    """The row of one decoder timed alone (`measured_rows`)."""
    return measured_rows({"method": decode}, models, prompts, settings, repeats)["method"]


def measure_methods(models: DecodingModels, prompts: np.ndarray, settings: Settings, gammas, repeats: int) -> dict:
    """{"cost_ratio": c, "rows": {method: `measured_rows`' row, its speedup over the target alone and the
    formulas at its α}} for every method of `methods(gammas)`."""
    rows = measured_rows(methods(gammas), models, prompts, settings, repeats)
    baseline = rows[TARGET]["tokens_per_s"]
    cost_ratio = baseline / rows[DRAFT]["tokens_per_s"]
    for name, row in rows.items():
        row["speedup"] = row["tokens_per_s"] / baseline
        if math.isfinite(row.get("alpha", math.nan)):
            row["formula_tokens_per_target_call"] = expected_tokens_per_target_call(row["alpha"], row["gamma"])
            row["formula_speedup"] = expected_speedup(row["alpha"], row["gamma"], cost_ratio)
        print(f"{name:20s} {row['tokens_per_s']:9.1f} tok/s", flush=True)
    return {"cost_ratio": cost_ratio, "rows": rows}


MEDUSA_HEADS = 3
MEDUSA_TREES = {"chain": ((0,), (0, 0), (0, 0, 0)), "tree": ((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0))}


def random_medusa(models: DecodingModels):
    """(MedusaLM, params): MEDUSA_HEADS fresh heads (each predicting what the base model predicts) on the
    target's parameters."""
    config = unfrozen(models.target.config)
    config.family = "medusa"
    config.medusa = ml_collections.ConfigDict(dict(num_heads=MEDUSA_HEADS, shared_lm_head=False))
    config = ml_collections.FrozenConfigDict(config)
    heads = nn.meta.unbox(fresh_heads(config, jax.random.key(3), models.target_params))
    return make_model(config), {"backbone": models.target_params, "medusa": heads}


def decode_medusa(medusa_and_params, prompt, settings: Settings, index: int, *, choices, acceptance: str):
    """`medusa_generate` with the tree `choices` and the `acceptance` rule."""
    medusa, params = medusa_and_params
    return medusa_generate(medusa, params, prompt, medusa_choices=choices, acceptance=acceptance,
                           **sampling_kwargs(settings, index))


def mean_accepted_length(stats) -> dict:
    """Tokens one tree pass emits, over several `medusa_generate` calls (each call's mean, averaged)."""
    return {"tokens_per_target_call": statistics.mean(s["mean_accepted_length"] for s in stats)}


def measure_medusa(medusa, params, prompts: np.ndarray, settings: Settings, repeats: int,
                   baseline_tokens_per_s: float) -> dict:
    """{"medusa <tree> (<acceptance>)": row} for every tree of MEDUSA_TREES, greedy acceptance at
    temperature 0 and typical above; speedups over `baseline_tokens_per_s`."""
    acceptance = "greedy" if settings.temperature == 0 else "typical"
    decoders = {f"medusa {name} ({acceptance})": functools.partial(decode_medusa, choices=choices,
                                                                   acceptance=acceptance)
                for name, choices in MEDUSA_TREES.items()}
    rows = measured_rows(decoders, (medusa, params), prompts, settings, repeats, pool=mean_accepted_length)
    for row in rows.values():
        row["speedup"] = row["tokens_per_s"] / baseline_tokens_per_s
    return rows


def cell(row: dict, key: str, fmt: str = ".2f") -> str:
    return format(row[key], fmt) if key in row else "–"


def table_lines(measured: dict) -> list[str]:
    """The markdown table: measured cells with the formula's value beside them."""
    lines = ["| method | tokens/s | speedup (formula) | α | tokens / target call (formula) | acceptance rate |",
             "|---|---|---|---|---|---|"]
    for name, row in measured["rows"].items():
        lines.append(f"| {name} | {row['tokens_per_s']:.1f} | {row['speedup']:.2f}× "
                     f"({cell(row, 'formula_speedup')}) | {cell(row, 'alpha', '.3f')} | "
                     f"{cell(row, 'tokens_per_target_call')} ({cell(row, 'formula_tokens_per_target_call')}) | "
                     f"{cell(row, 'acceptance_rate', '.3f')} |")
    return lines


def load_average() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gammas", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--new", type=int, default=64, help="new tokens per prompt")
    parser.add_argument("--prompt", type=int, default=16, help="prompt length")
    parser.add_argument("--prompts", type=int, default=4, help="prompts, decoded one at a time")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    print(f"{describe_hardware()}; jax {jax.__version__}; {load_average()}", flush=True)
    models = random_models()
    prompts = np.asarray(jax.random.randint(jax.random.key(2), (args.prompts, args.prompt), 3,
                                            models.target.config.vocab_size))
    settings = Settings(max_new_tokens=args.new, temperature=args.temperature)
    measured = measure_methods(models, prompts, settings, args.gammas, args.repeats)
    measured["rows"].update(measure_medusa(*random_medusa(models), prompts, settings, args.repeats,
                                           measured["rows"][TARGET]["tokens_per_s"]))
    print(f"\nrandom weights, {args.prompts} prompts of {args.prompt} tokens, {args.new} new tokens each, batch 1, "
          f"T = {args.temperature:g}; c = {measured['cost_ratio']:.3f}; {load_average()}\n")
    print("\n".join(table_lines(measured)))
    return measured


if __name__ == "__main__":
    main()
