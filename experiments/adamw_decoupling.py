"""Figure 2 of Loshchilov & Hutter (2019), "Decoupled Weight Decay Regularization", in shape.

    python -m experiments run adamw_decoupling [--quick] [--seeds N]

Sweeps learning rate x weight decay for Adam with L2 regularisation and for AdamW on a very
small LLaMA trained on the bundled CPython docs (configs/adamw_decoupling.py holds the model,
the two grids, and how AdamW's decay is kept independent of the learning rate as in the
paper). Both grids are one grid study of `research.sweep` (the config's get_sweep; the study
is <out_dir>/grid/study.db), every cell an ordinary run of the run's seed in <out_dir>/grid/<cell>/,
two at a time, so a rerun resumes. The cells train on one CPU device whatever XLA_FLAGS asks of this
process (experiments/ring_allreduce.py asks for 8 fake ones). Plots adamw_decoupling.png (the two
heatmaps of final validation loss side by side, each learning rate's basin dotted) and reports the
grids, the best cells and the numbers behind the paper's two claims:
(a) with AdamW the best weight decay depends much less on the learning rate (the basin of
    good settings lies along the axes rather than the diagonal);
(b) AdamW's best result is at least as good as Adam's.
The full run (7 × 3 cells per optimizer, 150 steps each) takes about 17 minutes on 2 cores;
`--quick` runs one cell per optimizer (the smallest α, λ = 0) of 4 steps.
"""

import contextlib
import math
import os
import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Claim, Experiment, Outcome, Verdict
from research import config as config_lib
from research import sweep
from research.data import corpus
from research.data.pipeline import tokenized_documents
from research.data.tokenizer import get_tokenizer
from research.sweep_report import draw_heatmap, metric_grid

CONFIG = "configs/adamw_decoupling.py"
METRIC = "eval_loss"
NAME_FIELD = "optimizer.name"
LR_FIELD = "optimizer.learning_rate"
DECAY_FIELDS = {"adam": "optimizer.weight_decay", "adamw": "optimizer.decay_per_step"}
TITLES = {"adam": "Adam + L2:  g ← g + λθ", "adamw": "AdamW:  θ ← θ − η_t·λθ"}
DECAY_LABELS = {"adam": "L2 factor λ", "adamw": "decay per step λ (at the schedule's peak)"}
BASIN_TOLERANCE = 0.01  # a cell is in its row's basin if its loss is within 1% of the row's best
COLOR_SPAN = 0.25  # colours saturate at 25% above the best loss, so the basin's shape shows
FULL = dict(points=0, steps=150)  # points 0: every value of each ladder
QUICK = dict(points=1, steps=4)
PARALLEL = 2  # trials at a time
DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=\d+")

EXPERIMENT = Experiment(
    name="adamw_decoupling",
    title="Decoupled weight decay: Adam + L2 against AdamW (Loshchilov & Hutter 2019, Figure 2 in shape)",
    paper="Decoupled Weight Decay Regularization (Loshchilov & Hutter, ICLR 2019)", arxiv="1711.05101",
    reproduces="Figure 2",
    claims=(Claim("decoupled", "with AdamW the best weight decay depends much less on the learning rate (the basin "
                               "of good settings lies along the axes rather than the diagonal)"),
            Claim("as_good", "AdamW's best result is at least as good as Adam's")),
    full_scale="the same two grids over configs/llama2.py:7b's optimizer on v5p-8 (the 7B row of "
               "experiments/results/pod_fit.md), a few thousand steps per cell",
    cpu_minutes=17,
)


def spec_of(steps: int, points: int) -> str:
    return f"{CONFIG}:steps={steps},points={points}"


