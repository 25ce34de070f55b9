"""Switch Transformer (Fedus et al., 2022) in shape: a tiny MoE against a dense LLaMA at equal activated size.

    python -m experiments run moe_vs_dense [--quick] [--seeds N]

Trains, with the same seed, data order, steps and tokens, on the CPython docs that ship with Python:
    dense           configs/llama2.py:tiny, SwiGLU width 688
    moe             configs/seed_thinking.py:tiny, 8 experts of width 344, top-2 (activated width
                    2·344 = 688), dropless dispatch, load-balancing loss α = 0.01
    moe_no_balance  the same MoE with α = 0 (the router z-loss, 1e-3, stays on)
Every arm is `research.train.loop.train` in <out_dir>/<arm>/ on one device, seeded with the run's
seed; an arm with a results.json is not run again, an interrupted one resumes from its checkpoint.
After training, the final checkpoint of every MoE arm is run on the evaluation batches to get each
layer's per-expert load. Plots moe_vs_dense.png (left: train and eval loss against step; right: the
MoE arms' max load, max_i f_i·E, against step) and reports the table of arms, the per-expert loads
and the numbers behind the paper's two claims:
(1) at equal activated parameters (equal FLOPs per token) the MoE reaches a lower loss than the dense model;
(2) without the load-balancing loss the load collapses onto few experts.
The full run is 100 steps (half of the tiny recipe's 200, so that the three arms train in about
12 minutes per seed on 2 CPU cores: on a CPU the dropless MoE step is ~2.5x slower than the dense
one). `--quick` trains 4 steps of a very small model (byte tokenizer).
"""

from pathlib import Path

import jax
import numpy as np
from matplotlib.figure import Figure

from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Claim, Experiment, Outcome, Verdict
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
}
DENSE, BALANCED, UNBALANCED = "dense", "moe", "moe_no_balance"
COLORS = {"dense": "black", "moe": "tab:blue", "moe_no_balance": "tab:red"}
COMMON = ["train.eval_every=25", "evals.samples.prompts=()"]
# A very small model for --quick: the dense FFN width is the MoE's top_k x expert width (2 x 64).
QUICK_SHAPE = ["model.dim=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
               "model.vocab_size=260", "data.tokenizer=byte", "train.seq_len=32", "train.batch_size=8",
               "train.log_every=1", "train.eval_every=2", "train.eval_batches=1", "train.checkpoint_every=0",
               "optimizer.warmup_steps=1"]
QUICK_FFN = {"dense": ["model.hidden_dim=128"], "moe": ["model.moe.expert_hidden_dim=64"]}
STEPS, QUICK_STEPS = 100, 4
COLLAPSED = 0.5  # the load counts as collapsed when fewer than this fraction of the experts is in effective use

EXPERIMENT = Experiment(
    name="moe_vs_dense",
    title="Mixture of experts against a dense model at equal activated size (Switch Transformer, in shape)",
    paper="Switch Transformers (Fedus, Zoph & Shazeer, 2022)", arxiv="2101.03961",
    reproduces="Fig. 1 and Table 1 in shape (MoE against dense at equal FLOPs per token), §2.2 (load balancing)",
    claims=(Claim("lower_loss", "at equal activated parameters (equal FLOPs per token) the MoE reaches a lower loss "
                                "than the dense model"),
            Claim("collapse", "without the load-balancing loss the load collapses onto few experts")),
    full_scale="configs/seed_thinking.py's MoE (20B activated of 200B) against a dense model of its activated size, "
               "v5p-128 (64 chips, fsdp 64: the Seed-Thinking row of experiments/results/pod_fit.md)",
    cpu_minutes=12,
)


def arm_config(arm: str, *, quick: bool, seed: int):
    """The validated config of `arm` with `seed`, STEPS steps (quick: QUICK_STEPS of the small shapes)."""
    spec = ARMS[arm][0]
    overrides = [*COMMON, f"train.steps={QUICK_STEPS if quick else STEPS}", f"seed={seed}"]
    if quick:
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


def run_arm(arm: str, workdir: Path, *, quick: bool, seed: int) -> dict:
    """Trains `arm` in `workdir`; its config, parameter counts, results, metric records and final expert load
    (None for the dense arm)."""
    config = arm_config(arm, quick=quick, seed=seed)
    results = train_or_reuse(config, workdir)
    load = final_expert_load(config, workdir) if is_moe(config) else None
    return dict(config=config, params=count_params(config.model), results=results,
                records=read_metrics(str(workdir)), load=load)


