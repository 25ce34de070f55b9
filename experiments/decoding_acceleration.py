"""Faster decoding that is still exact: speculative sampling (Leviathan et al., 2023) on a pair trained here.

    python -m experiments run decoding_acceleration [--quick] [--seeds N]

Trains, with research.train.loop.train on the CPython docs (`pydoc_topics`) and the tiny recipe
(200 steps of 8 × 256 tokens) but a SentencePiece BPE of 512 ids, a target of the tiny shape
(4 layers of width 256) and a draft of one layer of width 64 (scripts/bench_decoding.py's
TARGET_SHAPE and DRAFT_SHAPE), in <out_dir>/target and <out_dir>/draft (a finished run is reused,
an interrupted one resumes). Then, for γ ∈ {1, 2, 3, 5, 7} at temperature 0 and 1, it decodes
validation-document prompts one at a time (batch 1) with `generate` (target alone, draft alone)
and with `speculative_generate`, and tabulates the measured α, tokens per target call and speedup
beside the formulas of research/decoding/speculative_theory.py at the measured α and cost ratio c
(draft time per token over the target's). The report also reproduces the formula values of the
paper's Table 1, and Medusa-1 heads trained on the frozen target decode the same prompts.

The seed sets the models' initialisation and data order; α, tokens per target call and the Medusa
heads' accuracy are then the same on every run of that seed, while the speedups are timings of a
shared CPU and differ from run to run. The full run takes about 18 minutes on 2 cores (13 of
training, 5 of measuring); `--quick` trains 10 steps of two very small byte-level models and
measures γ = 2 at temperature 0.
"""

import dataclasses
from pathlib import Path

import jax
import numpy as np

from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Claim, Experiment, Outcome, Verdict
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

SHAPES = {"target": TARGET_SHAPE, "draft": DRAFT_SHAPE}
COMMON = ("model.vocab_size=512", "train.checkpoint_every=0", "evals.samples.prompts=()")
QUICK_SHAPES = {"target": dict(dim=32, num_layers=2, num_heads=2, num_kv_heads=1, hidden_dim=64),
                "draft": dict(dim=32, num_layers=1, num_heads=2, num_kv_heads=1, hidden_dim=64)}
QUICK_COMMON = ("model.vocab_size=260", "data.tokenizer=byte", "train.seq_len=32", "train.batch_size=4",
                "train.log_every=1", "train.eval_batches=2", "train.checkpoint_every=0", "optimizer.warmup_steps=2",
                "evals.samples.prompts=()")


@dataclasses.dataclass(frozen=True)
class Scale:
    """A run's size: training steps of each model, the γs and temperatures measured, the prompts (count,
    length), new tokens per prompt, timed repeats, and the models' shapes and common overrides."""
    steps: int
    gammas: tuple
    temperatures: tuple
    prompts: int
    prompt_len: int
    new: int
    repeats: int
    shapes: dict
    common: tuple


FULL = Scale(steps=200, gammas=(1, 2, 3, 5, 7), temperatures=(0.0, 1.0), prompts=4, prompt_len=16, new=64, repeats=5,
             shapes=SHAPES, common=COMMON)
QUICK = Scale(steps=10, gammas=(2,), temperatures=(0.0,), prompts=2, prompt_len=8, new=8, repeats=1,
              shapes=QUICK_SHAPES, common=QUICK_COMMON)
TABLE_1 = ((0.8, 5, 3.69), (0.9, 10, 6.86))  # (α, γ, the paper's improvement in target calls), PAPERS.md
MEDUSA_PAPER_TOP1 = (0.560, 0.316, 0.201, 0.147, 0.118)  # Vicuna-7B heads 1..5 (PAPERS.md "Medusa")
FORMULA_TOLERANCE = 0.10  # tokens per target call within 10% of the formula: the claim holds