@contextlib.contextmanager
def one_cpu_device():
    """XLA_FLAGS without a fake device count while the block runs: the trials (subprocesses that inherit the
    environment) train on one CPU device even where this process has eight."""
    flags = os.environ.get("XLA_FLAGS")
    if flags is not None:
        os.environ["XLA_FLAGS"] = DEVICE_COUNT_FLAG.sub("", flags).strip()
    try:
        yield
    finally:
        if flags is not None:
            os.environ["XLA_FLAGS"] = flags


def run_grid(workdir: Path, *, steps: int, points: int, seed: int) -> dict[str, list]:
    """Both optimizers' learning-rate x decay grids, one grid study (the config's get_sweep) run (or resumed)
    in `workdir`; its outcomes by optimizer."""
    grid = sweep.plan_sweep(spec_of(steps, points), [], fixed=[f"seed={seed}"])
    with one_cpu_device():
        outcomes = sweep.run_sweep(grid, workdir, options=sweep.Options(parallel=PARALLEL),
                                   title="Adam + L2 and AdamW: final validation loss")
    return {optimizer: [o for o in outcomes if o.values[NAME_FIELD] == optimizer] for optimizer in DECAY_FIELDS}


def best_cell(grid: np.ndarray) -> tuple[int, int]:
    """(row, column) of the lowest finite loss; ValueError if every cell failed."""
    if not np.isfinite(grid).any():
        raise ValueError("every cell of the grid failed; see the sweep's results.md")
    return tuple(int(i) for i in np.unravel_index(np.nanargmin(grid), grid.shape))


def row_best_columns(grid: np.ndarray) -> list[int | None]:
    """Each row's column of lowest loss (None for a row without a finite loss)."""
    return [int(np.nanargmin(row)) if np.isfinite(row).any() else None for row in grid]


def basin_edges(grid: np.ndarray, tolerance: float = BASIN_TOLERANCE) -> list[int | None]:
    """Each row's largest column within `tolerance` (relative) of the row's best: how much decay
    that learning rate tolerates (None for a row without a finite loss)."""
    return [int(np.flatnonzero(row).max()) if row.any() else None for row in in_basin(grid, tolerance)]


def spread_in_columns(columns: list[int | None]) -> int:
    """How many grid columns apart the rows' columns lie (0: all the same)."""
    known = [c for c in columns if c is not None]
    return max(known) - min(known) if known else 0


def analyse(outcomes: list, optimizer: str) -> dict:
    """Grid, axes, best cell, each row's best column and basin edge, failed cells of one optimizer."""
    lrs, decays, grid = metric_grid(outcomes, LR_FIELD, DECAY_FIELDS[optimizer], METRIC)
    row, col = best_cell(grid)
    return dict(lrs=lrs, decays=decays, grid=grid, best=(row, col), best_loss=float(grid[row, col]),
                row_best=row_best_columns(grid), edges=basin_edges(grid),
                failed=sum(o.error is not None for o in outcomes))


def plot_figure(path: Path, results: dict) -> None:
    """The two heatmaps side by side on one colour scale; a dot on every cell within
    BASIN_TOLERANCE of its row's best (the basin of each learning rate)."""
    best = min(r["best_loss"] for r in results.values())
    figure = Figure(figsize=(13, 4.8), layout="constrained")
    axes = figure.subplots(1, 2)
    for ax, (optimizer, r) in zip(axes, results.items()):
        image = draw_heatmap(ax, r["grid"], r["lrs"], r["decays"], "learning rate α", DECAY_LABELS[optimizer],
                             "min", vmin=best, vmax=best * (1 + COLOR_SPAN))
        rows, cols = np.nonzero(in_basin(r["grid"]))
        ax.plot(cols, rows - 0.3, "o", color="white", markeredgecolor="black", markersize=5)
        ax.set_title(TITLES[optimizer])
    figure.colorbar(image, ax=axes, label="final validation loss (nats/token)")
    figure.savefig(path, dpi=120)