def summarize(arm: str, run: dict) -> dict:
    """The table row of an arm (the MoE measures None for the dense arm)."""
    results = run["results"]
    row = dict(arm=arm, label=ARMS[arm][1], total=run["params"]["total"], active=run["params"]["active"],
               eval_loss=results["eval_loss"], perplexity=results["eval_perplexity"],
               tokens_per_s=median_tokens_per_s(run["records"]), train_minutes=results["wall_time_s"] / 60)
    for name in ("load_cv", "max_load", "router_entropy", "dropped_fraction"):
        row[name] = results.get(f"eval_moe_{name}")
    per_layer = None if run["load"] is None else effective_experts(run["load"])
    row["effective_experts"] = None if per_layer is None else float(per_layer.mean())
    row["fewest_effective_experts"] = None if per_layer is None else float(per_layer.min())
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
        lines.append(
            f"| {row['label']} | {row['total']:,} | {row['active']:,} | {row['eval_loss']:.4f} | "
            f"{row['perplexity']:.2f} | "
            f"{row['tokens_per_s']:.0f} | {row['train_minutes']:.1f} | {optional(row['load_cv'], '.3f')} | "
            f"{optional(row['max_load'], '.2f')} | {optional(row['router_entropy'], '.3f')} | "
            f"{optional(row['dropped_fraction'], '.3f')} | {optional(row['effective_experts'], '.2f')} |")
    return lines


def load_table(runs: dict) -> list[str]:
    """f_i·E per layer and expert of every MoE arm's final model: 1 is the fair share."""
    moe_runs = {arm: run for arm, run in runs.items() if run["load"] is not None}
    num_experts = next(iter(moe_runs.values()))["load"].shape[-1]
    lines = ["| arm | layer | " + " | ".join(f"e{i}" for i in range(num_experts)) + " | effective experts |",
             "|---|---|" + "---|" * (num_experts + 1)]
    for arm, run in moe_runs.items():
        load = run["load"]
        for layer, (layer_load, effective) in enumerate(zip(load, effective_experts(load))):
            cells = " | ".join(f"{v * num_experts:.2f}" for v in layer_load)
            lines.append(f"| {ARMS[arm][1].split(':')[0]} | {layer} | {cells} | {effective:.2f} |")
    return lines


def training_tokens(config) -> int:
    """Tokens in the training split of the config's corpus under its tokenizer."""
    tokenizer = get_tokenizer(config.data)
    data_dir = corpus.resolve_data_dir(config.data.data_dir)
    return len(tokenized_documents(data_dir, config.data.name, "train", tokenizer).tokens)


def setup_text(config, active_gap: float) -> list[str]:
    model, train, moe = config.model, config.train, config.model.moe
    tokens = train.steps * train.batch_size * train.seq_len
    return [
        "## Setup", "",
        f"All arms: LLaMA with {model.num_layers} layers, width {model.dim}, {model.num_heads} heads / "
        f"{model.num_kv_heads} KV heads, vocabulary {model.vocab_size} ({config.data.tokenizer}), trained "
        f"{train.steps} steps of {train.batch_size} × {train.seq_len} tokens ({tokens:,} tokens, "
        f"{tokens / training_tokens(config):.1f} passes over the training split of `{config.data.name}`) with "
        f"AdamW {config.optimizer.learning_rate:g} warmup-cosine, seed {config.seed}: the same data in the same "
        "order for every arm. "
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


def markdown_body(rows: dict, runs: dict, active_gap: float) -> str:
    """Setup, the table of arms, the per-expert loads and the numbers behind each claim."""
    config = runs[BALANCED]["config"]
    dense, moe, free = rows[DENSE], rows[BALANCED], rows[UNBALANCED]
    lines = [
        f"Training took {sum(r['train_minutes'] for r in rows.values()):.1f} min in all on this machine.", "",
        *setup_text(config, active_gap),
        "## Results", "",
        *main_table(rows), "",
        "## Per-expert load of the final models (f_i·E on the eval batches; 1 = fair share)", "",
        *load_table(runs), "",
        "## The claims in numbers", "",
        f"(1) Final eval loss {moe['eval_loss']:.4f} (MoE, α=0.01) against {dense['eval_loss']:.4f} (dense), a gap "
        f"of {dense['eval_loss'] - moe['eval_loss']:+.4f} nats (perplexity {moe['perplexity']:.2f} against "
        f"{dense['perplexity']:.2f}); the MoE without the balancing loss: {free['eval_loss']:.4f}. Dense minus MoE "
        f"(α=0.01) eval loss at each evaluation: {gap_text(runs[DENSE]['records'], runs[BALANCED]['records'])}. "
        f"The MoE holds {moe['total'] / dense['total']:.1f}× the dense model's parameters at "
        f"{moe['active'] / dense['active']:.3f}× its activated ones; on this CPU it trains at "
        f"{moe['tokens_per_s'] / dense['tokens_per_s']:.2f}× the dense model's tokens/s, so the claim is about "
        "loss per token (per step), not per second here.", "",
        f"(2) Effective experts (of {config.model.moe.num_experts}) {moe['effective_experts']:.2f} with α=0.01 "
        f"against {free['effective_experts']:.2f} with α=0 (mean over layers; in the most concentrated layer "
        f"{moe['fewest_effective_experts']:.2f} against {free['fewest_effective_experts']:.2f}); max load "
        f"{moe['max_load']:.2f} against {free['max_load']:.2f}, load CV {moe['load_cv']:.3f} against "
        f"{free['load_cv']:.3f}, router entropy {moe['router_entropy']:.3f} against {free['router_entropy']:.3f}. "
        f"Collapse is taken to mean fewer than {COLLAPSED:.0%} of the experts in effective use. The z-loss stays "
        "on in both arms.", "",
        f"Caveats: a {config.train.steps}-step run of a {model_size(config)} model, far from the paper's regime "
        "(T5 scale, hundreds of thousands of steps); B and C use the dropless dispatch, which never drops a token.",
    ]
    return "\n".join(lines)


def model_size(config) -> str:
    return f"{count_params(config.model)['active'] / 1e6:.1f}M-activated-parameter"


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if key in r]
    return [s for s, _ in points], [v for _, v in points]