EXPERIMENT = Experiment(
    name="decoding_acceleration",
    title="Decoding acceleration that is still exact: speculative sampling and Medusa on a tiny trained pair",
    paper="Fast Inference from Transformers via Speculative Decoding (Leviathan et al., 2023), with Medusa "
          "(Cai et al., 2024) beside it",
    arxiv="2211.17192",
    reproduces="Table 1 and the expected tokens per target call (1 − α^{γ+1})/(1 − α) (§3.1)",
    claims=(Claim("tokens_per_call",
                  "each target call emits (1 − α^{γ+1})/(1 − α) tokens at acceptance rate α"),
            Claim("speedup", "speculative sampling decodes faster than the target alone"),
            Claim("medusa", "Medusa heads on the frozen target emit more than one token per target call")),
    full_scale="target configs/llama2.py:7b with a 1-layer draft of its vocabulary, decoding at batch 1 on one "
               "v5p chip (the 7B row of experiments/results/pod_fit.md trains the target on v5p-8)",
    cpu_minutes=18,
    paper_numbers={"alpha_t0": "0.75–0.82 (T5-XXL, Table 3)", "best_speedup": "3.69× at α 0.8, γ 5 (Table 1)",
                   "medusa_head1_top1": MEDUSA_PAPER_TOP1[0], "tokens_per_call_gap": "0 (the formula)"},
)


def run_config(role: str, scale: Scale, seed: int):
    """The validated config of the target or the draft, `scale.steps` steps."""
    shape = [f"model.{field}={value}" for field, value in scale.shapes[role].items()]
    steps = [f"train.steps={scale.steps}", f"train.eval_every={scale.steps}", f"seed={seed}"]
    return config_lib.load("configs/llama2.py:tiny", [*scale.common, *shape, *steps])


def final_params(config, workdir: Path):
    """The parameters of the newest checkpoint of the run in `workdir`."""
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    layout = step_layout(build_task(config, mesh), mesh)
    with Checkpointer(str(workdir / "checkpoints"), read_only=True) as checkpointer:
        return checkpointer.restore_params(checkpointer.newest_step(), layout.state.params)


def trained_pair(scale: Scale, workdir: Path, seed: int) -> tuple[DecodingModels, dict]:
    """The target and the draft trained in `workdir`, and {role: (config, results)}."""
    runs, params = {}, {}
    for role in ("target", "draft"):
        config = run_config(role, scale, seed)
        runs[role] = (config, train_or_reuse(config, workdir / role))
        params[role] = final_params(config, workdir / role)
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




def speculative_section(scale: Scale, workdir: Path, seed: int) -> tuple[list[str], dict]:
    """Trains (or reuses) the pair, measures every γ at every temperature: the report's speculative part and
    {temperature: measure_methods' result}."""
    models, runs = trained_pair(scale, workdir, seed)
    prompts = validation_prompts(runs["target"][0], scale.prompts, scale.prompt_len)
    lines = ["## Speculative sampling", "", *setup_lines(runs), "",
             f"Prompts: the first {scale.prompt_len} tokens of {scale.prompts} validation documents, decoded one at "
             f"a time (batch 1), {scale.new} new tokens each, no stop id; tokens/s is the median of {scale.repeats} "
             "timed runs after a compiling one, the methods timed in turns. In parentheses beside each measured "
             "cell: the formula at the measured α (and, for the speedup, the measured c). α = mean of "
             "Σ min(p, q) over the positions whose proposal was tested; acceptance rate = accepted / proposed.", ""]
    by_temperature = {}
    for temperature in scale.temperatures:
        settings = Settings(max_new_tokens=scale.new, temperature=temperature)
        measured = by_temperature[temperature] = measure_methods(models, prompts, settings, scale.gammas,
                                                                 scale.repeats)
        lines += [f"### Temperature {temperature:g}", "",
                  f"c (draft / target time per token, from `generate`) = {measured['cost_ratio']:.3f}; "
                  f"measured at {load_average()}.", "", *table_lines(measured), "",
                  *agreement_lines(measured), ""]
    lines += ["### Leviathan et al., Table 1 (improvement in target calls = speedup at c = 0)", "",
              *table_1_lines(), ""]
    return lines, by_temperature