def in_basin(grid: np.ndarray, tolerance: float = BASIN_TOLERANCE) -> np.ndarray:
    """True for the cells whose loss is within `tolerance` (relative) of their row's best."""
    row_best = np.nanmin(np.where(np.isfinite(grid), grid, np.inf), axis=1, keepdims=True)
    return np.isfinite(grid) & (np.nan_to_num(grid, nan=np.inf) <= row_best * (1 + tolerance))


def grid_table(r: dict, optimizer: str) -> list[str]:
    """A markdown table of one grid: learning rates down, decays across, the best cell bold."""
    lines = [f"| α \\ {DECAY_LABELS[optimizer]} | " + " | ".join(f"{d:g}" for d in r["decays"]) + " |",
             "|---|" + "---|" * len(r["decays"])]
    for i, lr in enumerate(r["lrs"]):
        cells = ["failed" if not math.isfinite(v) else f"**{v:.3f}**" if (i, j) == r["best"] else f"{v:.3f}"
                 for j, v in enumerate(r["grid"][i])]
        lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    return lines


def decays_at(r: dict, columns: list[int | None]) -> str:
    """`α=...: λ, ...`: the decay of the given column of each learning rate's row."""
    return ", ".join(f"α={lr:g}: {r['decays'][c]:g}" if c is not None else f"α={lr:g}: —"
                     for lr, c in zip(r["lrs"], columns))


def training_tokens(config) -> int:
    """Tokens in the training split of the config's corpus under its tokenizer."""
    tokenizer = get_tokenizer(config.data)
    data_dir = corpus.resolve_data_dir(config.data.data_dir)
    return len(tokenized_documents(data_dir, config.data.name, "train", tokenizer).tokens)


def setup_text(config) -> list[str]:
    """What was trained, from the config of the grid's cells."""
    model, train = config.model, config.train
    tokens_per_step = train.batch_size * train.seq_len
    corpus_tokens = training_tokens(config)
    return [
        "## Setup", "",
        "The paper trains a Shake-Shake ResNet on CIFAR-10 for 100 epochs; here the task is a very small "
        f"LLaMA ({model.num_layers} layers, width {model.dim}, {model.num_heads} heads / {model.num_kv_heads} "
        f"KV heads, SwiGLU {model.hidden_dim}, SentencePiece vocabulary of {model.vocab_size}) trained for "
        f"{train.steps} steps of {train.batch_size} x {train.seq_len} tokens on the CPython documentation "
        f"that ships with Python ({corpus_tokens / 1000:.0f}k training tokens, so "
        f"{train.steps * tokens_per_step / corpus_tokens:.1f} passes), scored by the loss on the whole "
        "validation split. An LLM is chosen over sklearn's digits because it runs through the project "
        "itself: the config (`configs/adamw_decoupling.py`), `research.run`, the training loop, the "
        "project's own `adam` and `adamw`, and every cell is a trial of `research.sweep`. "
        f"β {config.optimizer.b1}/{config.optimizer.b2}, ε {config.optimizer.eps:g}, no gradient clipping, "
        f"{config.optimizer.warmup_steps} warmup steps and cosine decay to "
        f"{config.optimizer.final_lr_fraction:.0%}, one seed per cell; the norms and the embedding are not "
        "decayed.", "",
        "Weight decay is parameterised as in the paper. Adam + L2 adds λθ to the gradient, so the decay "
        "passes through 1/(√v̂+ε). AdamW follows Algorithm 2, θ ← θ − η_t(α·m̂/(√v̂+ε) + λθ): the decay is "
        "scaled by the schedule multiplier η_t but not by the learning rate α. The project's `adamw` "
        "(optax's convention) multiplies its weight_decay by α·η_t, so the config passes "
        "weight_decay = λ/α. In optax's units the same grid would read λ_optax = λ/α: a basin that is "
        "vertical here would be diagonal there. The paper's normalised weight decay rescales λ by "
        "√(b/BT), a constant for a fixed batch size and run length, so the shape is unaffected. The two "
        "decay axes are ladders of half decades over different ranges, chosen from one-column probes at "
        "α=4e-3 so that each spans from harmless to harmful.", "",
    ]