def plot_figure(path: Path, runs: dict) -> None:
    """Left: train loss (lines) and eval loss (dots) of every arm; right: max load of the MoE arms
    (train lines, eval dots)."""
    figure = Figure(figsize=(13, 4.8), layout="constrained")
    loss_ax, load_ax = figure.subplots(1, 2)
    for arm, run in runs.items():
        records, color, label = run["records"], COLORS[arm], ARMS[arm][1]
        loss_ax.plot(*series(records, "loss"), color=color, alpha=0.6, label=f"{label} (train)")
        loss_ax.plot(*series(records, "eval_loss"), "o--", color=color, label=f"{label} (eval)")
        if run["load"] is not None:
            load_ax.plot(*series(records, "moe_max_load"), color=color, alpha=0.6, label=f"{label} (train)")
            load_ax.plot(*series(records, "eval_moe_max_load"), "o--", color=color, label=f"{label} (eval)")
    first_eval = max(series(run["records"], "eval_loss")[1][0] for run in runs.values())
    lowest = min(min(series(run["records"], key)[1]) for run in runs.values() for key in ("loss", "eval_loss"))
    loss_ax.set(xlabel="step", ylabel="loss (nats/token)", title="Train (lines) and eval (dots) loss",
                ylim=(lowest - 0.05, first_eval + 0.1))
    load_ax.axhline(1.0, color="grey", linewidth=0.8)
    load_ax.set(xlabel="step", ylabel="max_i f_i·E (mean over layers)", title="Max expert load (1 = balanced)")
    loss_ax.legend(fontsize=7)
    load_ax.legend(fontsize=7)
    figure.savefig(path, dpi=120)


def run(out_dir: Path, *, quick: bool, seed: int) -> Outcome:
    """Trains (or resumes) every arm in out_dir/<arm>, plots the curves and tabulates the arms."""
    runs = {arm: run_arm(arm, out_dir / arm, quick=quick, seed=seed) for arm in ARMS}
    active_gap = check_equal_setup(runs)
    rows = {arm: summarize(arm, arm_run) for arm, arm_run in runs.items()}
    plot_figure(out_dir / "moe_vs_dense.png", runs)
    num_experts = runs[BALANCED]["config"].model.moe.num_experts
    headline = {**{f"eval_loss_{arm}": row["eval_loss"] for arm, row in rows.items()},
                **{f"experts_in_use_{arm}": rows[arm]["effective_experts"] / num_experts
                   for arm in (BALANCED, UNBALANCED)}}
    table = [{key: value for key, value in row.items() if key != "label"} for row in rows.values()]
    return Outcome(headline=headline, rows=table, markdown=markdown_body(rows, runs, active_gap),
                   plots=(out_dir / "moe_vs_dense.png",))


def judge(headline: dict) -> dict:
    """(1) The balanced MoE's eval loss below the dense model's by more than the seeds' spread (holds), below it
    within the spread (in part), not below. (2) Without the balancing loss, fewer experts in effective use
    (1/Σ f_i² over E) than with it, down to fewer than COLLAPSED of them (holds); only fewer is in part."""
    dense, moe = headline[f"eval_loss_{DENSE}"], headline[f"eval_loss_{BALANCED}"]
    gap, spread = dense.mean - moe.mean, max(dense.std, moe.std)
    loss_status = HOLDS if gap > spread else HOLDS_IN_PART if gap > 0 else DOES_NOT_HOLD
    balanced, free = headline[f"experts_in_use_{BALANCED}"].mean, headline[f"experts_in_use_{UNBALANCED}"].mean
    collapse_status = DOES_NOT_HOLD if free >= balanced else HOLDS if free < COLLAPSED else HOLDS_IN_PART
    return {"lower_loss": Verdict(loss_status, f"eval loss dense {dense.mean:.4f}, MoE {moe.mean:.4f} "
                                               f"({gap:+.4f} nats for the MoE, seed std {spread:.4f})"),
            "collapse": Verdict(collapse_status, f"experts in effective use {balanced:.0%} with the balancing loss, "
                                                 f"{free:.0%} without (collapse: under {COLLAPSED:.0%})")}
