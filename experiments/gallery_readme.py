"""experiments/README.md, generated from every experiment's metadata and its latest full-run report
(experiments/results/NAME.json); `python -m experiments readme` rewrites it and a test fails when it
is out of date."""

import json
from pathlib import Path

from experiments import gallery

README = Path(gallery.__file__).parent / "README.md"

INTRO = """\
# Experiments

One module per paper table or figure. Each declares the paper, the table it reproduces, the claims it
checks and the configuration that would run it at full scale (`EXPERIMENT` in the module; the contract
is experiments/metadata.py), and writes its table (markdown + CSV) and plots into experiments/results/.

    python -m experiments list                         # every experiment, its claims and last verdicts
    python -m experiments run NAME [--quick] [--seeds N] [--out DIR]
    python -m experiments run --all                    # in sequence; resumes after a kill
    python -m experiments readme                       # regenerate this page

`--quick` is the reduced version the test suite runs. This page is generated from the modules'
metadata and the latest full runs; do not edit it by hand.
"""


def latest_report(name: str, results: Path) -> dict | None:
    """The full (not --quick) report of `name` in `results`, or None before its first full run."""
    path = results / f"{name}.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    return None if report["quick"] else report


def verdict_cell(report: dict | None, key: str) -> str:
    return "no gallery run yet" if report is None else report["verdicts"][key]["status"]


def contents(modules, results: Path) -> str:
    lines = ["| experiment | paper | reproduces | claim | verdict | CPU minutes (2 cores) |", "|---|---|---|---|---|---|"]
    for module in modules:
        experiment, report = module.EXPERIMENT, latest_report(module.EXPERIMENT.name, results)
        for i, claim in enumerate(experiment.claims):
            first = i == 0
            lines.append(
                f"| {f'[{experiment.name}](#{experiment.name})' if first else ''} "
                f"| {experiment.paper if first else ''} | {experiment.reproduces if first else ''} | {claim.text} "
                f"| {verdict_cell(report, claim.key)} | {f'{experiment.cpu_minutes:g}' if first else ''} |")
    return "\n".join(lines)


def section(module, results: Path) -> str:
    experiment, report = module.EXPERIMENT, latest_report(module.EXPERIMENT.name, results)
    parts = [f'<a id="{experiment.name}"></a>\n## {experiment.name} — {experiment.title}',
             f"{experiment.paper}, [arXiv:{experiment.arxiv}](https://arxiv.org/abs/{experiment.arxiv}), "
             f"{experiment.reproduces}. Full scale: {experiment.full_scale}. "
             f"`python -m experiments run {experiment.name}` takes about {experiment.cpu_minutes:g} min on 2 CPU cores."]
    if report is None:
        earlier = results / f"{experiment.name}.md"
        return "\n\n".join(parts + [f"No gallery run yet; the last report written by hand: [results/{earlier.name}]"
                                      f"(results/{earlier.name})." if earlier.exists() else "Not run yet."])
    parts += [f"![{plot}](results/{plot})" for plot in report["plots"]]
    rows = ["| headline | here | paper |", "|---|---|---|"]
    for name, value in report["headline"].items():
        paper = experiment.paper_numbers.get(name, "—")
        rows.append(f"| {name} | {value['mean']:.4g} ± {value['std']:.2g} | {paper} |")
    parts.append("\n".join(rows))
    parts.append("\n".join(f"- {claim.text}: **{report['verdicts'][claim.key]['status']}** — "
                           f"{report['verdicts'][claim.key]['reason']}" for claim in experiment.claims))
    parts.append(f"Last run: {report['header']}; [full report](results/{experiment.name}.md).")
    return "\n\n".join(parts)


def render(results: Path = gallery.RESULTS) -> str:
    """The README's text from the metadata of every experiment and its report in `results`."""
    modules = gallery.all_experiments()
    return "\n\n".join([INTRO.rstrip(), "## Contents", contents(modules, results),
                        *[section(m, results) for m in modules]]) + "\n"