def columns_text(count: int) -> str:
    return f"{count} column" + ("" if count == 1 else "s")


def trend(columns: list[int | None]) -> str:
    """How a row-by-row column moves from the smallest to the largest learning rate."""
    known = [c for c in columns if c is not None]
    if not known or known[-1] == known[0]:
        return "ends where it starts"
    return "moves to larger λ" if known[-1] > known[0] else "moves to smaller λ"


def edge_values(r: dict) -> list[float]:
    """The decay at each row's basin edge (rows without a finite loss left out)."""
    return [r["decays"][c] for c in r["edges"] if c is not None]


def decades_text(values: list[float]) -> str:
    """How many decades the values span; undefined when one is 0 (no decay tolerated)."""
    if not values or min(values) <= 0:
        return "an undefined number of decades (an edge at λ=0)"
    return f"{math.log10(max(values) / min(values)):.1f} decades"


def border_note(r: dict) -> str:
    """A warning when the best cell is at the largest λ or at either end of the α axis, so that
    a better setting may lie outside the grid."""
    row, col = r["best"]
    sides = [side for side, hit in (("the largest λ", col == len(r["decays"]) - 1 and len(r["decays"]) > 1),
                                    ("the smallest α", row == 0 and len(r["lrs"]) > 1),
                                    ("the largest α", row == len(r["lrs"]) - 1 and len(r["lrs"]) > 1)) if hit]
    return f" (on the grid's border: {' and '.join(sides)}; a better setting may lie outside the grid)" if sides else ""


def markdown_body(results: dict, steps: int, points: int) -> str:
    """Setup, figure notes, both grids with their best cells, and the numbers behind each claim."""
    adam, adamw = results["adam"], results["adamw"]
    zero_gap = np.nanmax(np.abs(adam["grid"][:, 0] - adamw["grid"][:, 0]))
    lines = [
        f"steps={steps}, points={points or 'all'}: {sum(r['grid'].size for r in results.values())} runs, "
        f"{PARALLEL} at a time.", "",
        *setup_text(config_lib.load(spec_of(steps, points))),
        f"Dots: the cells within {BASIN_TOLERANCE:.0%} of their learning rate's best (each row's basin); red "
        "frame: the best cell. Colours saturate at "
        f"{COLOR_SPAN:.0%} above the best loss. λ=0 is the same computation for both optimizers: their "
        f"λ=0 columns differ by at most {zero_gap:.2g}.", "",
    ]
    for optimizer, r in results.items():
        lines += [f"## {TITLES[optimizer]}", "", *grid_table(r, optimizer), "",
                  f"Best: {r['best_loss']:.4f} at α={r['lrs'][r['best'][0]]:g}, "
                  f"λ={r['decays'][r['best'][1]]:g}{border_note(r)}. Best λ at each α: "
                  f"{decays_at(r, r['row_best'])}. Largest λ within {BASIN_TOLERANCE:.0%} of each α's best "
                  f"(the basin's edge): {decays_at(r, r['edges'])}. Failed cells: {r['failed']}.", ""]
    adam_edges, adamw_edges = edge_values(adam), edge_values(adamw)
    optax_edges = [edge / lr for edge, lr in zip(adamw_edges, adamw["lrs"])]
    lines += [
        "## The claims in numbers", "",
        f"(a) Across the {len(adam['lrs'])} learning rates, the edge of the basin (the largest λ within "
        f"{BASIN_TOLERANCE:.0%} of that learning rate's best loss) moves over "
        f"{columns_text(spread_in_columns(adam['edges']))} (half decades) with Adam + L2 and over "
        f"{columns_text(spread_in_columns(adamw['edges']))} with AdamW; the best λ moves over "
        f"{columns_text(spread_in_columns(adam['row_best']))} and "
        f"{columns_text(spread_in_columns(adamw['row_best']))}. "
        f"As α grows, Adam + L2's edge {trend(adam['edges'])} and AdamW's {trend(adamw['edges'])}: the edges span "
        f"{decades_text(adam_edges)} with Adam + L2 and {decades_text(adamw_edges)} with AdamW in the paper's units, "
        f"{decades_text(optax_edges)} in optax's units λ/α ({', '.join(f'{e:.3g}' for e in optax_edges)}); an "
        "edge at the largest λ is only a lower bound. The claim is taken to hold when AdamW's basin edge moves "
        "less and its best λ no more; the best λ alone is decided by differences within noise where a row is "
        "flat.", "",
        f"(b) Best cells: {adam['best_loss']:.4f} (Adam + L2) against {adamw['best_loss']:.4f} (AdamW).", "",
        "Caveats: one tiny model, a short run, one seed per cell and a grid of half decades; the gallery's "
        "--seeds reruns the whole grid per seed. The paper's regime (100 epochs, where weight decay "
        "regularises) is not reached.",
    ]
    return "\n".join(lines)


