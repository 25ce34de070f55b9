"""Figure 2 of Loshchilov & Hutter (2019), "Decoupled Weight Decay Regularization", in shape.

    python -m experiments.adamw_decoupling [--quick] [--points K] [--steps N] [--seeds S]
                                           [--parallel N] [--workdir DIR] [--output PATH]

Sweeps learning rate x weight decay for Adam with L2 regularisation and for AdamW on a very
small LLaMA trained on the bundled CPython docs (configs/adamw_decoupling.py holds the model,
the two grids, and how AdamW's decay is kept independent of the learning rate as in the
paper). Both grids are one grid study of `research.sweep` (the config's get_sweep; the study
is <workdir>/grid/study.db), every cell an ordinary run in <workdir>/grid/<cell>/, so a rerun
resumes; then the best cell of each optimizer is trained again with `--seeds` other seeds
(<workdir>/best_seeds/). Writes <output>.png (the
two heatmaps of final validation loss side by side, each learning rate's basin dotted) and
<output>.md (the grids, the best cells, and the verdict on the paper's two claims):
(a) with AdamW the best weight decay depends much less on the learning rate (the basin of
    good settings lies along the axes rather than the diagonal);
(b) AdamW's best result is at least as good as Adam's.
`--quick` runs 3x3 grids of 40 steps without seed reruns and writes into the workdir unless
`--output` is given; the default writes experiments/results/adamw_decoupling.{md,png}.
"""

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from research import config as config_lib
from research import sweep
from research.data import corpus
from research.data.pipeline import tokenized_documents
from research.data.tokenizer import get_tokenizer
from research.sweep_report import draw_heatmap, metric_grid, metric_of
from research.sweep_space import override_text

CONFIG = "configs/adamw_decoupling.py"
METRIC = "eval_loss"
NAME_FIELD = "optimizer.name"
LR_FIELD = "optimizer.learning_rate"
DECAY_FIELDS = {"adam": "optimizer.weight_decay", "adamw": "optimizer.decay_per_step"}
TITLES = {"adam": "Adam + L2:  g ← g + λθ", "adamw": "AdamW:  θ ← θ − η_t·λθ"}
DECAY_LABELS = {"adam": "L2 factor λ", "adamw": "decay per step λ (at the schedule's peak)"}
BASIN_TOLERANCE = 0.01  # a cell is in its row's basin if its loss is within 1% of the row's best
COLOR_SPAN = 0.25  # colours saturate at 25% above the best loss, so the basin's shape shows
FULL = dict(points=0, steps=150, seeds=1)
QUICK = dict(points=3, steps=40, seeds=0)


def spec_of(steps: int, points: int) -> str:
    return f"{CONFIG}:steps={steps},points={points}"


def run_trials(name: str, grid: sweep.Sweep, args, title: str) -> dict[str, list]:
    """Runs (or resumes) `grid` as the study of <workdir>/<name>; its outcomes by optimizer."""
    outcomes = sweep.run_sweep(grid, args.workdir / name, options=sweep.Options(parallel=args.parallel), title=title)
    return {optimizer: [o for o in outcomes if o.values[NAME_FIELD] == optimizer] for optimizer in DECAY_FIELDS}


def run_grid(args) -> dict[str, list]:
    """Both optimizers' learning-rate x decay grids, one grid study (the config's get_sweep)."""
    grid = sweep.plan_sweep(spec_of(args.steps, args.points), [])
    return run_trials("grid", grid, args, "Adam + L2 and AdamW: final validation loss")


def run_seeds(best_values: dict[str, dict], args) -> dict[str, list[float]]:
    """Final losses of each optimizer's best cell trained again with seeds 1..args.seeds (NaN if failed)."""
    plan = [{NAME_FIELD: optimizer, **{field: override_text(value) for field, value in values.items()},
             "seed": str(seed)}
            for optimizer, values in best_values.items() for seed in range(1, args.seeds + 1)]
    grid = sweep.grid_sweep(spec_of(args.steps, args.points), plan)
    outcomes = run_trials("best_seeds", grid, args, "The best cell of each optimizer with other seeds")
    return {optimizer: [metric_of(o, METRIC) for o in group] for optimizer, group in outcomes.items()}


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


def verdict_a(adam: dict, adamw: dict) -> str:
    """Claim (a) in words: does the basin's edge (and, second, the best decay) move across fewer
    columns as the learning rate changes with AdamW than with Adam + L2?"""
    edges = spread_in_columns(adamw["edges"]), spread_in_columns(adam["edges"])
    bests = spread_in_columns(adamw["row_best"]), spread_in_columns(adam["row_best"])
    if edges[0] < edges[1] and bests[0] <= bests[1]:
        return "holds"
    if edges[0] > edges[1] and bests[0] >= bests[1]:
        return "does not hold (the opposite is seen)"
    return "is not resolved (the measures tie or disagree)"


def verdict_b(adam_losses: list[float], adamw_losses: list[float]) -> str:
    """Claim (b) in words: AdamW's best at least as good as Adam's, within the seed spread."""
    adam_mean, adamw_mean = np.nanmean(adam_losses), np.nanmean(adamw_losses)
    spread = max(np.nanstd(adam_losses), np.nanstd(adamw_losses)) if len(adam_losses) > 1 else 0.0
    if adamw_mean <= adam_mean:
        return "holds"
    if adamw_mean - adam_mean <= spread:
        return "holds within the seed-to-seed spread"
    return "does not hold"


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


def trials_span_s(workdir: Path) -> float:
    """Seconds from the first trial's start (its config.json, written as the run begins) to the
    last trial's results.json, over every trial under `workdir`."""
    starts = [path.stat().st_mtime for path in workdir.glob("*/*/config.json")]
    ends = [path.stat().st_mtime for path in workdir.glob("*/*/results.json")]
    return max(ends) - min(starts) if starts and ends else 0.0


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


