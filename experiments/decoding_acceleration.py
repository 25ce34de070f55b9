"""Faster decoding that is still exact: speculative sampling (Leviathan et al., 2023) on a pair trained here.

    python -m experiments.decoding_acceleration [--quick] [--steps N] [--workdir DIR] [--output PATH]

Trains, with research.train.loop.train on the CPython docs (`pydoc_topics`) and the tiny recipe
(`--steps` steps of 8 × 256 tokens) but a SentencePiece BPE of 512 ids, a target of the tiny shape
(4 layers of width 256) and a draft of one layer of width 64 (scripts/bench_decoding.py's
TARGET_SHAPE and DRAFT_SHAPE), in <workdir>/target and <workdir>/draft (a finished run is reused,
an interrupted one resumes). Then, for γ ∈ {1, 2, 3, 5, 7} at temperature 0 and 1, it decodes
validation-document prompts one at a time (batch 1) with `generate` (target alone, draft alone)
and with `speculative_generate`, and tabulates the measured α, tokens per target call and speedup
beside the formulas of research/decoding/speculative_theory.py at the measured α and cost ratio c
(draft time per token over the target's). The report also reproduces the formula values of the
paper's Table 1. Each section of the report is one function (`SECTIONS`).

The default trains each model the tiny recipe's 200 steps; with the measurements the speculative
section takes about 6 CPU-minutes (15 min of wall time on 2 cores shared with other work). `--quick`
trains 10 steps of two very small byte-level models and measures γ = 2 at temperature 0 (about
40 CPU-seconds); it writes into the workdir unless `--output` is given. The default writes
experiments/results/decoding_acceleration.md.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from experiments.runs import train_or_reuse
from research import config as config_lib
from research.data import corpus
from research.data.pipeline import tokenized_documents
from research.data.tokenizer import get_tokenizer
from research.decoding.speculative_theory import expected_tokens_per_target_call
from research.models import count_params, make_model
from research.parallel.mesh import make_mesh
from research.train.checkpoint import Checkpointer
from research.train.step import step_layout
from research.train.task import build_task
from scripts.bench_decoding import (DRAFT_SHAPE, MEDUSA_TREES, TARGET, TARGET_SHAPE, DecodingModels, Settings,
                                    decode_target, load_average, measure, measure_medusa, measure_methods, table_lines)
from scripts.hardware import describe_hardware

SHAPES = {"target": TARGET_SHAPE, "draft": DRAFT_SHAPE}
COMMON = ["model.vocab_size=512", "train.checkpoint_every=0", "evals.samples.prompts=()"]
QUICK_SHAPES = {"target": dict(dim=32, num_layers=2, num_heads=2, num_kv_heads=1, hidden_dim=64),
                "draft": dict(dim=32, num_layers=1, num_heads=2, num_kv_heads=1, hidden_dim=64)}
QUICK_COMMON = ["model.vocab_size=260", "data.tokenizer=byte", "train.seq_len=32", "train.batch_size=4",
                "train.log_every=1", "train.eval_batches=2", "train.checkpoint_every=0", "optimizer.warmup_steps=2",
                "evals.samples.prompts=()"]
FULL = dict(steps=200, gammas=(1, 2, 3, 5, 7), temperatures=(0.0, 1.0), prompts=4, prompt_len=16, new=64,
            repeats=5)
QUICK = dict(steps=10, gammas=(2,), temperatures=(0.0,), prompts=2, prompt_len=8, new=8, repeats=1)
TABLE_1 = ((0.8, 5, 3.69), (0.9, 10, 6.86))  # (α, γ, the paper's improvement in target calls), PAPERS.md


def run_config(role: str, args):
    """The validated config of the target or the draft, `args.steps` steps."""
    shape = [f"model.{field}={value}" for field, value in (QUICK_SHAPES if args.quick else SHAPES)[role].items()]
    common = QUICK_COMMON if args.quick else COMMON
    steps = [f"train.steps={args.steps}", f"train.eval_every={args.steps}"]
    return config_lib.load("configs/llama2.py:tiny", [*common, *shape, *steps])


def final_params(config, workdir: Path):
    """The parameters of the newest checkpoint of the run in `workdir`."""
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    layout = step_layout(build_task(config, mesh), mesh)
    with Checkpointer(str(workdir / "checkpoints"), read_only=True) as checkpointer:
        return checkpointer.restore_params(checkpointer.newest_step(), layout.state.params)


def trained_pair(args) -> tuple[DecodingModels, dict]:
    """The target and the draft trained in `args.workdir`, and {role: (config, results)}."""
    runs, params = {}, {}
    for role in ("target", "draft"):
        config = run_config(role, args)
        runs[role] = (config, train_or_reuse(config, args.workdir / role))
        params[role] = final_params(config, args.workdir / role)
    target_config, draft_config = runs["target"][0], runs["draft"][0]
    models = DecodingModels(make_model(target_config.model), params["target"], make_model(draft_config.model),
                            params["draft"])
    return models, runs


def validation_prompts(config, count: int, length: int) -> np.ndarray:
    """The first `length` tokens (from bos) of the first `count` validation documents longer than that."""
    documents = tokenized_documents(corpus.resolve_data_dir(config.data.data_dir), config.data.name, "validation",
                                    get_tokenizer(config.data))
    starts, ends = documents.offsets[:-1], documents.offsets[1:]
    long_enough = [start for start, end in zip(starts, ends) if end - start > length][:count]
    if len(long_enough) < count:
        raise ValueError(f"the validation split has {len(long_enough)} documents longer than {length} tokens, "
                         f"fewer than the {count} prompts asked for")
    return np.stack([documents.tokens[start:start + length] for start in long_enough])


def table_1_lines() -> list[str]:
    """The paper's Table 1 values against the formula (1 − α^{γ+1})/(1 − α)."""
    lines = ["| α | γ | paper (Table 1) | formula |", "|---|---|---|---|"]
    for alpha, gamma, paper in TABLE_1:
        lines.append(f"| {alpha} | {gamma} | {paper:.2f}× | {expected_tokens_per_target_call(alpha, gamma):.2f}× |")
    return lines