def run(out_dir: Path, *, quick: bool, seed: int) -> Outcome:
    """Runs (or resumes) both grids in out_dir/grid, plots the heatmaps and tabulates the cells."""
    scale = QUICK if quick else FULL
    outcomes = run_grid(out_dir / "grid", seed=seed, **scale)
    results = {optimizer: analyse(group, optimizer) for optimizer, group in outcomes.items()}
    plot_figure(out_dir / "adamw_decoupling.png", results)
    headline = {}
    for optimizer, r in results.items():
        headline.update({f"best_loss_{optimizer}": r["best_loss"],
                         f"edge_spread_{optimizer}": spread_in_columns(r["edges"]),
                         f"best_decay_spread_{optimizer}": spread_in_columns(r["row_best"])})
    rows = [{"optimizer": optimizer, "learning_rate": lr, "decay": decay, METRIC: float(r["grid"][i, j])}
            for optimizer, r in results.items() for i, lr in enumerate(r["lrs"]) for j, decay in enumerate(r["decays"])]
    return Outcome(headline=headline, rows=rows, markdown=markdown_body(results, **scale),
                   plots=(out_dir / "adamw_decoupling.png",))


def judge(headline: dict) -> dict:
    """(a) AdamW's basin edge moves over fewer grid columns across the learning rates than Adam + L2's and its
    best decay over no more (holds); both no fewer (does not hold); the two measures disagree (in part).
    (b) AdamW's best loss at most Adam's (holds), above it within the seeds' spread (in part), beyond it (not)."""
    edges = headline["edge_spread_adamw"].mean, headline["edge_spread_adam"].mean
    bests = headline["best_decay_spread_adamw"].mean, headline["best_decay_spread_adam"].mean
    if edges[0] < edges[1] and bests[0] <= bests[1]:
        decoupled = HOLDS
    elif edges[0] >= edges[1] and bests[0] >= bests[1]:
        decoupled = DOES_NOT_HOLD
    else:
        decoupled = HOLDS_IN_PART
    adam, adamw = headline["best_loss_adam"], headline["best_loss_adamw"]
    gap, spread = adamw.mean - adam.mean, max(adam.std, adamw.std)
    as_good = HOLDS if gap <= 0 else HOLDS_IN_PART if gap <= spread else DOES_NOT_HOLD
    return {"decoupled": Verdict(decoupled, f"the basin's edge moves over {edges[1]:g} columns with Adam + L2, "
                                            f"{edges[0]:g} with AdamW; the best λ over {bests[1]:g} and {bests[0]:g}"),
            "as_good": Verdict(as_good, f"best loss Adam + L2 {adam.mean:.4f}, AdamW {adamw.mean:.4f} ({gap:+.4f}, "
                                        f"seed std {spread:.4f})")}
