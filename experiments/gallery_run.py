"""Running one experiment of the gallery: each seed, the estimates over seeds, the verdicts, the report.

For seeds 0 … N−1 the experiment's `run(work/NAME/seed_K, quick=…, seed=K)` gives an Outcome; each
headline number x becomes an Estimate over the seeds, mean x̄ = Σ x_K / N and sample standard
deviation √(Σ (x_K − x̄)² / (N − 1)) (0 for one seed); `judge` turns the estimates into a verdict per
claim. Written into `out`:

    NAME.md     a header (the command, the machine and its load, jax's version, the date), the
                headline numbers beside the paper's, the verdict per claim, then seed 0's markdown
    NAME.csv    every seed's rows, with a `seed` column
    NAME.json   the same figures for the gallery's README (experiments/gallery_readme.py)
    NAME*.png   seed 0's plots

With `resume`, a seed whose outcome was saved (work/NAME/seed_K/outcome.json) is not run again and an
experiment whose NAME.json holds the same seeds and mode is skipped whole: `run --all` continues
after a kill where it stopped.
"""

import csv
import dataclasses
import datetime
import io
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path

import jax

from experiments.metadata import Estimate, Outcome, Verdict


def estimate(values: list[float]) -> Estimate:
    """Mean and sample standard deviation (0 for a single value) of one headline number over seeds."""
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return Estimate(mean=mean, std=math.sqrt(variance), values=tuple(values))


def estimates(outcomes: list[Outcome]) -> dict[str, Estimate]:
    """Each headline number over the seeds' outcomes; ValueError when seeds report different names."""
    names = list(outcomes[0].headline)
    for seed, outcome in enumerate(outcomes):
        if list(outcome.headline) != names:
            raise ValueError(f"seed {seed} reports headline numbers {list(outcome.headline)}, seed 0 {names}")
    return {name: estimate([float(o.headline[name]) for o in outcomes]) for name in names}


def checked_verdicts(module, headline: dict[str, Estimate]) -> dict[str, Verdict]:
    """`judge`'s verdicts, one per claim of the experiment; ValueError naming a missing or unknown key."""
    verdicts = module.judge(headline)
    claims = [claim.key for claim in module.EXPERIMENT.claims]
    if sorted(verdicts) != sorted(claims):
        raise ValueError(f"{module.EXPERIMENT.name}.judge answered claims {sorted(verdicts)}, expected {sorted(claims)}")
    return {key: verdicts[key] for key in claims}


def saved_outcome(seed_dir: Path) -> Outcome | None:
    """The outcome `run_seed` saved in `seed_dir`, or None when that seed has not finished."""
    saved = seed_dir / "outcome.json"
    if not saved.exists():
        return None
    fields = json.loads(saved.read_text())
    return Outcome(fields["headline"], fields["rows"], fields["markdown"],
                   tuple(seed_dir / name for name in fields["plots"]))


def run_seed(module, seed_dir: Path, *, quick: bool, seed: int, resume: bool) -> Outcome:
    """One seed's outcome, read back when `resume` finds it saved, else run and saved."""
    if resume and (outcome := saved_outcome(seed_dir)) is not None:
        return outcome
    if seed_dir.exists():
        shutil.rmtree(seed_dir)
    seed_dir.mkdir(parents=True)
    outcome = module.run(seed_dir, quick=quick, seed=seed)
    fields = {"headline": outcome.headline, "rows": outcome.rows, "markdown": outcome.markdown,
              "plots": [str(Path(p).relative_to(seed_dir)) for p in outcome.plots]}
    temporary = seed_dir / "outcome.tmp"
    temporary.write_text(json.dumps(fields, default=float))
    temporary.replace(seed_dir / "outcome.json")
    return outcome


def command(name: str, *, quick: bool, seeds: int) -> str:
    return f"python -m experiments run {name}" + (" --quick" if quick else "") + f" --seeds {seeds}"


def header(name: str, *, quick: bool, seeds: int, seconds: float) -> str:
    """Command, machine, load, jax version and date of a report."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    machine = (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
               f"jax {jax.__version__} on {jax.default_backend()}")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"`{command(name, quick=quick, seeds=seeds)}` · {machine} · load average {load} after the run · "
            f"{seconds / 60:.1f} min · {date}")


def headline_table(module, headline: dict[str, Estimate]) -> str:
    paper = module.EXPERIMENT.paper_numbers
    lines = ["| headline | here (mean ± std over seeds) | paper |", "|---|---|---|"]
    for name, value in headline.items():
        lines.append(f"| {name} | {value.mean:.4g} ± {value.std:.2g} | {paper.get(name, '—')} |")
    return "\n".join(lines)


def csv_text(outcomes: list[Outcome]) -> str:
    rows = [{"seed": seed, **row} for seed, outcome in enumerate(outcomes) for row in outcome.rows]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def copy_plots(name: str, plots, out: Path) -> list[str]:
    """Seed 0's plots into `out`, named NAME.png (one plot) or NAME_<stem>.png; the names written."""
    names = []
    for plot in plots:
        target = f"{name}.png" if len(plots) == 1 else f"{name}_{Path(plot).stem}.png"
        shutil.copyfile(plot, out / target)
        names.append(target)
    return names


def run_experiment(module, *, out: Path, work: Path, quick: bool = False, seeds: int = 1,
                   resume: bool = False) -> dict:
    """Runs (or, with `resume`, finishes) one experiment over `seeds` seeds and writes its report into
    `out`; returns the report's JSON fields."""
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    name = module.EXPERIMENT.name
    report_path = out / f"{name}.json"
    if resume and report_path.exists():
        previous = json.loads(report_path.read_text())
        if previous["quick"] == quick and previous["seeds"] == seeds:
            return previous
    start = time.perf_counter()
    outcomes = [run_seed(module, work / name / f"seed_{seed}", quick=quick, seed=seed, resume=resume)
                for seed in range(seeds)]
    headline = estimates(outcomes)
    verdicts = checked_verdicts(module, headline)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    plots = copy_plots(name, outcomes[0].plots, out)
    run_header = header(name, quick=quick, seeds=seeds, seconds=seconds)
    text = "\n\n".join([
        f"# {module.EXPERIMENT.title}", run_header,
        headline_table(module, headline),
        "\n".join(f"- **{v.status}** — {claim.text}: {v.reason}"
                  for claim, v in zip(module.EXPERIMENT.claims, verdicts.values())),
        *[f"![{plot}]({plot})" for plot in plots], outcomes[0].markdown.strip()]) + "\n"
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.csv").write_text(csv_text(outcomes))
    report = {"name": name, "quick": quick, "seeds": seeds, "minutes": seconds / 60,
              "header": run_header, "plots": plots,
              "headline": {k: dataclasses.asdict(v) for k, v in headline.items()},
              "verdicts": {k: dataclasses.asdict(v) for k, v in verdicts.items()}}
    report_path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    return report