def setup_lines(runs: dict) -> list[str]:
    lines = []
    for role, (config, results) in runs.items():
        model, train = config.model, config.train
        lines.append(f"- {role}: layers {model.num_layers}, width {model.dim}, heads {model.num_heads} (KV "
                     f"{model.num_kv_heads}), SwiGLU {model.hidden_dim}, {model.vocab_size} ids "
                     f"({config.data.tokenizer}), {count_params(model)['total']:,} parameters; trained {train.steps} "
                     f"steps of {train.batch_size} × {train.seq_len} tokens of `{config.data.name}`; eval loss "
                     f"{results['eval_loss']:.3f}, trained in {results['wall_time_s'] / 60:.1f} min.")
    return lines


def speculative_section(args) -> list[str]:
    """Trains (or reuses) the pair, measures every γ at every temperature; the report's speculative part."""
    models, runs = trained_pair(args)
    prompts = validation_prompts(runs["target"][0], args.prompts, args.prompt_len)
    lines = ["## Speculative sampling", "", *setup_lines(runs), "",
             f"Prompts: the first {args.prompt_len} tokens of {args.prompts} validation documents, decoded one at a "
             f"time (batch 1), {args.new} new tokens each, no stop id; tokens/s is the median of {args.repeats} "
             "timed runs after a compiling one, the methods timed in turns. In parentheses beside each measured "
             "cell: the formula at the measured α (and, for the speedup, the measured c). α = mean of "
             "Σ min(p, q) over the positions whose proposal was tested; acceptance rate = accepted / proposed.", ""]
    for temperature in args.temperatures:
        settings = Settings(max_new_tokens=args.new, temperature=temperature)
        measured = measure_methods(models, prompts, settings, args.gammas, args.repeats)
        lines += [f"### Temperature {temperature:g}", "",
                  f"c (draft / target time per token, from `generate`) = {measured['cost_ratio']:.3f}; "
                  f"measured at {load_average()}.", "", *table_lines(measured), "",
                  *agreement_lines(measured), ""]
    lines += ["### Leviathan et al., Table 1 (improvement in target calls = speedup at c = 0)", "",
              *table_1_lines(), ""]
    return lines


def agreement_lines(measured: dict) -> list[str]:
    """How far the measured tokens per target call and speedup are from the formulas."""
    speculative = [row for row in measured["rows"].values() if "formula_speedup" in row]
    if not speculative:
        return ["α is undefined (no proposal was tested)."]
    tokens_gap = max(abs(r["tokens_per_target_call"] / r["formula_tokens_per_target_call"] - 1) for r in speculative)
    speed_gap = max(abs(r["speedup"] / r["formula_speedup"] - 1) for r in speculative)
    best = max(speculative, key=lambda r: r["speedup"])
    return [f"Tokens per target call are within {tokens_gap:.1%} of the formula (which assumes independent "
            f"acceptances); measured speedups are within {speed_gap:.1%} of the formula, whose c counts neither "
            f"the verification's γ + 1-token target call nor the per-round bookkeeping. Best: γ = {best['gamma']}, "
            f"{best['speedup']:.2f}× at α = {best['alpha']:.3f}."]


