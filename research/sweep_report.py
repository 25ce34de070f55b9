"""The report of a sweep: results.csv, results.md (ranked table, failed trials) and results.png,
and of its Optuna study: history.png (the metric by trial, best so far) and importance.png.

The table ranks the finished and pruned trials (a pruned one by its last reported value) by one
key of their results, best first; trials without that key (or with NaN) come last, failed trials
are listed apart with the tail of their log. The plot shows that metric as a heatmap when two fields were swept over a
complete grid (the first field up the rows, the second across the columns), as a line over
the values of one swept field, and otherwise as one scatter panel per swept field.
Plots are drawn on `matplotlib.figure.Figure` (the Agg canvas), never through pyplot.
"""

import csv
import dataclasses
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


@dataclasses.dataclass(frozen=True)
class TrialOutcome:
    """One trial as the report sees it: its name, swept values, results or error, and the step
    a pruner stopped it at (None if it was not pruned)."""

    name: str
    values: dict
    results: dict | None
    error: str | None
    pruned_at: int | None = None

    @property
    def status(self) -> str:
        return "failed" if self.error is not None else "finished" if self.pruned_at is None else "pruned"


def metric_of(outcome: TrialOutcome, metric: str) -> float:
    """The trial's `metric` as a float; NaN when it failed or its results lack the key."""
    value = (outcome.results or {}).get(metric)
    return float(value) if is_number(value) else math.nan


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def ranked(outcomes: Sequence[TrialOutcome], metric: str, mode: str) -> list[TrialOutcome]:
    """The finished trials, best `metric` first under `mode` ("min"/"max"), NaN last, ties in order."""
    sign = 1.0 if mode == "min" else -1.0

    def key(outcome):
        value = metric_of(outcome, metric)
        return (math.isnan(value), 0.0 if math.isnan(value) else sign * value)

    return sorted([outcome for outcome in outcomes if outcome.error is None], key=key)