def write_markdown(path: Path, results: dict, seeds: dict, args) -> None:
    """The report: setup, figure, grids, best cells, verdicts."""
    adam, adamw = results["adam"], results["adamw"]
    a, b = verdict_a(adam, adamw), verdict_b(seeds["adam"], seeds["adamw"])
    zero_gap = np.nanmax(np.abs(adam["grid"][:, 0] - adamw["grid"][:, 0]))
    trials = sum(r["grid"].size for r in results.values()) + sum(len(s) - 1 for s in seeds.values())
    lines = [
        "# Decoupled weight decay: Adam + L2 against AdamW (Loshchilov & Hutter 2019, Figure 2 in shape)", "",
        f"Written by `python -m experiments.adamw_decoupling{' --quick' if args.quick else ''}` "
        f"(steps={args.steps}, points={args.points or 'all'}, seeds={args.seeds}). Its {trials} runs took "
        f"{trials_span_s(args.workdir) / 60:.1f} min of wall-clock time on this machine, {args.parallel} at a "
        "time (from the first run's start to the last run's results, including any pause between "
        "invocations).", "",
        *setup_text(config_lib.load(spec_of(args.steps, args.points))),
        f"![Adam + L2 and AdamW heatmaps]({path.with_suffix('.png').name})", "",
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
    seed_shifts = {optimizer: np.nanmax(np.abs(np.array(losses) - losses[0])) for optimizer, losses in seeds.items()}
    seed_text = "; ".join(f"{optimizer}: " + ", ".join(f"{loss:.4f}" for loss in losses)
                          for optimizer, losses in seeds.items())
    lines += [
        "## Verdict", "",
        f"**(a) With AdamW the best weight decay depends much less on the learning rate: {a}.** Across the "
        f"{len(adam['lrs'])} learning rates, the edge of the basin (the largest λ within {BASIN_TOLERANCE:.0%} "
        f"of that learning rate's best loss) moves over {columns_text(spread_in_columns(adam['edges']))} "
        f"(half decades) with Adam + L2 and over {columns_text(spread_in_columns(adamw['edges']))} with AdamW; "
        f"the best λ moves over {columns_text(spread_in_columns(adam['row_best']))} and "
        f"{columns_text(spread_in_columns(adamw['row_best']))}. As α grows, Adam + L2's edge "
        f"{trend(adam['edges'])} and AdamW's {trend(adamw['edges'])}: the edges span {decades_text(adam_edges)} "
        f"with Adam + L2 and {decades_text(adamw_edges)} with AdamW in the paper's units, "
        f"{decades_text(optax_edges)} in optax's units λ/α ({', '.join(f'{e:.3g}' for e in optax_edges)}); an "
        "edge at the largest λ is only a lower bound. The claim is taken to hold when AdamW's basin edge moves "
        "less and its best λ no more; the best λ alone is decided by differences within noise where a row is "
        "flat.", "",
        f"**(b) AdamW's best result is at least as good as Adam's: {b}.** Best cells (seed 0, then the "
        f"reruns with other seeds): {seed_text}; mean {np.nanmean(seeds['adam']):.4f} (Adam + L2) against "
        f"{np.nanmean(seeds['adamw']):.4f} (AdamW).", "",
        "Caveats: one tiny model, a short run, one seed per cell and a grid of half decades. "
        + (f"Other seeds moved the best cells' loss by up to {seed_shifts['adam']:.4f} (Adam + L2) and "
           f"{seed_shifts['adamw']:.4f} (AdamW), so smaller differences between cells are not resolved. "
           if args.seeds else "No seed reruns, so the noise between cells is not measured. ")
        + "The paper's regime (100 epochs, where weight decay regularises) is not reached.", "",
    ]
    path.write_text("\n".join(lines))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3x3 grids of 40 steps, no seed reruns")
    parser.add_argument("--points", type=int, help="values per axis, spread over each ladder (0: all)")
    parser.add_argument("--steps", type=int, help="training steps per cell")
    parser.add_argument("--seeds", type=int, help="extra seeds for each optimizer's best cell")
    parser.add_argument("--parallel", type=int, default=2, help="trials at a time")
    parser.add_argument("--workdir", type=Path, help="where the trials run (default: a directory in the temp dir)")
    parser.add_argument("--output", type=Path, help="path of the .md and .png, without the suffix")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.workdir = args.workdir or Path(tempfile.gettempdir()) / f"adamw_decoupling_{args.steps}steps"
    default_output = args.workdir / "adamw_decoupling" if args.quick else Path("experiments/results/adamw_decoupling")
    args.output = args.output or default_output
    return args


def main(argv=None) -> dict:
    """Runs (or resumes) both grids and the seed reruns, writes the figure and the report; returns
    the analysis of each optimizer."""
    args = parse_args(argv)
    started = time.perf_counter()
    results = {optimizer: analyse(outcomes, optimizer) for optimizer, outcomes in run_grid(args).items()}
    best_values = {optimizer: {LR_FIELD: r["lrs"][r["best"][0]], DECAY_FIELDS[optimizer]: r["decays"][r["best"][1]]}
                   for optimizer, r in results.items()}
    extra = run_seeds(best_values, args) if args.seeds else {optimizer: [] for optimizer in results}
    seeds = {optimizer: [r["best_loss"], *extra[optimizer]] for optimizer, r in results.items()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    plot_figure(args.output.with_suffix(".png"), results)
    write_markdown(args.output.with_suffix(".md"), results, seeds, args)
    print(f"wrote {args.output.with_suffix('.md')} and .png after {(time.perf_counter() - started) / 60:.1f} min")
    return results


if __name__ == "__main__":
    main()
