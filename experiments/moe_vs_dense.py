"""Switch Transformer (Fedus et al., 2022) in shape: a tiny MoE against a dense LLaMA at equal activated size.

    python -m experiments.moe_vs_dense [--quick] [--steps N] [--seeds S] [--arms ARM ...]
                                       [--workdir DIR] [--output PATH]

Trains, with the same seed, data order, steps and tokens, on the CPython docs that ship with Python:
    dense           configs/llama2.py:tiny, SwiGLU width 688
    moe             configs/seed_thinking.py:tiny, 8 experts of width 344, top-2 (activated width
                    2·344 = 688), dropless dispatch, load-balancing loss α = 0.01
    moe_no_balance  the same MoE with α = 0 (the router z-loss, 1e-3, stays on)
    moe_capacity    (only if named in --arms) the MoE with capacity dispatch, factor 1.25, α = 0.01
Every arm is `research.train.loop.train` in <workdir>/<arm>_seed<seed>/ on one device; an arm with a
results.json is not run again, an interrupted one resumes from its checkpoint. After training, the
final checkpoint of every MoE arm is run on the evaluation batches to get each layer's per-expert load.
Writes <output>.png (left: train and eval loss against step; right: the MoE arms' max load,
max_i f_i·E, against step) and <output>.md (the table of arms, the per-expert loads, and the verdict
on the paper's two claims):
(1) at equal activated parameters (equal FLOPs per token) the MoE reaches a lower loss than the dense model;
(2) without the load-balancing loss the load collapses onto few experts.
The default is 100 steps (half of the tiny recipe's 200, so that the three arms train in about
15 minutes on 2 CPU cores: on a CPU the dropless MoE step is ~2.5x slower than the dense one);
`--steps 200` runs the recipe's length. `--quick` trains 10 steps of a very small model (byte
tokenizer) and writes into the workdir unless `--output` is given; the default writes
experiments/results/moe_vs_dense.{md,png}.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from matplotlib.figure import Figure

from experiments.runs import train_or_reuse
from research import config as config_lib
from research.data import corpus
from research.data.pipeline import make_lm_batches, tokenized_documents
from research.data.tokenizer import get_tokenizer
from research.models import count_params, make_model
from research.models.moe import MOE_COLLECTION
from research.parallel.mesh import make_mesh
from research.train.checkpoint import Checkpointer
from research.train.metrics import read_metrics
from research.train.moe_aux import layer_statistics
from research.train.step import step_layout
from research.train.task import build_task

ARMS = {
    # name: (config spec, label)
    "dense": ("configs/llama2.py:tiny", "A: dense"),
    "moe": ("configs/seed_thinking.py:tiny", "B: MoE, α=0.01"),
    "moe_no_balance": ("configs/seed_thinking.py:tiny,balance=0", "C: MoE, α=0"),
    "moe_capacity": ("configs/seed_thinking.py:tiny,dispatch=capacity", "D: MoE, capacity 1.25, α=0.01"),
}
DENSE, BALANCED, UNBALANCED = "dense", "moe", "moe_no_balance"
DEFAULT_ARMS = (DENSE, BALANCED, UNBALANCED)
COLORS = {"dense": "black", "moe": "tab:blue", "moe_no_balance": "tab:red", "moe_capacity": "tab:green"}
COMMON = ["train.eval_every=25", "evals.samples.prompts=()"]
# A very small model for --quick: the dense FFN width is the MoE's top_k x expert width (2 x 128).
QUICK_SHAPE = ["model.dim=64", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
               "model.vocab_size=260", "data.tokenizer=byte", "train.seq_len=64", "train.batch_size=8",
               "train.log_every=1", "train.eval_every=5", "train.eval_batches=2", "train.checkpoint_every=0",
               "optimizer.warmup_steps=2"]
QUICK_FFN = {"dense": ["model.hidden_dim=256"], "moe": ["model.moe.expert_hidden_dim=128"]}
FULL = dict(steps=100, seeds=1)
QUICK = dict(steps=10, seeds=1)
ONE_SEED = " (one seed: not tested against the noise between seeds)"
COLLAPSED = 0.5  # the load counts as collapsed when fewer than this fraction of the experts is in effective use


def arm_config(arm: str, seed: int, args):
    """The validated config of `arm` with `seed`, `args.steps` steps (and --quick's small shapes)."""
    spec = ARMS[arm][0]
    overrides = [*COMMON, f"train.steps={args.steps}", f"seed={seed}"]
    if args.quick:
        overrides += QUICK_SHAPE + QUICK_FFN["dense" if arm == DENSE else "moe"]
    return config_lib.load(spec, overrides)


def is_moe(config) -> bool:
    return config.model.get("moe") is not None


def final_expert_load(config, workdir: Path) -> np.ndarray:
    """[MoE layers, E]: the fraction f_i of the top-k assignments that go to expert i, in the final
    checkpoint of the run in `workdir`, over the evaluation batches the loop scores (token-weighted)."""
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    layout = step_layout(build_task(config, mesh), mesh)
    checkpointer = Checkpointer(str(workdir / "checkpoints"), read_only=True)
    try:
        params = checkpointer.restore_params(checkpointer.newest_step(), layout.state.params)
    finally:
        checkpointer.close()
    model = make_model(config.model)
    batches = make_lm_batches(config.data, get_tokenizer(config.data), split="validation",
                              batch_size=config.train.batch_size, seq_len=config.train.seq_len, seed=0, num_epochs=1)

    @jax.jit
    def expert_load(params, batch):
        _, variables = model.apply({"params": params}, batch["inputs"], positions=batch["positions"],
                                   segment_ids=batch["segment_ids"], mutable=[MOE_COLLECTION])
        return layer_statistics(variables[MOE_COLLECTION])["expert_load"]

    loads, weights = [], []
    for index, batch in enumerate(batches):
        if index >= config.train.eval_batches:
            break
        loads.append(np.asarray(expert_load(params, batch)))
        weights.append(float(batch["weights"].sum()))
    return np.average(np.stack(loads), axis=0, weights=weights)


def effective_experts(load: np.ndarray) -> np.ndarray:
    """1 / Σ_i f_i² of each layer's load: E when balanced, k when top-k always picks the same experts."""
    return 1.0 / np.sum(np.square(load), axis=-1)


def median_tokens_per_s(records: list[dict]) -> float:
    """Median of the logged training throughput (each over log_every steps; the windows that
    include an evaluation or a checkpoint are slower, hence the median)."""
    return float(np.median([r["tokens_per_s"] for r in records if "tokens_per_s" in r]))


def run_arm(arm: str, args) -> dict:
    """Trains every seed of `arm`; its configs, results, metric records and final expert loads."""
    configs = [arm_config(arm, seed, args) for seed in range(args.seeds)]
    workdirs = [args.workdir / f"{arm}_seed{seed}" for seed in range(args.seeds)]
    results = [train_or_reuse(config, workdir) for config, workdir in zip(configs, workdirs)]
    loads = []
    if is_moe(configs[0]):
        loads = [final_expert_load(config, workdir) for config, workdir in zip(configs, workdirs)]
    return dict(config=configs[0], params=count_params(configs[0].model), results=results,
                records=[read_metrics(str(workdir)) for workdir in workdirs], loads=loads)


def summarize(arm: str, run: dict) -> dict:
    """The table row of an arm: means over seeds."""
    results = run["results"]
    row = dict(arm=arm, label=ARMS[arm][1], total=run["params"]["total"], active=run["params"]["active"],
               eval_losses=[r["eval_loss"] for r in results],
               eval_loss=float(np.mean([r["eval_loss"] for r in results])),
               perplexity=float(np.mean([r["eval_perplexity"] for r in results])),
               tokens_per_s=float(np.mean([median_tokens_per_s(records) for records in run["records"]])),
               train_minutes=float(np.mean([r["wall_time_s"] for r in results])) / 60)
    for name in ("load_cv", "max_load", "router_entropy", "dropped_fraction"):
        values = [r[f"eval_moe_{name}"] for r in results if f"eval_moe_{name}" in r]
        row[name] = float(np.mean(values)) if values else None
    per_layer = [effective_experts(load) for load in run["loads"]]
    row["effective_experts"] = float(np.mean([e.mean() for e in per_layer])) if per_layer else None
    row["fewest_effective_experts"] = float(min(e.min() for e in per_layer)) if per_layer else None
    return row


def check_equal_setup(runs: dict) -> float:
    """Raises ValueError unless every arm trains on the same data, steps, batch and seed; returns the
    largest relative gap of an arm's activated parameters to the dense arm's (or the first arm's)."""
    reference = runs.get(DENSE, next(iter(runs.values())))
    for arm, run in runs.items():
        if shared_fields(run["config"]) != shared_fields(reference["config"]):
            raise ValueError(f"arm {arm} differs from the others in seed, data, train or optimizer fields")
    return max(abs(run["params"]["active"] / reference["params"]["active"] - 1) for run in runs.values())


def shared_fields(config) -> tuple:
    """What must be equal across arms: seed, data, training and optimizer fields."""
    return config.seed, config.data.to_dict(), config.train.to_dict(), config.optimizer.to_dict()


def verdict_1(rows: dict) -> str:
    """Claim (1): the balanced MoE's eval loss below the dense model's, beyond the seed-to-seed spread."""
    dense, moe = rows[DENSE], rows[BALANCED]
    gap = dense["eval_loss"] - moe["eval_loss"]
    spread = max(np.std(dense["eval_losses"]), np.std(moe["eval_losses"]))
    if gap > spread:
        return "holds"
    if gap > 0:
        return "holds within the seed-to-seed spread"
    return "does not hold"


def verdict_2(rows: dict, num_experts: int) -> str:
    """Claim (2): without the balancing loss, fewer experts in effective use than with it, down to
    fewer than COLLAPSED · E (collapse); only less balanced is a partial hold."""
    balanced, unbalanced = rows[BALANCED]["effective_experts"], rows[UNBALANCED]["effective_experts"]
    if unbalanced >= balanced:
        return "does not hold"
    if unbalanced < COLLAPSED * num_experts:
        return "holds"
    return "holds only in part (less balanced than with the loss, but no collapse)"


def gap_text(dense_records: list[dict], moe_records: list[dict]) -> str:
    """`step 25: +0.0123, ...`: the dense arm's eval loss minus the MoE arm's at every evaluation."""
    dense = dict(zip(*series(dense_records, "eval_loss")))
    moe = dict(zip(*series(moe_records, "eval_loss")))
    return ", ".join(f"step {step}: {dense[step] - moe[step]:+.4f}" for step in sorted(dense.keys() & moe.keys()))


def optional(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def main_table(rows: dict) -> list[str]:
    lines = ["| arm | total params | active params | eval loss | eval ppl | train tok/s | wall min | "
             "load CV | max load | router entropy | dropped | effective experts |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows.values():
        loss_text = f"{row['eval_loss']:.4f}"
        if len(row["eval_losses"]) > 1:
            loss_text += f" ({', '.join(f'{v:.4f}' for v in row['eval_losses'])})"
        lines.append(
            f"| {row['label']} | {row['total']:,} | {row['active']:,} | {loss_text} | {row['perplexity']:.2f} | "
            f"{row['tokens_per_s']:.0f} | {row['train_minutes']:.1f} | {optional(row['load_cv'], '.3f')} | "
            f"{optional(row['max_load'], '.2f')} | {optional(row['router_entropy'], '.3f')} | "
            f"{optional(row['dropped_fraction'], '.3f')} | {optional(row['effective_experts'], '.2f')} |")
    return lines


def load_table(runs: dict) -> list[str]:
    """f_i·E per layer and expert of every MoE arm's final model (seed 0): 1 is the fair share."""
    moe_runs = {arm: run for arm, run in runs.items() if run["loads"]}
    if not moe_runs:
        return []
    num_experts = next(iter(moe_runs.values()))["loads"][0].shape[-1]
    lines = ["| arm | layer | " + " | ".join(f"e{i}" for i in range(num_experts)) + " | effective experts |",
             "|---|---|" + "---|" * (num_experts + 1)]
    for arm, run in moe_runs.items():
        load = run["loads"][0]
        for layer, (layer_load, effective) in enumerate(zip(load, effective_experts(load))):
            cells = " | ".join(f"{v * num_experts:.2f}" for v in layer_load)
            lines.append(f"| {ARMS[arm][1].split(':')[0]} | {layer} | {cells} | {effective:.2f} |")
    return lines


def training_tokens(config) -> int:
    """Tokens in the training split of the config's corpus under its tokenizer."""
    tokenizer = get_tokenizer(config.data)
    data_dir = corpus.resolve_data_dir(config.data.data_dir)
    return len(tokenized_documents(data_dir, config.data.name, "train", tokenizer).tokens)


def setup_text(config, args, active_gap: float) -> list[str]:
    model, train, moe = config.model, config.train, config.model.moe
    tokens = args.steps * train.batch_size * train.seq_len
    return [
        "## Setup", "",
        f"All arms: LLaMA with {model.num_layers} layers, width {model.dim}, {model.num_heads} heads / "
        f"{model.num_kv_heads} KV heads, vocabulary {model.vocab_size} ({config.data.tokenizer}), trained "
        f"{args.steps} steps of {train.batch_size} × {train.seq_len} tokens ({tokens:,} tokens, "
        f"{tokens / training_tokens(config):.1f} passes over the training split of `{config.data.name}`) with "
        f"AdamW {config.optimizer.learning_rate:g} warmup-cosine, seed{'s' if args.seeds > 1 else ''} "
        f"{', '.join(str(s) for s in range(args.seeds))}: the same data in the same order for every arm. "
        f"The MoE arms replace every FFN with {moe.num_experts} experts of width {moe.expert_hidden_dim}, "
        f"top-{moe.top_k} softmax routing with renormalised weights, z-loss {moe.z_loss_weight:g}. Activated "
        f"parameters match the dense arm's within {active_gap:.2%} (the router). Eval: "
        f"{train.eval_batches} validation batches every {train.eval_every} steps and at the end.", "",
        "Columns: train tok/s is the median over the logged windows of "
        f"{train.log_every} steps, on a 2-core machine shared with other processes (noisy); load CV = "
        "std(f)/mean(f), max load = max_i f_i·E (1: balanced, E/k: all tokens on k experts), router entropy "
        "in nats (ln 8 = 2.08 for a uniform router), dropped = fraction of assignments over capacity, "
        "all on the final eval batches and averaged over layers; effective experts = 1/Σ_i f_i² per layer "
        "(E when balanced, k when collapsed), averaged over layers.", "",
    ]


def write_markdown(path: Path, rows: dict, runs: dict, active_gap: float, args) -> None:
    config = next(run["config"] for run in runs.values() if is_moe(run["config"]))
    num_experts = config.model.moe.num_experts
    command = " ".join(["python -m experiments.moe_vs_dense", *args.argv])
    lines = [
        "# Mixture of experts against a dense model at equal activated size (Switch Transformer, in shape)", "",
        f"Written by `{command}` (steps={args.steps}, seeds={args.seeds}, arms={' '.join(rows)}). Training "
        f"took {sum(r['train_minutes'] for r in rows.values()) * args.seeds:.1f} min in all on this machine.", "",
        *setup_text(config, args, active_gap),
        "## Results", "",
        *main_table(rows), "",
        f"![loss and load against step]({path.with_suffix('.png').name})", "",
        "## Per-expert load of the final models (f_i·E on the eval batches, seed 0; 1 = fair share)", "",
        *load_table(runs), "",
    ]
    if {DENSE, BALANCED, UNBALANCED} <= rows.keys():
        dense, moe, free = rows[DENSE], rows[BALANCED], rows[UNBALANCED]
        lines += [
            "## Verdict", "",
            f"**(1) At equal activated parameters the MoE reaches a lower loss than the dense model: "
            f"{verdict_1(rows)}{ONE_SEED if args.seeds == 1 else ''}.** Final eval loss "
            f"{moe['eval_loss']:.4f} (MoE, α=0.01) against {dense['eval_loss']:.4f} (dense), a gap of "
            f"{dense['eval_loss'] - moe['eval_loss']:+.4f} nats (perplexity {moe['perplexity']:.2f} against "
            f"{dense['perplexity']:.2f}); the MoE without the balancing loss: {free['eval_loss']:.4f}. Dense "
            f"minus MoE (α=0.01) eval loss at each evaluation (seed 0): "
            f"{gap_text(runs[DENSE]['records'][0], runs[BALANCED]['records'][0])}. The MoE holds "
            f"{moe['total'] / dense['total']:.1f}× the dense model's parameters at "
            f"{moe['active'] / dense['active']:.3f}× its activated ones; on this CPU it trains at "
            f"{moe['tokens_per_s'] / dense['tokens_per_s']:.2f}× the dense model's tokens/s, "
            "so the claim is about loss per token (per step), not per second here.", "",
            f"**(2) Without the load-balancing loss the load collapses onto few experts: "
            f"{verdict_2(rows, num_experts)}.** Effective experts (of {num_experts}) "
            f"{moe['effective_experts']:.2f} with α=0.01 against {free['effective_experts']:.2f} with α=0 "
            f"(mean over layers; in the most concentrated layer of any seed {moe['fewest_effective_experts']:.2f} "
            f"against {free['fewest_effective_experts']:.2f}); "
            f"max load {moe['max_load']:.2f} against {free['max_load']:.2f}, load CV {moe['load_cv']:.3f} "
            f"against {free['load_cv']:.3f}, router entropy {moe['router_entropy']:.3f} against "
            f"{free['router_entropy']:.3f}. Collapse is taken to mean fewer than {COLLAPSED:.0%} of the "
            "experts in effective use. The z-loss stays on in both arms.", "",
        ]
    lines += [
        f"Caveats: {args.seeds} seed{'s' if args.seeds > 1 else ''}, so "
        + ("differences smaller than the spread between seeds are not resolved; " if args.seeds > 1
           else "the noise between seeds is not measured; ")
        + f"a {args.steps}-step run of a {model_size(config)} model, far from the paper's regime (T5 scale, "
          "hundreds of thousands of steps); B and C use the dropless dispatch, which never drops a token.",
        "",
    ]
    path.write_text("\n".join(lines))


def model_size(config) -> str:
    return f"{count_params(config.model)['active'] / 1e6:.1f}M-activated-parameter"


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if key in r]
    return [s for s, _ in points], [v for _, v in points]


def plot_figure(path: Path, runs: dict) -> None:
    """Left: train loss (lines) and eval loss (dots) of every arm; right: max load of the MoE arms
    (train lines, eval dots). Seed 0."""
    figure = Figure(figsize=(13, 4.8), layout="constrained")
    loss_ax, load_ax = figure.subplots(1, 2)
    for arm, run in runs.items():
        records, color, label = run["records"][0], COLORS[arm], ARMS[arm][1]
        loss_ax.plot(*series(records, "loss"), color=color, alpha=0.6, label=f"{label} (train)")
        loss_ax.plot(*series(records, "eval_loss"), "o--", color=color, label=f"{label} (eval)")
        if run["loads"]:
            load_ax.plot(*series(records, "moe_max_load"), color=color, alpha=0.6, label=f"{label} (train)")
            load_ax.plot(*series(records, "eval_moe_max_load"), "o--", color=color, label=f"{label} (eval)")
    first_eval = max(series(run["records"][0], "eval_loss")[1][0] for run in runs.values())
    lowest = min(min(series(run["records"][0], key)[1]) for run in runs.values() for key in ("loss", "eval_loss"))
    loss_ax.set(xlabel="step", ylabel="loss (nats/token)", title="Train (lines) and eval (dots) loss",
                ylim=(lowest - 0.05, first_eval + 0.1))
    load_ax.axhline(1.0, color="grey", linewidth=0.8)
    load_ax.set(xlabel="step", ylabel="max_i f_i·E (mean over layers)", title="Max expert load (1 = balanced)")
    loss_ax.legend(fontsize=7)
    load_ax.legend(fontsize=7)
    figure.savefig(path, dpi=120)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 steps of a very small model")
    parser.add_argument("--steps", type=int, help="training steps of every arm")
    parser.add_argument("--seeds", type=int, help="seeds 0..S-1 of every arm")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(DEFAULT_ARMS))
    parser.add_argument("--workdir", type=Path, help="where the arms run (default: a directory in the temp dir)")
    parser.add_argument("--output", type=Path, help="path of the .md and .png, without the suffix")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if set(args.arms) <= {DENSE}:
        parser.error("--arms needs at least one MoE arm")
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    suffix = "_quick" if args.quick else ""
    args.workdir = args.workdir or Path(tempfile.gettempdir()) / f"moe_vs_dense_{args.steps}steps{suffix}"
    default_output = args.workdir / "moe_vs_dense" if args.quick else Path("experiments/results/moe_vs_dense")
    args.output = args.output or default_output
    return args


def main(argv=None) -> dict:
    """Trains (or resumes) every arm, writes the figure and the report; returns the table rows."""
    args = parse_args(argv)
    started = time.perf_counter()
    runs = {arm: run_arm(arm, args) for arm in args.arms}
    active_gap = check_equal_setup(runs)
    rows = {arm: summarize(arm, run) for arm, run in runs.items()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    plot_figure(args.output.with_suffix(".png"), runs)
    write_markdown(args.output.with_suffix(".md"), rows, runs, active_gap, args)
    print(f"wrote {args.output.with_suffix('.md')} and .png after {(time.perf_counter() - started) / 60:.1f} min")
    return rows


if __name__ == "__main__":
    main()