def format_value(value) -> str:
    """A swept value or metric for a table cell: floats to 4 significant digits."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_reports(workdir: Path, title: str, fields: Sequence[str], outcomes: Sequence[TrialOutcome],
                  metric: str, mode: str, notes: Sequence[str] = ()) -> None:
    """Writes results.csv, results.md and results.png into `workdir`."""
    write_csv(workdir / "results.csv", fields, outcomes, metric, mode)
    write_markdown(workdir / "results.md", title, fields, outcomes, metric, mode, notes)
    plot(workdir / "results.png", fields, outcomes, metric, mode)


def write_csv(path: Path, fields: Sequence[str], outcomes: Sequence[TrialOutcome], metric: str, mode: str) -> None:
    """One row per trial, ranked then failed: name, swept values, status, every numeric result
    (`metric` first) and the last line of the error of a failed trial."""
    numeric_keys = sorted({key for outcome in outcomes for key, value in (outcome.results or {}).items()
                           if is_number(value)} - {metric})
    failed = [outcome for outcome in outcomes if outcome.error is not None]
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["trial", *fields, "status", metric, *numeric_keys, "error"])
        for outcome in [*ranked(outcomes, metric, mode), *failed]:
            results = outcome.results or {}
            writer.writerow([outcome.name, *(outcome.values.get(field, "") for field in fields),
                             outcome.status,
                             results.get(metric, ""), *(results.get(key, "") for key in numeric_keys),
                             outcome.error.splitlines()[-1] if outcome.error else ""])


def write_markdown(path: Path, title: str, fields: Sequence[str], outcomes: Sequence[TrialOutcome],
                   metric: str, mode: str, notes: Sequence[str] = ()) -> None:
    """The ranked table (rank, swept values, metric, trial name), then each failed trial's log tail."""
    best_first = ranked(outcomes, metric, mode)
    failed = [outcome for outcome in outcomes if outcome.error is not None]
    pruned = sum(outcome.pruned_at is not None for outcome in outcomes)
    direction = "lower" if mode == "min" else "higher"
    lines = [f"# {title}", "",
             f"{len(outcomes)} trials: {len(best_first) - pruned} finished, "
             f"{f'{pruned} pruned, ' if pruned else ''}{len(failed)} failed. "
             f"Ranked by `{metric}` ({direction} is better).", ""]
    lines += [*(f"{note}" for note in notes), *([""] if notes else [])]
    lines += ["| rank | " + " | ".join([*fields, metric, "trial"]) + " |",
              "|" + "---|" * (len(fields) + 3)]
    for rank, outcome in enumerate(best_first, 1):
        cells = [str(rank), *(format_value(outcome.values.get(field)) for field in fields),
                 format_value(metric_of(outcome, metric)),
                 f"`{outcome.name}`" + ("" if outcome.pruned_at is None else f" (pruned at step {outcome.pruned_at})")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![the metric over the swept values](results.png)", ""]
    if failed:
        lines += ["## Failed trials", ""]
        for outcome in failed:
            lines += [f"### `{outcome.name}`", "", "```text", outcome.error, "```", ""]
    path.write_text("\n".join(lines))


def sorted_values(values) -> list:
    """The distinct values, numbers in numeric order before anything else in text order."""
    return sorted(set(values), key=lambda v: (0, v, "") if is_number(v) else (1, 0, str(v)))


def is_complete_grid(outcomes: Sequence[TrialOutcome], row_field: str, col_field: str) -> bool:
    """Whether every (row, column) pair of the two fields' values occurs exactly once."""
    pairs = [(o.values.get(row_field), o.values.get(col_field)) for o in outcomes]
    rows, cols = {row for row, _ in pairs}, {col for _, col in pairs}
    return None not in rows | cols and len(set(pairs)) == len(pairs) == len(rows) * len(cols)


def metric_grid(outcomes: Sequence[TrialOutcome], row_field: str, col_field: str,
                metric: str) -> tuple[list, list, np.ndarray]:
    """(row values, column values, the metric at [row, column], NaN where a trial failed)."""
    rows = sorted_values(o.values[row_field] for o in outcomes)
    cols = sorted_values(o.values[col_field] for o in outcomes)
    grid = np.full((len(rows), len(cols)), np.nan)
    for outcome in outcomes:
        grid[rows.index(outcome.values[row_field]), cols.index(outcome.values[col_field])] = \
            metric_of(outcome, metric)
    return rows, cols, grid


def draw_heatmap(ax, grid: np.ndarray, rows: Sequence, cols: Sequence, row_label: str, col_label: str,
                 mode: str, vmin: float | None = None, vmax: float | None = None):
    """Draws `grid` (row 0 at the bottom) with each cell's value written in it, failed cells
    grey, and the best cell framed in red; returns the image for a colorbar."""
    finite = grid[np.isfinite(grid)]
    vmin = float(finite.min()) if vmin is None and finite.size else vmin
    vmax = float(finite.max()) if vmax is None and finite.size else vmax
    cmap = matplotlib.colormaps["viridis_r" if mode == "min" else "viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(cols)), [format_value(c) for c in cols], rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [format_value(r) for r in rows])
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    span = (vmax - vmin) if vmin is not None and vmax is not None and vmax > vmin else 1.0
    for (row, col), value in np.ndenumerate(grid):
        if not math.isfinite(value):
            ax.text(col, row, "failed", ha="center", va="center", fontsize=7)
            continue
        shade = (value - vmin) / span if mode == "min" else (vmax - value) / span
        ax.text(col, row, f"{value:.3f}", ha="center", va="center", fontsize=7,
                color="white" if shade > 0.6 else "black")
    if finite.size:
        best = np.nanargmin(grid) if mode == "min" else np.nanargmax(grid)
        row, col = np.unravel_index(best, grid.shape)
        ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    return image


def set_scale(set_axis_scale, values: Sequence[float]) -> None:
    """Log scale for positive values spanning a decade or more (symlog if 0 is among them)."""
    positive = [v for v in values if v > 0]
    if any(v < 0 for v in values) or len(positive) < 2 or max(positive) < 10 * min(positive):
        return
    if len(positive) == len(values):
        set_axis_scale("log")
    else:
        set_axis_scale("symlog", linthresh=min(positive))


def draw_metric_against(ax, label: str, points: Sequence[tuple], metric: str, connect: bool) -> None:
    """Plots (value, metric) points: numbers on a numeric axis, anything else as categories."""
    points = sorted((p for p in points if p[0] is not None and math.isfinite(p[1])),
                    key=lambda p: (0, p[0], "") if is_number(p[0]) else (1, 0, str(p[0])))
    xs, ys = [x for x, _ in points], [y for _, y in points]
    if xs and all(is_number(x) for x in xs):
        set_scale(ax.set_xscale, xs)
    else:
        categories = sorted_values(xs)
        ax.set_xticks(range(len(categories)), [format_value(c) for c in categories], rotation=45, ha="right")
        xs = [categories.index(x) for x in xs]
    ax.plot(xs, ys, "o-" if connect else "o")
    ax.set_xlabel(label)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)


def plot(path: Path, fields: Sequence[str], outcomes: Sequence[TrialOutcome], metric: str, mode: str) -> None:
    """results.png: a heatmap (two fields on a grid), a line (one field) or a panel per field."""
    failed = sum(outcome.error is not None for outcome in outcomes)
    suffix = f" ({failed} failed)" if failed else ""
    if len(fields) == 2 and is_complete_grid(outcomes, *fields):
        rows, cols, grid = metric_grid(outcomes, *fields, metric)
        figure = Figure(figsize=(1.2 + 0.9 * len(cols), 1.2 + 0.6 * len(rows)), layout="constrained")
        ax = figure.subplots()
        image = draw_heatmap(ax, grid, rows, cols, fields[0], fields[1], mode)
        figure.colorbar(image, ax=ax, label=metric)
        ax.set_title(f"{metric}{suffix}")
    else:
        panels = list(fields) or ["trial"]
        figure = Figure(figsize=(4.5 * len(panels), 3.5), layout="constrained")
        for ax, field in zip(np.atleast_1d(figure.subplots(1, len(panels))), panels):
            points = [(outcome.values.get(field, outcome.name if not fields else None), metric_of(outcome, metric))
                      for outcome in outcomes]
            draw_metric_against(ax, field, points, metric, connect=len(fields) == 1)
            ax.set_title(f"{metric} against {field}{suffix}")
    figure.savefig(path, dpi=120)


def write_study_plots(workdir: Path, study, metric: str) -> None:
    """history.png and, when the study's finished trials allow an estimate, importance.png."""
    plot_history(workdir / "history.png", study, metric)
    importances = param_importances(study)
    if importances:
        plot_importances(workdir / "importance.png", importances, metric)


def param_importances(study) -> dict:
    """Optuna's PED-ANOVA importance of each parameter for the study's objective (what reaching
    the top `max(10%, 2 trials)` depends on); empty below two finished trials or when it cannot
    be estimated (e.g. a parameter that never varied)."""
    import optuna
    from optuna.trial import TrialState

    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if finished < 2:
        return {}
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=min(0.5, max(0.1, 2 / finished)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # small studies: "few trials in the top quantile"
        try:
            return optuna.importance.get_param_importances(study, evaluator=evaluator)
        except (RuntimeError, ValueError, ZeroDivisionError):
            return {}


def plot_history(path: Path, study, metric: str) -> None:
    """Each finished or pruned trial's value by trial number, and the best so far."""
    from optuna.trial import TrialState

    figure = Figure(figsize=(6, 3.5), layout="constrained")
    ax = figure.subplots()
    minimize = study.direction.name == "MINIMIZE"
    for state, marker in ((TrialState.COMPLETE, "o"), (TrialState.PRUNED, "x")):
        trials = [t for t in study.get_trials(deepcopy=False, states=(state,)) if t.value is not None]
        ax.plot([t.number for t in trials], [t.value for t in trials], marker, label=state.name.lower())
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    best = np.minimum.accumulate if minimize else np.maximum.accumulate
    if complete:
        ax.step([t.number for t in complete], best([t.value for t in complete]), where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    ax.legend()
    figure.savefig(path, dpi=120)


def plot_importances(path: Path, importances: dict, metric: str) -> None:
    """A horizontal bar per parameter, the most important on top."""
    names = list(importances)[::-1]
    figure = Figure(figsize=(6, 1 + 0.5 * len(names)), layout="constrained")
    ax = figure.subplots()
    ax.barh(names, [importances[name] for name in names])
    ax.set_xlabel(f"importance for {metric}")
    ax.set_title("parameter importance")
    figure.savefig(path, dpi=120)