MEDUSA_PAPER_TOP1 = (0.560, 0.316, 0.201, 0.147, 0.118)  # Vicuna-7B heads 1..5 (PAPERS.md "Medusa")


def medusa_section(args) -> list[str]:
    """Medusa-1: 3 heads (configs/medusa.py) trained `args.steps` steps on the frozen target, then
    `medusa_generate` with MEDUSA_TREES against `generate` (greedy acceptance at temperature 0, typical above)."""
    target_config = run_config("target", args)
    train_or_reuse(target_config, args.workdir / "target")
    same = {**{f"model.{f}": target_config.model[f] for f in ("dim", "num_layers", "num_heads", "num_kv_heads",
                                                              "hidden_dim", "vocab_size")},
            **{f"train.{f}": target_config.train[f] for f in ("seq_len", "batch_size", "log_every", "eval_batches")},
            "data.tokenizer": target_config.data.tokenizer, "train.checkpoint_every": 0,
            "optimizer.warmup_steps": target_config.optimizer.warmup_steps}
    config = config_lib.load("configs/medusa.py:tiny,heads=3", [
        *(f"{k}={v}" for k, v in same.items()), f"train.steps={args.steps}", f"train.eval_every={args.steps}",
        "init_from.kind=run", f"init_from.path={args.workdir / 'target'}"])
    results = train_or_reuse(config, args.workdir / "medusa")
    params = final_params(config, args.workdir / "medusa")
    target, medusa = make_model(target_config.model), make_model(config.model)
    prompts = validation_prompts(target_config, args.prompts, args.prompt_len)
    heads = config.model.medusa.num_heads
    top1 = ", ".join(f"{results[f'heads_head{k}_top1']:.3f}" for k in range(1, heads + 1))
    lines = ["## Medusa", "",
             f"Medusa-1: {heads} heads on the frozen target, trained {args.steps} steps from its run "
             f"({results['wall_time_s'] / 60:.1f} min); validation top-1 of heads 1..{heads}: {top1} (the paper's "
             f"Vicuna-7B: {', '.join(f'{a:.3f}' for a in MEDUSA_PAPER_TOP1[:heads])}). Trees: "
             + "; ".join(f"{name} {list(choices)}" for name, choices in MEDUSA_TREES.items())
             + ". Tokens / target call is the mean accepted length (tokens one verification pass emits). "
             "Same prompts and timing as above.", ""]
    for temperature in args.temperatures:
        settings = Settings(max_new_tokens=args.new, temperature=temperature)
        baseline = measure(decode_target, DecodingModels(target, params["backbone"], target, params["backbone"]),
                           prompts, settings, args.repeats)
        rows = {TARGET: {**baseline, "speedup": 1.0},
                **measure_medusa(medusa, params, prompts, settings, args.repeats, baseline["tokens_per_s"])}
        lines += [f"### Temperature {temperature:g}", "", f"Measured at {load_average()}.", "",
                  *table_lines({"rows": rows}), ""]
    return lines


SECTIONS = (speculative_section, medusa_section)


def write_markdown(path: Path, sections: list[list[str]], minutes: float, args) -> None:
    command = " ".join(["python -m experiments.decoding_acceleration", *args.argv])
    lines = ["# Decoding acceleration that is still exact", "",
             f"Written by `{command}` in {minutes:.1f} min on {describe_hardware()} (jax {jax.__version__}), "
             "shared with other processes, so the timings are noisy.", ""]
    for section in sections:
        lines += section
    path.write_text("\n".join(lines))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 steps of two very small models, γ = 2")
    parser.add_argument("--steps", type=int, help="training steps of each model")
    parser.add_argument("--workdir", type=Path, help="where the models train (default: a directory in the temp dir)")
    parser.add_argument("--output", type=Path, help="path of the .md, without the suffix")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    suffix = "_quick" if args.quick else ""
    args.workdir = args.workdir or Path(tempfile.gettempdir()) / f"decoding_acceleration_{args.steps}steps{suffix}"
    default_output = args.workdir / "decoding_acceleration" if args.quick else Path(
        "experiments/results/decoding_acceleration")
    args.output = args.output or default_output
    return args


def main(argv=None) -> list[list[str]]:
    """Runs every section and writes the report; returns the sections' lines."""
    args = parse_args(argv)
    started = time.perf_counter()
    sections = [section(args) for section in SECTIONS]
    minutes = (time.perf_counter() - started) / 60
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_markdown(args.output.with_suffix(".md"), sections, minutes, args)
    print(f"wrote {args.output.with_suffix('.md')} after {minutes:.1f} min")
    return sections


if __name__ == "__main__":
    main()