def speculative_rows(measured: dict) -> list[dict]:
    """The rows of `measure_methods`' result that decoded speculatively (those with a measured α)."""
    return [row for row in measured["rows"].values() if "formula_speedup" in row]


def tokens_gap(row: dict) -> float:
    """|measured tokens per target call / the formula's − 1| of one speculative row."""
    return abs(row["tokens_per_target_call"] / row["formula_tokens_per_target_call"] - 1)


def agreement_lines(measured: dict) -> list[str]:
    """How far the measured tokens per target call and speedup are from the formulas."""
    speculative = speculative_rows(measured)
    if not speculative:
        return ["α is undefined (no proposal was tested)."]
    speed_gap = max(abs(r["speedup"] / r["formula_speedup"] - 1) for r in speculative)
    best = max(speculative, key=lambda r: r["speedup"])
    return [f"Tokens per target call are within {max(map(tokens_gap, speculative)):.1%} of the formula (which "
            f"assumes independent acceptances); measured speedups are within {speed_gap:.1%} of the formula, whose "
            f"c counts neither the verification's γ + 1-token target call nor the per-round bookkeeping. Best: "
            f"γ = {best['gamma']}, {best['speedup']:.2f}× at α = {best['alpha']:.3f}."]


def medusa_section(scale: Scale, workdir: Path, seed: int) -> tuple[list[str], dict, dict]:
    """Medusa-1: 3 heads (configs/medusa.py) trained `scale.steps` steps on the frozen target, then
    `medusa_generate` with MEDUSA_TREES against `generate` (greedy acceptance at temperature 0, typical above):
    the report's Medusa part, {temperature: rows} and the heads' training results."""
    target_config = run_config("target", scale, seed)
    train_or_reuse(target_config, workdir / "target")
    same = {**{f"model.{f}": target_config.model[f] for f in ("dim", "num_layers", "num_heads", "num_kv_heads",
                                                              "hidden_dim", "vocab_size")},
            **{f"train.{f}": target_config.train[f] for f in ("seq_len", "batch_size", "log_every", "eval_batches")},
            "data.tokenizer": target_config.data.tokenizer, "train.checkpoint_every": 0,
            "optimizer.warmup_steps": target_config.optimizer.warmup_steps, "seed": seed}
    config = config_lib.load("configs/medusa.py:tiny,heads=3", [
        *(f"{k}={v}" for k, v in same.items()), f"train.steps={scale.steps}", f"train.eval_every={scale.steps}",
        "init_from.kind=run", f"init_from.path={workdir / 'target'}"])
    results = train_or_reuse(config, workdir / "medusa")
    params = final_params(config, workdir / "medusa")
    target, medusa = make_model(target_config.model), make_model(config.model)
    prompts = validation_prompts(target_config, scale.prompts, scale.prompt_len)
    heads = config.model.medusa.num_heads
    top1 = ", ".join(f"{results[f'heads_head{k}_top1']:.3f}" for k in range(1, heads + 1))
    lines = ["## Medusa", "",
             f"Medusa-1: {heads} heads on the frozen target, trained {scale.steps} steps from its run "
             f"({results['wall_time_s'] / 60:.1f} min); validation top-1 of heads 1..{heads}: {top1} (the paper's "
             f"Vicuna-7B: {', '.join(f'{a:.3f}' for a in MEDUSA_PAPER_TOP1[:heads])}). Trees: "
             + "; ".join(f"{name} {list(choices)}" for name, choices in MEDUSA_TREES.items())
             + ". Tokens / target call is the mean accepted length (tokens one verification pass emits). "
             "Same prompts and timing as above.", ""]
    by_temperature = {}
    for temperature in scale.temperatures:
        settings = Settings(max_new_tokens=scale.new, temperature=temperature)
        baseline = measure(decode_target, DecodingModels(target, params["backbone"], target, params["backbone"]),
                           prompts, settings, scale.repeats)
        rows = by_temperature[temperature] = {
            TARGET: {**baseline, "speedup": 1.0},
            **measure_medusa(medusa, params, prompts, settings, scale.repeats, baseline["tokens_per_s"])}
        lines += [f"### Temperature {temperature:g}", "", f"Measured at {load_average()}.", "",
                  *table_lines({"rows": rows}), ""]
    return lines, by_temperature, results


