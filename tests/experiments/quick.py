"""What every experiment's test checks: `python -m experiments run NAME --quick` writes a full report."""

import json
from pathlib import Path

from experiments import gallery
from experiments.__main__ import main
from experiments.gallery_run import saved_outcome
from experiments.metadata import STATUSES, Outcome

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_quick(name: str, tmp_path: Path) -> tuple[dict, Outcome]:
    """Runs the experiment's quick version through the gallery's command line into `tmp_path`, checks the
    report (a verdict of a known status for every claim, the markdown, the CSV with its seed column, the
    plots as PNG) and returns the report's fields and seed 0's outcome."""
    out, work = tmp_path / "out", tmp_path / "work"
    main(["run", name, "--quick", "--out", str(out), "--work", str(work)])
    report = json.loads((out / f"{name}.json").read_text())
    experiment = gallery.load(name).EXPERIMENT
    assert list(report["verdicts"]) == [claim.key for claim in experiment.claims]
    assert all(v["status"] in STATUSES and v["reason"] for v in report["verdicts"].values())
    markdown = (out / f"{name}.md").read_text()
    assert markdown.startswith(f"# {experiment.title}\n") and f"run {name} --quick" in markdown
    assert (out / f"{name}.csv").read_text().startswith("seed,")
    for plot in report["plots"]:
        assert (out / plot).read_bytes().startswith(PNG_MAGIC)
    return report, saved_outcome(work / name / "seed_0")