def table_rows(speculative: dict, medusa: dict) -> list[dict]:
    """Every measured method at every temperature, flat for the CSV."""
    columns = ("tokens_per_s", "speedup", "alpha", "gamma", "tokens_per_target_call", "formula_tokens_per_target_call",
               "formula_speedup", "acceptance_rate")
    return [{"section": section, "temperature": temperature, "method": name,
             **{column: row[column] for column in columns if column in row}}
            for section, measured in (("speculative", speculative), ("medusa", medusa))
            for temperature, rows in measured.items()
            for name, row in (rows["rows"] if section == "speculative" else rows).items()]


def run(out_dir: Path, *, quick: bool, seed: int) -> Outcome:
    """Trains the pair and the Medusa heads in `out_dir`, measures both methods; α, the gap to the formula, the
    best speedup and Medusa's tokens per call and first head's top-1 as headline numbers."""
    scale = QUICK if quick else FULL
    speculative_lines, speculative = speculative_section(scale, out_dir, seed)
    medusa_lines, medusa, medusa_results = medusa_section(scale, out_dir, seed)
    tested = [row for measured in speculative.values() for row in speculative_rows(measured)]
    greedy = speculative_rows(speculative[scale.temperatures[0]])
    medusa_rows = [row for name, row in medusa[scale.temperatures[0]].items() if name != TARGET]
    headline = {"alpha_t0": float(np.mean([row["alpha"] for row in greedy])),
                "tokens_per_call_gap": max(map(tokens_gap, tested)),
                "best_speedup": max(row["speedup"] for row in tested),
                "medusa_tokens_per_call": max(row["tokens_per_target_call"] for row in medusa_rows),
                "medusa_head1_top1": medusa_results["heads_head1_top1"]}
    return Outcome(headline=headline, rows=table_rows(speculative, medusa),
                   markdown="\n".join(speculative_lines + medusa_lines))


def judge(headline: dict) -> dict:
    """Tokens per call: the largest gap to the formula within FORMULA_TOLERANCE (holds), within twice it (in
    part). Speedup: the best speculative speedup above 1 by more than the seeds' spread (holds), above 1 (in
    part). Medusa: its best tree emits more than one token per target call."""
    gap = headline["tokens_per_call_gap"].mean
    gap_status = HOLDS if gap <= FORMULA_TOLERANCE else HOLDS_IN_PART if gap <= 2 * FORMULA_TOLERANCE else DOES_NOT_HOLD
    speedup = headline["best_speedup"]
    speedup_status = (HOLDS if speedup.mean - 1 > speedup.std else HOLDS_IN_PART if speedup.mean > 1
                      else DOES_NOT_HOLD)
    medusa = headline["medusa_tokens_per_call"].mean
    alpha = headline["alpha_t0"].mean
    return {"tokens_per_call": Verdict(gap_status, f"largest gap between measured tokens per target call and the "
                                                   f"formula: {gap:.1%} (α at T = 0: {alpha:.3f})"),
            "speedup": Verdict(speedup_status, f"best speculative speedup over the target alone {speedup.mean:.2f}× "
                                               f"± {speedup.std:.2f} (batch 1 on a shared CPU)"),
            "medusa": Verdict(HOLDS if medusa > 1 else DOES_NOT_HOLD,
                              f"best tree's mean accepted length {medusa:.2f} tokens per target call at T = 0; first "
                              f"head's top-1 {headline['medusa_head1_top1'].mean:.3f} (Vicuna-7B: 0.560)")}
